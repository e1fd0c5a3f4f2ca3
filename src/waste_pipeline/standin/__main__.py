"""``python -m waste_pipeline.standin``: run the OpenAI stand-in (a test double) until signalled.

Prints one line, ``stand-in listening on http://HOST:PORT/v1 (test double: answers are NOT
from a model)``, then serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence

from waste_pipeline.standin.server import FAULT_KINDS, StandInConfig, serve


def _faults(value: str) -> tuple[str, ...]:
    kinds = tuple(k.strip().lower() for k in value.split(",") if k.strip())
    unknown = [k for k in kinds if k not in FAULT_KINDS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown fault kind(s) {', '.join(unknown)}; known: {','.join(FAULT_KINDS)}"
        )
    return kinds


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (one flag per :class:`StandInConfig` knob)."""
    d = StandInConfig()
    p = argparse.ArgumentParser(
        prog="python -m waste_pipeline.standin",
        description="OpenAI stand-in: a local test double. Its answers are NOT from a model.",
    )
    p.add_argument("--host", default=d.host, help="address to bind (default %(default)s)")
    p.add_argument("--port", type=int, default=d.port, help="port; 0 picks a free one")
    p.add_argument("--latency", type=float, default=d.latency, help="seconds per model call")
    p.add_argument(
        "--fault-rate", type=float, default=d.fault_rate, help="chance of a random fault (0..1)"
    )
    p.add_argument(
        "--faults",
        type=_faults,
        default=d.faults,
        help=f"comma-separated fault kinds for random faults (default {','.join(FAULT_KINDS)})",
    )
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the fault RNG")
    p.add_argument(
        "--timeout-seconds",
        type=float,
        default=d.timeout_seconds,
        help="how long the timeout fault stalls",
    )
    p.add_argument(
        "--retry-after", type=float, default=d.retry_after, help="retry-after of a 429, seconds"
    )
    p.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    return p


async def _run(config: StandInConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):  # not on Windows
            loop.add_signal_handler(sig, stop.set)

    def ready(url: str) -> None:
        line = f"stand-in listening on {url} (test double: answers are NOT from a model)"
        print(line, flush=True)

    await serve(config, on_ready=ready, stop=stop)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the stand-in until SIGTERM/SIGINT, return the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    try:
        config = StandInConfig(
            host=args.host,
            port=args.port,
            latency=args.latency,
            fault_rate=args.fault_rate,
            faults=args.faults,
            seed=args.seed,
            timeout_seconds=args.timeout_seconds,
            retry_after=args.retry_after,
        )
    except ValueError as exc:
        print(f"stand-in: {exc}", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
