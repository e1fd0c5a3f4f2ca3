"""Throughput of real Celery workers, per pool, on real Redis and PostgreSQL.

For each pool (``-P gevent -c 100``, ``-P gevent -c 500``, ``-P threads -c 100``,
``-P prefork -c 2`` by default) a fresh ``celery -A tasks worker`` process is started against
the embedded Redis and PostgreSQL and an OpenAI stand-in with latency L = 0.2 s per model call
(its own process). After a warm-up (one scan per slot, so every client is open), ``scans``
``scan.run`` tasks are submitted as a backlog through ``tasks.submit_scan`` (which writes the
``pending`` row, then publishes) and the benchmark waits until every row is ``done`` or
``failed``. From the rows:

* scans/s = done scans / (end of the last task - start of the first), from the worker's INFO
  log, where Celery records each task's end and run time (``succeeded in Xs``; the task ids
  are the scan ids);
* p50/p95 scan latency = that run time: the whole ``scan.run`` task body, from the start of
  the scan to its stored result;
* ratio to the bound ``concurrency / (2 L)`` (two model calls per scan);
* CPU per scan: the worker's process tree (psutil, before/after), and the same for the
  stand-in, Redis, PostgreSQL and this process (the submitter), to show where the cores go;
* CPU limit = 1000 / worker CPU ms per scan: the scans/s at which the worker would use a whole
  core (a gevent or threads worker is one process: one core at most, because of the GIL).

Every worker is stopped (its process group killed) after its run, also on errors and Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bench import (
    RssSampler,
    Stack,
    StandIn,
    Supervisor,
    log,
    percentile,
    tree_cpu_seconds,
    tree_processes,
    tree_pss_bytes,
    tree_rss_bytes,
)

__all__ = [
    "PoolRun",
    "Rows",
    "ThroughputConfig",
    "celery_stack",
    "pool_run",
    "run",
    "scan_image",
    "submit",
    "targets",
    "task_times",
]

USER_TEXT = "라벨은 뗐어요"


@dataclass(frozen=True)
class PoolRun:
    """One worker configuration and how many scans to push through it.

    ``args`` are extra ``celery worker`` options (a variant of the shipped configuration,
    reported under its own label).
    """

    pool: str
    concurrency: int
    scans: int
    args: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """``gevent``, or ``gevent --prefetch-multiplier 4`` for a variant."""
        return " ".join((self.pool, *self.args))


@dataclass(frozen=True)
class ThroughputConfig:
    """Sizes of the throughput part."""

    latency: float = 0.2
    runs: tuple[PoolRun, ...] = (
        PoolRun("gevent", 100, 800),
        PoolRun("gevent", 500, 800),
        PoolRun("threads", 100, 800),
        PoolRun("prefork", 2, 60),
        # more points for the chart (throughput against concurrency)
        PoolRun("gevent", 10, 250),
        PoolRun("gevent", 25, 500),
        PoolRun("threads", 10, 250),
        # the shipped prefetch of 1 against a deeper one (see docs/benchmarks.md)
        PoolRun("gevent", 100, 800, ("--prefetch-multiplier", "4")),
        PoolRun("gevent", 10, 250, ("--prefetch-multiplier", "4")),
        PoolRun("gevent", 500, 800, ("--prefetch-multiplier", "4")),
    )
    timeout: float = 300.0

    @classmethod
    def quick(cls) -> ThroughputConfig:
        """Tiny sizes: it runs, the numbers mean little."""
        return cls(
            latency=0.05,
            runs=(
                PoolRun("gevent", 10, 20),
                PoolRun("threads", 4, 8),
                PoolRun("prefork", 2, 4),
                PoolRun("gevent", 10, 10, ("--prefetch-multiplier", "4")),
            ),
            timeout=120.0,
        )


# --- the image -------------------------------------------------------------------------------


def scan_image() -> str:
    """The image every benchmark scan sends: a 320x240 photo-like JPEG as a data URL.

    Small on purpose (a client-side downscaled photo): the worker still decodes, checks and
    re-encodes it, but image cost is measured on its own in the overhead part.
    """
    import base64
    import io

    from PIL import Image

    img = Image.effect_mandelbrot((320, 240), (-2.0, -1.2, 0.8, 1.2), 60).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# --- workers, submitting, waiting (through the test suite's Celery harness) -----------------


def celery_stack(stack: Stack, standin: StandIn) -> contextlib.AbstractContextManager[Any]:
    """The harness's :class:`tests.celery_harness.CeleryStack` on our servers.

    It starts ``celery -A tasks worker`` processes (each in its own process group, killed on
    exit), submits scans through ``tasks.submit_scan`` (``pending`` row, then publish) and uses
    its own Redis database number.
    """
    import tempfile
    from pathlib import Path

    from tests.celery_harness import celery_stack as harness_stack

    return harness_stack(
        redis_url=stack.redis_url,
        postgres_url=stack.postgres_url,
        standin_url=standin.url,
        tmp_path=Path(tempfile.mkdtemp(prefix="wp-bench-celery-")),
    )


class Rows:
    """Reads the benchmark's rows (with the scan's own timings) from PostgreSQL."""

    def __init__(self, dsn: str) -> None:
        import psycopg
        from psycopg.rows import dict_row

        self.conn = psycopg.connect(dsn, autocommit=True, row_factory=dict_row)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    def of(self, prefix: str) -> list[dict[str, Any]]:
        """The rows of the scans whose id starts with ``prefix-``."""
        cur = self.conn.execute(
            """
            SELECT id, status, attempts, error,
                   extract(epoch FROM created_at)::float8 AS created,
                   extract(epoch FROM coalesce(finished_at, updated_at))::float8 AS finished
            FROM scans WHERE id LIKE %s
            """,
            (prefix + "-%",),
        )
        return list(cur.fetchall())

    def wait(self, prefix: str, n: int, worker: Any, timeout: float) -> list[dict[str, Any]]:
        """Wait until ``n`` rows of ``prefix`` are final, the worker dies, or ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.of(prefix)
            final = [r for r in rows if r["status"] in ("done", "failed")]
            if len(final) >= n:
                return rows
            if worker.proc.poll() is not None:
                raise RuntimeError(
                    f"the worker exited ({worker.proc.returncode}):\n{worker.log_text()[-3000:]}"
                )
            if time.monotonic() > deadline:
                log(f"timeout: {len(final)}/{n} scans final after {timeout:g} s")
                return rows
            time.sleep(0.25)


_SUCCEEDED = re.compile(
    r"^\[(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): \w+/[^\]]+\] "
    r"Task scan\.\w+\[(?P<id>[^\]]+)\] succeeded in (?P<seconds>[0-9.eE+-]+)s",
    re.MULTILINE,
)


def task_times(log_text: str, prefix: str) -> dict[str, tuple[float, float]]:
    """``{task id: (end time, seconds)}`` from a worker's INFO log (``succeeded in Xs``).

    Celery logs every finished task with its run time; the benchmark's task ids are the scan
    ids, so this gives each scan's time inside the worker (the whole task body).
    """
    found: dict[str, tuple[float, float]] = {}
    for m in _SUCCEEDED.finditer(log_text):
        if m["id"].startswith(prefix):
            end = datetime.strptime(m["ts"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            found[m["id"]] = (end, float(m["seconds"]))
    return found


def submit(cstack: Any, image: str, prefix: str, n: int, mode: str = "run") -> list[str]:
    """Queue ``n`` scans with ids ``PREFIX-00000``... through the harness; returns the ids."""
    return [
        cstack.submit([image], USER_TEXT, mode=mode, scan_id=f"{prefix}-{i:05d}") for i in range(n)
    ]


# --- one pool --------------------------------------------------------------------------------


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _cpu_snapshot(worker_pid: int, stack: Stack, standin: StandIn) -> dict[str, float]:
    return {
        "worker": tree_cpu_seconds(worker_pid),
        "stand-in": standin.cpu_seconds(),
        "redis": stack.redis_cpu_seconds(),
        "postgres": stack.database_cpu_seconds(),
        "submitter": _self_cpu(),
    }


def pool_run(
    cstack: Any,
    rows_db: Rows,
    stack: Stack,
    standin: StandIn,
    pool: str,
    concurrency: int,
    scans: int,
    *,
    timeout: float,
    warmup: int | None = None,
    mode: str = "run",
    queues: Sequence[str] = ("scan.run",),
    worker_args: Sequence[str] = (),
) -> dict[str, Any]:
    """Start a worker, warm it up, push ``scans`` through it, measure, stop it."""
    image = scan_image()
    worker = cstack.worker("-P", pool, "-c", str(concurrency), "-Q", ",".join(queues), *worker_args)
    run_id = f"b{uuid.uuid4().hex[:8]}"
    try:
        with RssSampler(worker.pid) as rss:
            n_warm = warmup if warmup is not None else min(concurrency, max(2, scans // 4))
            submit(cstack, image, f"{run_id}w", n_warm, mode)
            rows_db.wait(f"{run_id}w", n_warm, worker, timeout)
            idle_rss = tree_rss_bytes(worker.pid)
            before = _cpu_snapshot(worker.pid, stack, standin)
            wall0 = time.monotonic()
            submit(cstack, image, run_id, scans, mode)
            rows = rows_db.wait(run_id, scans, worker, timeout)
            wall = time.monotonic() - wall0
            after = _cpu_snapshot(worker.pid, stack, standin)
            processes = len(tree_processes(worker.pid))
            loaded_pss = tree_pss_bytes(worker.pid)
    finally:
        worker.terminate(timeout=20.0)
        worker.stop()
    done = [r for r in rows if r["status"] == "done"]
    failed = [r for r in rows if r["status"] == "failed"]
    final = done + failed
    tasks = task_times(worker.log_text(), run_id + "-")
    latencies = [seconds * 1000.0 for _end, seconds in tasks.values()]
    if tasks:
        span = max(end for end, _s in tasks.values()) - min(
            end - seconds for end, seconds in tasks.values()
        )
    else:  # no INFO log: fall back to the rows (submit to last finish)
        span = max(r["finished"] for r in final) - min(r["created"] for r in final)
    rate = len(done) / span if final and span > 0 else 0.0
    bound = concurrency / (2 * standin.latency)
    n = max(1, len(final))
    breakdown = {k: (after[k] - before[k]) * 1000.0 / n for k in before}
    worker_cpu = breakdown["worker"]
    system_cpu = sum(breakdown.values())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    errors: dict[str, int] = {}
    for r in failed:
        key = str((r["error"] or {}).get("code"))
        errors[key] = errors.get(key, 0) + 1
    return {
        "pool": pool,
        "concurrency": concurrency,
        "scans": scans,
        "done": len(done),
        "failed": len(failed),
        "unfinished": scans - len(final),
        "errors": errors,
        "redelivered": sum(1 for r in rows if (r["attempts"] or 0) > 1),
        "wall_s": wall,
        "span_s": span,
        "scans_per_s": rate,
        "bound": bound,
        "ratio_to_bound": rate / bound,
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "worker_cpu_ms_per_scan": worker_cpu,
        "cpu_limit_scans_per_s": 1000.0 / worker_cpu if worker_cpu > 0 else None,
        "system_cpu_ms_per_scan": system_cpu,
        "system_limit_scans_per_s": (cores or 1) * 1000.0 / system_cpu if system_cpu else None,
        "cpu_breakdown_ms": breakdown,
        "peak_rss_mb": rss.peak / 2**20,
        "idle_rss_mb": idle_rss / 2**20,
        "pss_after_mb": loaded_pss / 2**20,
        "processes": processes,
    }


def run(cfg: ThroughputConfig, supervisor: Supervisor, stack: Stack) -> dict[str, Any]:
    """The throughput part: every pool of ``cfg.runs`` in turn, in this one run."""
    standin = StandIn.start(supervisor, latency=cfg.latency)
    rows_db = Rows(stack.postgres_url)
    rows = []
    try:
        with celery_stack(stack, standin) as cstack:
            for spec in cfg.runs:
                log(f"throughput: -P {spec.label} -c {spec.concurrency}, {spec.scans} scans")
                row = pool_run(
                    cstack,
                    rows_db,
                    stack,
                    standin,
                    spec.pool,
                    spec.concurrency,
                    spec.scans,
                    timeout=cfg.timeout,
                    worker_args=spec.args,
                )
                row["label"] = spec.label
                log(
                    f"  {row['scans_per_s']:.1f} scans/s, p95 {row['p95_ms']:.0f} ms, "
                    f"worker {row['worker_cpu_ms_per_scan']:.1f} ms CPU/scan, "
                    f"{row['failed']} failed"
                )
                rows.append(row)
    finally:
        rows_db.close()
        standin.stop(supervisor)
    return {"latency": cfg.latency, "rows": rows, "targets": targets(rows)}


def targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """gevent -c 100 against prefork -c 2, and against min(bound, CPU limit)."""

    def find(label: str, concurrency: int) -> dict[str, Any] | None:
        return next(
            (
                r
                for r in rows
                if r.get("label", r["pool"]) == label and r["concurrency"] == concurrency
            ),
            None,
        )

    gevent = find("gevent", 100)
    prefork = find("prefork", 2)
    out: dict[str, Any] = {}
    if gevent and prefork and prefork["scans_per_s"]:
        out["speedup"] = gevent["scans_per_s"] / prefork["scans_per_s"]
        out["speedup_met"] = out["speedup"] >= 15
    if gevent:
        limit = gevent["cpu_limit_scans_per_s"] or float("inf")
        if limit < gevent["bound"]:
            out["reference"], out["reference_kind"] = limit, "CPU limit of one core"
        else:
            out["reference"], out["reference_kind"] = gevent["bound"], "bound c/(2L)"
        out["fraction"] = gevent["scans_per_s"] / out["reference"]
        out["fraction_met"] = out["fraction"] >= 0.6
        out["fraction_of_bound"] = gevent["ratio_to_bound"]
    return out
