"""``python -m bench`` (``nox -s bench``): run the benchmarks and write the report.

    python -m bench                      # everything (about 10 minutes on 2 cores)
    python -m bench --quick              # tiny sizes: shows it runs (used by the tests)
    python -m bench --only overhead      # one part (repeatable: --only throughput --only memory)
    python -m bench --out DIR            # write the report elsewhere (default bench/results)

Every process a part starts (stand-in, image server, workers, PostgreSQL, Redis) is stopped at
the end, also on errors, Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import RESULTS_DIR, environment, install_signal_handlers, log, machine_info

PARTS = ("overhead", "throughput", "memory")


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="waste-pipeline benchmarks (they report, never assert)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument(
        "--only",
        action="append",
        choices=PARTS,
        help="run only this part (repeatable); default: all",
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS_DIR, help="report folder (default %(default)s)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected parts, write the report, return the exit status."""
    args = build_parser().parse_args(argv)
    parts = args.only or list(PARTS)
    command = "python -m bench " + shlex.join(list(argv if argv is not None else sys.argv[1:]))
    install_signal_handlers()
    results: dict[str, Any] = {
        "machine": machine_info(command.strip()),
        "quick": args.quick,
        "parts": parts,
        "notes": [],
    }
    started = time.monotonic()
    try:
        with environment() as (supervisor, stack):
            if "overhead" in parts:
                from bench.overhead import OverheadConfig
                from bench.overhead import run as run_overhead

                cfg = OverheadConfig.quick() if args.quick else OverheadConfig()
                results["overhead"] = run_overhead(cfg, supervisor, stack)
            if "throughput" in parts:
                from bench.throughput import ThroughputConfig
                from bench.throughput import run as run_throughput

                tcfg = ThroughputConfig.quick() if args.quick else ThroughputConfig()
                results["throughput"] = run_throughput(tcfg, supervisor, stack)
            if "memory" in parts:
                from bench.memory import MemoryConfig
                from bench.memory import run as run_memory

                mcfg = MemoryConfig.quick() if args.quick else MemoryConfig()
                results["memory"] = run_memory(mcfg, supervisor, stack)
    except KeyboardInterrupt:
        log("interrupted: every process started was stopped; no report written")
        return 130
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    from bench.report import write_report

    for path in write_report(results, args.out):
        log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
