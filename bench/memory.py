"""Memory: peak RSS of a gevent ``-c 100`` worker against a prefork ``-c 8`` worker.

Both workers get the same load (the same number of ``scan.run`` tasks, as a backlog, after a
warm-up that opens every client) from the same stand-in (latency L = 0.2 s). A thread samples
the RSS of the worker's whole process tree (main process + pool children, summed) every 100 ms
and keeps the peak. Summed RSS counts pages that prefork children share with their parent
once per process; the PSS after the load (shared pages split between processes) is reported
next to it so that nobody has to take the RSS sum on faith.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench import Stack, StandIn, Supervisor, log
from bench.throughput import Rows, celery_stack, pool_run

__all__ = ["MemoryConfig", "run"]


@dataclass(frozen=True)
class MemoryConfig:
    """Sizes of the memory part."""

    latency: float = 0.2
    scans: int = 400
    gevent_concurrency: int = 100
    prefork_concurrency: int = 8
    timeout: float = 300.0

    @classmethod
    def quick(cls) -> MemoryConfig:
        """Tiny sizes: it runs, the numbers mean little."""
        return cls(latency=0.05, scans=8, gevent_concurrency=10, prefork_concurrency=2)


def run(cfg: MemoryConfig, supervisor: Supervisor, stack: Stack) -> dict[str, Any]:
    """Both workers in turn under the same load; the peak RSS ratio gevent / prefork."""
    standin = StandIn.start(supervisor, latency=cfg.latency)
    rows_db = Rows(stack.postgres_url)
    rows: list[dict[str, Any]] = []
    try:
        with celery_stack(stack, standin) as cstack:
            for pool, concurrency in (
                ("gevent", cfg.gevent_concurrency),
                ("prefork", cfg.prefork_concurrency),
            ):
                log(f"memory: -P {pool} -c {concurrency}, {cfg.scans} scans")
                row = pool_run(
                    cstack,
                    rows_db,
                    stack,
                    standin,
                    pool,
                    concurrency,
                    cfg.scans,
                    timeout=cfg.timeout,
                )
                log(f"  peak RSS {row['peak_rss_mb']:.0f} MB over {row['processes']} processes")
                rows.append(row)
    finally:
        rows_db.close()
        standin.stop(supervisor)
    gevent, prefork = rows
    ratio = gevent["peak_rss_mb"] / prefork["peak_rss_mb"] if prefork["peak_rss_mb"] else None
    pss = prefork["pss_after_mb"]
    pss_ratio = gevent["pss_after_mb"] / pss if pss else None
    return {
        "latency": cfg.latency,
        "rows": rows,
        "ratio": ratio,
        "pss_ratio": pss_ratio,
        "met": ratio is not None and ratio <= 0.25,
    }
