"""Render benchmark results: a Markdown report and a PNG chart (throughput against concurrency).

``write_report(results, out_dir)`` writes ``latest.json`` (raw figures), ``latest.md`` and, when
the throughput part ran, ``throughput.png``. ``write_load_report`` does the same for the Locust
scenario (``load.json``, ``load.md``). Targets are reported as met or missed; nothing asserts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "fmt",
    "machine_section",
    "plot_throughput",
    "render_load_markdown",
    "render_markdown",
    "table",
    "write_load_report",
    "write_report",
]


def fmt(value: Any, digits: int = 2) -> str:
    """A number for a table: rounded, ``-`` for missing or NaN."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return "-"
        return f"{value:.{digits}f}"
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        lines.append("| " + " | ".join(fmt(v) for v in row) + " |")
    return "\n".join(lines)


def _verdict(met: bool | None) -> str:
    if met is None:
        return "n/a"
    return "**met**" if met else "**missed**"


def machine_section(machine: dict[str, Any]) -> str:
    """The machine and software the figures come from."""
    versions = ", ".join(f"{k} {v}" for k, v in machine.get("versions", {}).items())
    limit = machine.get("cgroup_cpu_limit")
    rows = [
        ("Date", machine.get("date")),
        ("Command", f"`{machine.get('command')}`"),
        ("CPU", machine.get("cpu_model")),
        (
            "Cores",
            f"{machine.get('logical_cpus')} logical ({machine.get('physical_cores')} physical), "
            f"{machine.get('affinity_cpus')} usable"
            + (f", cgroup limit {limit:g} CPUs" if limit else ""),
        ),
        ("Memory", f"{machine.get('memory_gb')} GB"),
        ("OS", machine.get("os")),
        ("Python", f"{machine.get('python_impl')} {machine.get('python')}"),
        ("Libraries", versions),
    ]
    return table(["", ""], rows)


# --- targets ---------------------------------------------------------------------------------


def _targets(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    overhead = results.get("overhead")
    if overhead:
        ratio = overhead["ratios"].get("sync/bare")
        rows.append(
            ("Sync twin CPU/scan <= 1.3 x bare SDK", f"{fmt(ratio)} x", _verdict(ratio <= 1.3))
        )
    throughput = results.get("throughput")
    if throughput:
        t = throughput.get("targets", {})
        if t.get("speedup") is not None:
            rows.append(
                (
                    "gevent -c 100 >= 15 x prefork -c 2",
                    f"{fmt(t['speedup'], 1)} x",
                    _verdict(t.get("speedup_met")),
                )
            )
        if t.get("fraction") is not None:
            rows.append(
                (
                    "gevent -c 100 >= 60 % of min(bound, CPU limit)",
                    f"{fmt(100 * t['fraction'], 0)} % of {fmt(t['reference'], 1)} scans/s "
                    f"({t['reference_kind']})",
                    _verdict(t.get("fraction_met")),
                )
            )
    memory = results.get("memory")
    if memory and memory.get("ratio") is not None:
        rows.append(
            (
                "gevent -c 100 RSS <= 1/4 of prefork -c 8",
                f"{fmt(memory['ratio'], 3)} (1/{fmt(1 / memory['ratio'], 1)})",
                _verdict(memory.get("met")),
            )
        )
    return rows


# --- sections --------------------------------------------------------------------------------


def _overhead_section(overhead: dict[str, Any]) -> list[str]:
    out = ["## CPU overhead per scan", ""]
    out.append(
        "CPU (user + system, all threads) of the measuring process per scan, median of "
        f"{overhead['config']['repeats']} runs of {overhead['config']['scans']} scans "
        f"({overhead['config']['concurrent_scans']} for the concurrent rows); the stand-in "
        "runs in its own process with latency 0; image work excluded (a prepared image)."
    )
    out.append("")
    out.append(
        table(
            [
                "variant",
                "store",
                "concurrency",
                "CPU ms/scan",
                "user ms",
                "sys ms",
                "runs (ms)",
                "scans/s",
                "errors",
                "stand-in CPU ms/call",
            ],
            (
                (
                    r["label"],
                    r["store"],
                    r["concurrency"],
                    r["cpu_ms_per_scan"],
                    r["user_ms_per_scan"],
                    r["sys_ms_per_scan"],
                    ", ".join(fmt(x) for x in r["cpu_ms_runs"]),
                    r["scans_per_s"],
                    r["errors"],
                    r["standin_cpu_ms_per_call"],
                )
                for r in overhead["rows"]
            ),
        )
    )
    out += ["", table(["ratio", "value"], overhead["ratios"].items()), ""]
    images = overhead.get("images")
    if images:
        out += ["### Image work (measured separately)", ""]
        out.append(
            table(
                [
                    "photo",
                    "bytes",
                    "download CPU ms (sync)",
                    "download CPU ms (async)",
                    "prepare_image CPU ms",
                    "output",
                ],
                (
                    (
                        name,
                        r["bytes"],
                        r["download_cpu_ms"],
                        r["download_async_cpu_ms"],
                        r["prepare_cpu_ms"],
                        r["output"],
                    )
                    for name, r in images["sizes"].items()
                ),
            )
        )
        stall = images["gevent_stall"]
        out += [
            "",
            f"gevent hub stall: a greenlet ticking every 5 ms while {stall['images']} 12 MP "
            "photos are prepared concurrently in the same gevent-patched process:",
            "",
            table(
                ["how", "max tick gap ms", "p99 gap ms", "ticks", "elapsed s"],
                (
                    (name, r["max_gap_ms"], r["p99_gap_ms"], r["ticks"], r["elapsed_s"])
                    for name, r in stall.items()
                    if isinstance(r, dict)
                ),
            ),
            "",
        ]
    return out


def _throughput_section(throughput: dict[str, Any]) -> list[str]:
    latency = throughput["latency"]
    out = ["## Worker throughput", ""]
    out.append(
        f"Real `celery -A tasks worker` processes on embedded Redis and PostgreSQL; stand-in "
        f"latency L = {latency:g} s per model call (its own process); `scan.run` tasks submitted "
        "as a backlog. Bound = concurrency / (2 L). Latency = the task's run time in the worker "
        "(Celery's `succeeded in`: start of the scan to its stored result). CPU per "
        "scan = worker process tree (psutil, before/after); system = every process of the "
        "benchmark (worker, stand-in, Redis, PostgreSQL, submitter). CPU limit = the scans/s at "
        "which the worker would use one full core."
    )
    out.append("")
    out.append(
        table(
            [
                "pool",
                "-c",
                "scans",
                "failed",
                "scans/s",
                "bound",
                "of bound",
                "p50 ms",
                "p95 ms",
                "worker CPU ms/scan",
                "CPU limit scans/s",
                "system CPU ms/scan",
                "peak RSS MB",
            ],
            (
                (
                    r.get("label", r["pool"]),
                    r["concurrency"],
                    r["scans"],
                    r["failed"],
                    r["scans_per_s"],
                    r["bound"],
                    f"{fmt(100 * r['ratio_to_bound'], 0)} %",
                    r["p50_ms"],
                    r["p95_ms"],
                    r["worker_cpu_ms_per_scan"],
                    r["cpu_limit_scans_per_s"],
                    r["system_cpu_ms_per_scan"],
                    r["peak_rss_mb"],
                )
                for r in throughput["rows"]
            ),
        )
    )
    out.append("")
    breakdown = [
        (
            r.get("label", r["pool"]),
            r["concurrency"],
            *(r["cpu_breakdown_ms"].get(k) for k in _BREAKDOWN),
        )
        for r in throughput["rows"]
    ]
    out += [
        "CPU ms per scan by process (where the 2 cores go):",
        "",
        table(["pool", "-c", *_BREAKDOWN], breakdown),
        "",
    ]
    return out


_BREAKDOWN = ("worker", "stand-in", "redis", "postgres", "submitter")


def _memory_section(memory: dict[str, Any]) -> list[str]:
    out = ["## Memory", ""]
    out.append(
        "Peak RSS of the worker process tree (main process + pool children, summed; psutil "
        "every 100 ms) under the same load."
    )
    out.append("")
    out.append(
        table(
            [
                "pool",
                "-c",
                "scans",
                "scans/s",
                "processes",
                "peak RSS MB",
                "RSS after warm-up MB",
                "PSS after load MB",
            ],
            (
                (
                    r["pool"],
                    r["concurrency"],
                    r["scans"],
                    r["scans_per_s"],
                    r["processes"],
                    r["peak_rss_mb"],
                    r["idle_rss_mb"],
                    r["pss_after_mb"],
                )
                for r in memory["rows"]
            ),
        )
    )
    out += [
        "",
        f"gevent / prefork: peak RSS {fmt(memory['ratio'], 3)}, "
        f"PSS {fmt(memory.get('pss_ratio'), 3)}.",
        "",
    ]
    return out


def render_markdown(results: dict[str, Any]) -> str:
    """The whole report as Markdown."""
    out = ["# waste-pipeline benchmarks", ""]
    if results.get("quick"):
        out += ["> **--quick run**: tiny sizes; the figures only show that the benchmark runs.", ""]
    out += ["## Machine", "", machine_section(results["machine"]), ""]
    targets = _targets(results)
    if targets:
        out += ["## Targets", "", table(["target", "measured", "verdict"], targets), ""]
    if results.get("overhead"):
        out += _overhead_section(results["overhead"])
    if results.get("throughput"):
        out += _throughput_section(results["throughput"])
        out += ["![throughput against concurrency](throughput.png)", ""]
    if results.get("memory"):
        out += _memory_section(results["memory"])
    for note in results.get("notes", []):
        out.append(f"* {note}")
    return "\n".join(out).rstrip() + "\n"


# --- the chart -------------------------------------------------------------------------------


def plot_throughput(results: dict[str, Any], path: Path) -> None:
    """Scans/s against concurrency, one series per pool, with the bound c/(2L)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(results["throughput"]["rows"])
    seen = {(r.get("label", r["pool"]), r["concurrency"]) for r in rows}
    rows += [
        r
        for r in (results.get("memory") or {}).get("rows", [])
        if r.get("scans_per_s") and (r.get("label", r["pool"]), r["concurrency"]) not in seen
    ]
    latency = results["throughput"]["latency"]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    pools: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        pools.setdefault(r.get("label", r["pool"]), []).append((r["concurrency"], r["scans_per_s"]))
    markers = {"gevent": "o", "threads": "s", "prefork": "^"}
    for pool, points in sorted(pools.items()):
        pts = sorted(set(points))
        ax.plot(
            [p[0] for p in pts],
            [p[1] for p in pts],
            marker=markers.get(pool, "x"),
            linestyle="-" if len(pts) > 1 else "none",
            label=f"-P {pool}",
        )
    cs = sorted({r["concurrency"] for r in rows})
    if cs:
        lo, hi = min(cs), max(cs)
        xs = [lo, hi] if lo != hi else [lo, lo * 2]
        ax.plot(xs, [x / (2 * latency) for x in xs], "k--", lw=1, label="bound c / (2L)")
    reference = next(
        (
            r
            for r in results["throughput"]["rows"]
            if r.get("label", r["pool"]) == "gevent" and r["concurrency"] == 100
        ),
        None,
    )
    if reference and reference.get("system_limit_scans_per_s"):
        ax.axhline(
            reference["system_limit_scans_per_s"],
            color="grey",
            ls=":",
            lw=1,
            label=f"all cores busy at gevent -c 100's CPU/scan "
            f"(≈ {reference['system_limit_scans_per_s']:.0f}/s)",
        )
        ax.axhline(
            reference["cpu_limit_scans_per_s"],
            color="tab:blue",
            ls=":",
            lw=1,
            label="gevent -c 100 worker at one full core "
            f"(≈ {reference['cpu_limit_scans_per_s']:.0f}/s)",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("worker concurrency (-c)")
    ax.set_ylabel("scans per second")
    ax.set_title(f"Celery worker throughput, stand-in latency L = {latency:g} s")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write ``latest.json``, ``latest.md`` and (with throughput) ``throughput.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "latest.json", out_dir / "latest.md"]
    (out_dir / "latest.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    (out_dir / "latest.md").write_text(render_markdown(results))
    if results.get("throughput"):
        plot_throughput(results, out_dir / "throughput.png")
        written.append(out_dir / "throughput.png")
    return written


# --- the load scenario -----------------------------------------------------------------------


def render_load_markdown(results: dict[str, Any]) -> str:
    """The Locust scenario's report."""
    cfg = results["config"]
    out = ["# waste-pipeline load scenario (Locust)", ""]
    if results.get("quick"):
        out += ["> **--quick run**: tiny sizes; the figures only show that the scenario runs.", ""]
    out += ["## Machine", "", machine_section(results["machine"]), ""]
    out.append(
        f"{cfg['users']} users ramping up at {cfg['spawn_rate']:g}/s, {cfg['duration']:g} s, "
        f"against `{cfg['api']}` in queued mode; each user submits a scan "
        "(`POST /v1/scans`, mode=queued), polls `GET /v1/scans/{id}` after "
        f"{cfg['first_poll']:g} s and then every {cfg['poll_interval']:g} s until done or "
        f"failed, then thinks {cfg['wait_min']:g}-{cfg['wait_max']:g} s before its next scan. "
        f"Stand-in latency L = {cfg['latency']:g} s per model call. End-to-end = submit to the "
        "poll that saw the final status; worker task = the `scan.run` task's run time in the "
        "worker (Celery's `succeeded in`)."
    )
    out.append("")
    out.append(
        table(
            [
                "worker",
                "scans",
                "done",
                "failed scans",
                "unfinished",
                "scan failure rate",
                "HTTP requests",
                "HTTP failures",
                "requests/s",
                "scans/s",
                "p50 e2e ms",
                "p95 e2e ms",
                "max e2e ms",
                "worker task p50 / p95 ms",
            ],
            (
                (
                    r["worker"],
                    r["scans"],
                    r["done"],
                    r["failed"],
                    r["unfinished"],
                    f"{fmt(100 * r['failure_rate'], 1)} %",
                    r["requests"],
                    r["http_failures"],
                    r["requests_per_s"],
                    r["scans_per_s"],
                    r["p50_ms"],
                    r["p95_ms"],
                    r["max_ms"],
                    f"{fmt(r.get('task_p50_ms'), 0)} / {fmt(r.get('task_p95_ms'), 0)}",
                )
                for r in results["rows"]
            ),
        )
    )
    out.append("")
    procs = ("worker", "api", "locust", "stand-in", "postgres", "redis")
    out += [
        "CPU seconds used by each process during the run (2 cores = "
        f"{fmt(2 * cfg['duration'], 0)} CPU-seconds available in {cfg['duration']:g} s):",
        "",
        table(
            ["run", *procs, "total"],
            (
                (
                    r["worker"],
                    *(r["cpu_seconds"].get(k) for k in procs),
                    sum(r["cpu_seconds"].values()),
                )
                for r in results["rows"]
            ),
        ),
        "",
    ]
    t = results.get("targets", {})
    if t:
        out += [
            "## Targets",
            "",
            table(
                ["target", "measured", "verdict"],
                [
                    (
                        "0 % failures with the twin",
                        f"{fmt(100 * t['twin_failure_rate'], 2)} %",
                        _verdict(t["failures_met"]),
                    ),
                    (
                        f"p95 end-to-end < 2L + 0.5 s = {fmt(t['p95_limit_ms'], 0)} ms",
                        f"{fmt(t['twin_p95_ms'], 0)} ms",
                        _verdict(t["p95_met"]),
                    ),
                ],
            ),
            "",
        ]
    for worker, errors in results.get("errors", {}).items():
        if errors:
            out += [f"Most common errors ({worker}):", ""]
            out += [f"* {count} x `{text}`" for text, count in errors]
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def write_load_report(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write ``load.json`` and ``load.md``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "load.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    (out_dir / "load.md").write_text(render_load_markdown(results))
    return [out_dir / "load.json", out_dir / "load.md"]
