"""``python -m bench.load`` (``nox -s load``): the Locust scenario, twin worker against naive.

Two runs, the same scenario each time (``bench/locustfile.py``, headless, bounded):
100 users ramping up at 10 users/s for 30 s, each submitting a scan (``POST /v1/scans`` with
``mode=queued``) and polling ``GET /v1/scans/{id}`` until it is ``done`` or ``failed``, against

1. the API (``uvicorn waste_pipeline.api:app``) with a ``celery -A tasks worker -P gevent
   -c 100`` behind it: the sync twin, as shipped;
2. the same API submitting to the naive reproduction (``scan.run_naive``: a fresh event loop
   per task, ``tasks/naive.py``) with the same gevent worker consuming ``scan.naive``.

Everything runs on 127.0.0.1: embedded PostgreSQL and Redis, the OpenAI stand-in (latency
L = 0.2 s per model call, its own process), the API, the worker and Locust, each a process in
its own group, all stopped at the end (also on errors and Ctrl-C). Reported per run: scan
failure rate, HTTP requests/s and failures, scans/s, p50/p95 end-to-end latency (submit to
the poll that saw the final status), the most common errors, and the CPU each process used.

    python -m bench.load [--quick] [--users 100] [--spawn-rate 10] [--duration 30]
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import (
    RESULTS_DIR,
    ROOT,
    Stack,
    StandIn,
    Supervisor,
    environment,
    install_signal_handlers,
    log,
    machine_info,
    percentile,
    tree_cpu_seconds,
)
from bench.throughput import celery_stack, task_times

__all__ = ["LoadConfig", "main", "naive_api", "run"]


@dataclass(frozen=True)
class LoadConfig:
    """The scenario's knobs."""

    users: int = 100
    spawn_rate: float = 10.0
    duration: float = 30.0
    latency: float = 0.2
    poll_interval: float = 0.1
    first_poll: float = 0.3
    wait_min: float = 1.0
    wait_max: float = 3.0
    stop_timeout: float = 30.0
    concurrency: int = 100

    @classmethod
    def quick(cls) -> LoadConfig:
        """Tiny sizes: it runs, the numbers mean little."""
        return cls(
            users=5,
            spawn_rate=5.0,
            duration=4.0,
            latency=0.05,
            first_poll=0.05,
            wait_min=0.1,
            wait_max=0.2,
            stop_timeout=10.0,
            concurrency=10,
        )


def naive_api() -> Any:
    """The API with queued scans sent to ``scan.run_naive`` (``uvicorn --factory``).

    Everything else is the shipped API; only the submit hook asks ``tasks.submit_scan_async``
    for ``mode="naive"``.
    """
    from tasks import submit_scan_async
    from waste_pipeline import AsyncScanPipeline
    from waste_pipeline.api import create_app

    async def submit(
        pipeline: AsyncScanPipeline,
        images: list[str],
        user_text: str,
        *,
        scan_id: str,
        language: str,
    ) -> str:
        return await submit_scan_async(
            pipeline, images, user_text, scan_id=scan_id, language=language, mode="naive"
        )

    return create_app(submit=submit)


def _wait_http(url: str, proc: Any, supervisor: Supervisor, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the API exited:\n{supervisor.log_tail(proc)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the API did not answer {url} within {timeout:g} s")


def _warm_up(host: str, worker: Any, scans: int = 5, timeout: float = 60.0) -> None:
    """A few queued scans through the API before Locust starts: every client gets opened."""
    from bench.throughput import scan_image

    body = json.dumps({"image_url": scan_image(), "mode": "queued"}).encode()
    ids = []
    for _ in range(scans):
        request = urllib.request.Request(  # noqa: S310 - loopback only
            f"{host}/v1/scans", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
            ids.append(json.loads(response.read())["scan_id"])
    deadline = time.monotonic() + timeout
    pending = set(ids)
    while pending and time.monotonic() < deadline and worker.proc.poll() is None:
        for scan_id in list(pending):
            with urllib.request.urlopen(f"{host}/v1/scans/{scan_id}", timeout=10) as response:  # noqa: S310
                if json.loads(response.read())["status"] in ("done", "failed"):
                    pending.discard(scan_id)
        time.sleep(0.1)


def _http_stats(path: Path) -> dict[str, Any]:
    """HTTP requests, failures and requests/s from Locust's ``*_stats.csv`` (SCAN rows out)."""
    requests = failures = 0
    rps = 0.0
    per_name: dict[str, Any] = {}
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            if row["Type"] in ("SCAN", "") or row["Name"] == "Aggregated":
                continue
            requests += int(row["Request Count"])
            failures += int(row["Failure Count"])
            rps += float(row["Requests/s"])
            per_name[f"{row['Type']} {row['Name']}"] = {
                "requests": int(row["Request Count"]),
                "failures": int(row["Failure Count"]),
                "median_ms": float(row["Median Response Time"] or 0),
                "p95_ms": float(row.get("95%") or 0),
            }
    return {"requests": requests, "failures": failures, "requests_per_s": rps, "per_name": per_name}


def _one(
    label: str,
    cfg: LoadConfig,
    supervisor: Supervisor,
    stack: Stack,
    standin: StandIn,
    cstack: Any,
    *,
    naive: bool,
) -> dict[str, Any]:
    from waste_pipeline.embedded import free_port

    queue = "scan.naive" if naive else "scan.run"
    worker = cstack.worker("-P", "gevent", "-c", str(cfg.concurrency), "-Q", queue)
    port = free_port()
    target = "bench.load:naive_api" if naive else "waste_pipeline.api:app"
    api_cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        *(["--factory"] if naive else []),
        target,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    api = supervisor.spawn(f"api-{label}", api_cmd, env=cstack.env(WASTE_PIPELINE_EMBEDDED="0"))
    host = f"http://127.0.0.1:{port}"
    _wait_http(f"{host}/healthz", api, supervisor)
    _warm_up(host, worker)
    folder = Path(tempfile.mkdtemp(prefix=f"wp-load-{label}-"))
    records = folder / "records.jsonl"
    env = cstack.env(
        BENCH_LOAD_RECORDS=str(records),
        BENCH_LOAD_POLL=str(cfg.poll_interval),
        BENCH_LOAD_FIRST_POLL=str(cfg.first_poll),
        BENCH_LOAD_WAIT_MIN=str(cfg.wait_min),
        BENCH_LOAD_WAIT_MAX=str(cfg.wait_max),
    )
    locust_cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(ROOT / "bench" / "locustfile.py"),
        "--headless",
        "-u",
        str(cfg.users),
        "-r",
        f"{cfg.spawn_rate:g}",
        "-t",
        f"{cfg.duration:g}s",
        "--stop-timeout",
        f"{cfg.stop_timeout:g}",
        "--host",
        host,
        "--csv",
        str(folder / "locust"),
        "--only-summary",
        "--loglevel",
        "WARNING",
    ]
    pids = {
        "worker": worker.pid,
        "api": api.pid,
        "stand-in": standin.pid,
        "redis": stack.redis_pid,
    }
    before = {k: tree_cpu_seconds(v) for k, v in pids.items() if v}
    before["postgres"] = stack.database_cpu_seconds()
    log(f"load ({label}): {cfg.users} users, {cfg.duration:g} s, against {target}")
    locust = supervisor.spawn(f"locust-{label}", locust_cmd, env=env)
    wall0 = time.monotonic()
    try:
        locust_cpu = 0.0
        deadline = wall0 + cfg.duration + cfg.stop_timeout + 60
        while locust.poll() is None and time.monotonic() < deadline:
            locust_cpu = max(locust_cpu, tree_cpu_seconds(locust.pid))
            time.sleep(0.5)
        if locust.poll() is None:
            log("locust overran its time: stopping it")
    finally:
        supervisor.stop(locust, grace=15.0)
    elapsed = time.monotonic() - wall0
    after = {k: tree_cpu_seconds(v) for k, v in pids.items() if v}
    after["postgres"] = stack.database_cpu_seconds()
    cpu = {k: after[k] - before[k] for k in before}
    cpu["locust"] = locust_cpu
    supervisor.stop(api)
    worker.terminate(timeout=20.0)
    worker.stop()
    task_seconds = [sec for _end, sec in task_times(worker.log_text(), "").values()]
    lines = records.read_text().splitlines() if records.exists() else []
    rows = [json.loads(line) for line in lines]
    http = _http_stats(folder / "locust_stats.csv")
    done = [r for r in rows if r["status"] == "done"]
    failed = [r for r in rows if r["status"] == "failed"]
    other = [r for r in rows if r["status"] not in ("done", "failed")]
    e2e = [r["e2e_ms"] for r in done]
    starts = [r["t"] - r["e2e_ms"] / 1000.0 for r in rows]
    span = max(r["t"] for r in rows) - min(starts) if rows else 0.0
    errors = Counter(r["error"] for r in rows if r["error"])
    return {
        "worker": f"{label} (gevent -c {cfg.concurrency})",
        "scans": len(rows),
        "done": len(done),
        "failed": len(failed),
        "unfinished": len(other),
        "failure_rate": (len(failed) + len(other)) / len(rows) if rows else 1.0,
        "requests": sum(r["requests"] for r in rows),
        "http_failures": sum(r["http_failures"] for r in rows),
        "requests_per_s": sum(r["requests"] for r in rows) / span if span > 0 else 0.0,
        "locust_http": http,
        "scans_per_s": len(done) / span if span > 0 else 0.0,
        "p50_ms": percentile(e2e, 50),
        "p95_ms": percentile(e2e, 95),
        "max_ms": max(e2e) if e2e else None,
        "task_p50_ms": percentile(task_seconds, 50) * 1000.0 if task_seconds else None,
        "task_p95_ms": percentile(task_seconds, 95) * 1000.0 if task_seconds else None,
        "elapsed_s": elapsed,
        "per_request": http["per_name"],
        "cpu_seconds": cpu,
        "top_errors": errors.most_common(3),
    }


def run(cfg: LoadConfig, supervisor: Supervisor, stack: Stack) -> dict[str, Any]:
    """Both runs (twin, then naive) on one stand-in and one database."""
    standin = StandIn.start(supervisor, latency=cfg.latency)
    rows = []
    try:
        for label, naive in (("twin", False), ("naive", True)):
            with celery_stack(stack, standin) as cstack:
                rows.append(_one(label, cfg, supervisor, stack, standin, cstack, naive=naive))
                log(
                    f"  {rows[-1]['done']}/{rows[-1]['scans']} done, "
                    f"failure rate {100 * rows[-1]['failure_rate']:.1f} %, "
                    f"p95 {rows[-1]['p95_ms']:.0f} ms"
                )
    finally:
        standin.stop(supervisor)
    twin = rows[0]
    limit_ms = (2 * cfg.latency + 0.5) * 1000.0
    return {
        "config": {**asdict(cfg), "api": "uvicorn waste_pipeline.api:app"},
        "rows": rows,
        "errors": {r["worker"]: r["top_errors"] for r in rows},
        "targets": {
            "twin_failure_rate": twin["failure_rate"],
            "failures_met": twin["failure_rate"] == 0 and twin["scans"] > 0,
            "twin_p95_ms": twin["p95_ms"],
            "p95_limit_ms": limit_ms,
            "p95_met": bool(twin["p95_ms"] == twin["p95_ms"] and twin["p95_ms"] < limit_ms),
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the scenario and write ``load.md`` / ``load.json``."""
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--users", type=int, default=None)
    parser.add_argument("--spawn-rate", type=float, default=None)
    parser.add_argument("--duration", type=float, default=None, help="seconds")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    cfg = LoadConfig.quick() if args.quick else LoadConfig()
    overrides = {
        k: v
        for k, v in (
            ("users", args.users),
            ("spawn_rate", args.spawn_rate),
            ("duration", args.duration),
        )
        if v is not None
    }
    cfg = LoadConfig(**{**asdict(cfg), **overrides})
    install_signal_handlers()
    command = "python -m bench.load " + shlex.join(list(argv if argv is not None else sys.argv[1:]))
    try:
        with environment() as (supervisor, stack):
            results = run(cfg, supervisor, stack)
    except KeyboardInterrupt:
        log("interrupted: every process started was stopped; no report written")
        return 130
    results["machine"] = machine_info(command.strip())
    results["quick"] = args.quick
    from bench.report import write_load_report

    for path in write_load_report(results, args.out):
        log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
