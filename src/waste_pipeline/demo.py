"""``waste-pipeline demo``: the whole system on embedded defaults, through every door.

1. Brings the stack up: embedded PostgreSQL and Redis (unless their variables are set) and,
   without ``OPENAI_API_KEY``, the OpenAI stand-in (a test double, announced as such) with
   ``L = 0.2 s`` per model call.
2. Scans a generated photo through every door and prints a table:
   the CLI (sync twin), the API inline (async twin), the API queued to a ``-P gevent`` worker
   (sync twin) and to a ``-P prefork`` worker (async twin through its per-process loop).
3. Replays the original failure: ``users`` concurrent users for ``seconds`` against a
   ``-P gevent -c 100`` worker, once with a fresh asyncio loop per task (``scan.run_naive``)
   and once with the generated sync twin (``scan.run``), and prints both failure rates.
4. Stops everything it started; no process is left behind.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

import httpx2

from .embedded import free_port
from .settings import Settings
from .stack import EmbeddedStack

__all__ = ["DemoReport", "DoorResult", "ReplayResult", "run_demo"]

LATENCY = 0.2
"""Stand-in latency per model call (seconds) when the demo starts the stand-in."""

REPLAY_DB = 11
"""Redis database number the demo uses on an embedded Redis (flushed at start)."""


@dataclass
class DoorResult:
    """One scan through one door."""

    door: str
    twin: str
    status: str
    scan_id: str = ""
    category: str = ""
    seconds: float = 0.0
    detail: str = ""


@dataclass
class ReplayResult:
    """One load replay: how many scans ended how."""

    worker: str
    submitted: int
    done: int
    failed: int
    unfinished: int
    seconds: float
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def failure_rate(self) -> float:
        """Failed (or never finished) scans over submitted ones."""
        if not self.submitted:
            return 0.0
        return (self.failed + self.unfinished) / self.submitted


@dataclass
class DemoReport:
    """Everything the demo observed."""

    doors: list[DoorResult] = field(default_factory=list)
    replays: list[ReplayResult] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form (with each replay's failure rate)."""
        return {
            "doors": [asdict(d) for d in self.doors],
            "replays": [{**asdict(r), "failure_rate": r.failure_rate} for r in self.replays],
        }


# --- processes ------------------------------------------------------------------------------


class _Processes:
    """Children in their own process groups; all killed on exit, whatever happens."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.children: list[subprocess.Popen[bytes]] = []

    def spawn(self, name: str, args: Sequence[str], **env: str) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            list(args),
            env={**self.env, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.children.append(proc)
        return proc

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 15.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the group: prefork children too
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)

    def stop_all(self) -> None:
        for proc in reversed(self.children):
            self.stop(proc)
        self.children.clear()


def _wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise RuntimeError(f"demo: {what} did not happen within {timeout:g} s")


def _photo() -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (800, 600), (235, 240, 245))
    draw = ImageDraw.Draw(img)
    draw.rectangle((330, 120, 470, 520), fill=(170, 210, 230), outline=(60, 90, 120), width=6)
    draw.rectangle((370, 80, 430, 125), fill=(40, 120, 60))
    draw.rectangle((330, 260, 470, 340), fill=(220, 60, 60))  # the label
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


# --- the demo -------------------------------------------------------------------------------


class _Demo:
    def __init__(self, env: dict[str, str], procs: _Processes, out: TextIO) -> None:
        self.env = env
        self.procs = procs
        self.out = out
        self.photo = _photo()
        self.data_url = "data:image/jpeg;base64," + base64.b64encode(self.photo).decode()
        self.http = httpx2.Client(timeout=30.0, trust_env=False)
        self.api = ""

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    # -- hosts ---------------------------------------------------------------------------------

    def start_api(self) -> None:
        port = free_port()
        self.procs.spawn(
            "api",
            [sys.executable, "-m", "uvicorn", "waste_pipeline.api:app", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "warning"],
        )
        self.api = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            with contextlib.suppress(httpx2.HTTPError):
                return self.http.get(f"{self.api}/healthz").status_code == 200
            return False

        _wait_for(ready, 60, f"the API at {self.api}")

    def worker(self, name: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
        proc = self.procs.spawn(
            name,
            [sys.executable, "-m", "celery", "-A", "tasks", "worker", *args,
             "--loglevel", "INFO", "-n", f"{name}@%h", "--without-gossip", "--without-mingle",
             "--without-heartbeat"],
            **env,
        )
        _wait_for(lambda: " ready." in self.procs.log(name) or proc.poll() is not None, 90,
                  f"worker {name} to be ready")
        if proc.poll() is not None:
            raise RuntimeError(f"worker {name} exited:\n{self.procs.log(name)[-2000:]}")
        return proc

    # -- doors ---------------------------------------------------------------------------------

    def door_cli(self, tmp: Path) -> DoorResult:
        photo = tmp / "bottle.jpg"
        photo.write_bytes(self.photo)
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "waste_pipeline.cli", "scan", str(photo), "--text",
             "투명 무색페트병, 라벨이 붙어 있어요", "--json", "-q"],
            env=self.env, capture_output=True, text=True, timeout=120,
        )
        seconds = time.perf_counter() - start
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if not lines:
            return DoorResult("CLI `waste-pipeline scan`", "sync", "error", seconds=seconds,
                              detail=proc.stderr.strip()[-300:])
        data = json.loads(lines[-1])
        return self._door("CLI `waste-pipeline scan`", "sync", data, seconds)

    def door_inline(self) -> DoorResult:
        start = time.perf_counter()
        reply = self.http.post(f"{self.api}/v1/scans", json={
            "image_url": self.data_url, "user_text": "유리병이에요, 뚜껑은 닫혀 있어요",
            "mode": "inline"})
        data = reply.json()
        return self._door("API inline", "async", data, time.perf_counter() - start)

    def door_queued(self, door: str, twin: str) -> DoorResult:
        start = time.perf_counter()
        reply = self.http.post(f"{self.api}/v1/scans", json={
            "image_url": self.data_url, "user_text": "캔 음료, 내용물 조금 남음", "mode": "queued"})
        if reply.status_code != 202:
            return DoorResult(door, twin, "error", detail=reply.text[:300])
        scan_id = reply.json()["scan_id"]
        data: dict[str, Any] = {}

        def final() -> bool:
            nonlocal data
            data = self.http.get(f"{self.api}/v1/scans/{scan_id}").json()
            return data.get("status") in ("done", "failed")

        _wait_for(final, 120, f"queued scan {scan_id} to finish")
        return self._door(door, twin, data, time.perf_counter() - start)

    @staticmethod
    def _door(door: str, twin: str, data: dict[str, Any], seconds: float) -> DoorResult:
        c = data.get("classification") or {}
        category = "/".join(x for x in (c.get("major"), c.get("middle")) if x)
        error = data.get("error") or {}
        return DoorResult(
            door, twin, str(data.get("status", "error")), str(data.get("scan_id", "")),
            category, round(seconds, 2),
            detail=str(error.get("code", "")) if isinstance(error, dict) else "",
        )

    # -- the replay ----------------------------------------------------------------------------

    def replay(
        self, label: str, mode: Literal["run", "naive"], users: int, seconds: float
    ) -> ReplayResult:
        """``users`` threads for ``seconds``: each submits a scan and waits for its row."""
        from tasks.scan import submit_scan

        from ._sync.pipeline import ScanPipeline

        settings = Settings()
        ids: list[str] = []
        lock = threading.Lock()
        stop_at = time.monotonic() + seconds
        with ScanPipeline(settings.model_copy(update={"db_pool_max": users + 5})) as pipeline:

            def user(n: int) -> None:
                while time.monotonic() < stop_at:
                    scan_id = submit_scan([self.data_url], f"user {n}", mode=mode,
                                          pipeline=pipeline)
                    with lock:
                        ids.append(scan_id)
                    deadline = time.monotonic() + 60
                    while time.monotonic() < deadline:
                        row = pipeline.get(scan_id)
                        if row is not None and row.status in ("done", "failed"):
                            break
                        time.sleep(0.1)

            start = time.perf_counter()
            threads = [threading.Thread(target=user, args=(i,), daemon=True)
                       for i in range(users)]
            for t in threads:
                t.start()
                time.sleep(seconds / users / 2)  # ramp up over the first half
            for t in threads:
                t.join(timeout=seconds + 90)
            elapsed = time.perf_counter() - start
            results = [pipeline.get(i) for i in ids]
        statuses = Counter(r.status if r else "missing" for r in results)
        errors = Counter(
            (r.error.message[:70] if r.error else "?") for r in results
            if r is not None and r.status == "failed"
        )
        done, failed = statuses.get("done", 0), statuses.get("failed", 0)
        return ReplayResult(label, len(ids), done, failed, len(ids) - done - failed,
                            round(elapsed, 1), dict(errors.most_common(3)))

    # -- printing ------------------------------------------------------------------------------

    def print_doors(self, doors: list[DoorResult]) -> None:
        self.say("")
        self.say(f"{'door':34} {'twin':6} {'status':8} {'category':28} {'s':>6}  scan id")
        self.say("-" * 120)
        for d in doors:
            self.say(f"{d.door:34} {d.twin:6} {d.status:8} {d.category[:28]:28} "
                     f"{d.seconds:6.2f}  {d.scan_id} {d.detail}")

    def print_replays(self, replays: list[ReplayResult]) -> None:
        self.say("")
        self.say(f"{'gevent worker -c 100 running':44} {'scans':>6} {'done':>6} "
                 f"{'failed':>6} {'failure rate':>13}")
        self.say("-" * 80)
        for r in replays:
            self.say(f"{r.worker:44} {r.submitted:6d} {r.done:6d} "
                     f"{r.failed + r.unfinished:6d} {r.failure_rate:12.1%}")
        for r in replays:
            for message, count in r.errors.items():
                self.say(f"  {r.worker.split(' (')[0]}: {count} x {message}")


def run_demo(
    *, users: int = 100, seconds: float = 10.0, out: TextIO | None = None,
    report_path: Path | None = None,
) -> DemoReport:
    """Run the demo; returns (and optionally writes as JSON) what it observed."""
    out = out or sys.stdout
    report = DemoReport()
    base = Settings()
    with contextlib.ExitStack() as exit_stack:
        stack = exit_stack.enter_context(
            EmbeddedStack(base, standin="process", standin_latency=LATENCY)
        )
        env = {**os.environ, **stack.env()}
        if "CELERY_BROKER_URL" not in os.environ:  # our embedded Redis: a clean database
            import redis

            broker = env["CELERY_BROKER_URL"].rsplit("/", 1)[0] + f"/{REPLAY_DB}"
            redis.Redis.from_url(broker).flushdb()
            env["CELERY_BROKER_URL"] = env["CELERY_RESULT_BACKEND"] = broker
        env["WASTE_PIPELINE_EMBEDDED"] = "0"  # children use exactly this stack
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path.cwd()),
                                                          env.get("PYTHONPATH", "")) if p)
        tmp = Path(exit_stack.enter_context(tempfile.TemporaryDirectory(prefix="wp-demo-")))
        procs = _Processes(env, tmp)
        exit_stack.callback(procs.stop_all)
        saved = dict(os.environ)
        os.environ.update(env)  # the replay submits from this process, with the same config

        def restore_environment() -> None:
            os.environ.clear()
            os.environ.update(saved)

        exit_stack.callback(restore_environment)
        demo = _Demo(env, procs, out)
        exit_stack.callback(demo.http.close)

        demo.say("== 1. one scan through every door (stand-in latency "
                 f"{LATENCY:g} s per model call)")
        demo.start_api()
        report.doors.append(demo.door_cli(tmp))
        report.doors.append(demo.door_inline())
        worker = demo.worker("gevent", "-P", "gevent", "-c", "100")
        report.doors.append(demo.door_queued("API queued -> celery -P gevent", "sync"))
        procs.stop(worker)
        worker = demo.worker("prefork", "-P", "prefork", "-c", "2")
        report.doors.append(demo.door_queued("API queued -> celery -P prefork", "async"))
        procs.stop(worker)
        demo.print_doors(report.doors)

        demo.say("")
        demo.say(f"== 2. the original failure: {users} users for {seconds:g} s against a "
                 "gevent worker")
        worker = demo.worker("naive", "-P", "gevent", "-c", "100", "-Q", "scan.naive",
                             WASTE_PIPELINE_NAIVE="1")
        report.replays.append(demo.replay("fresh event loop per task (naive)", "naive",
                                          users, seconds))
        procs.stop(worker)
        worker = demo.worker("twin", "-P", "gevent", "-c", "100")
        report.replays.append(demo.replay("generated sync twin (scan.run)", "run",
                                          users, seconds))
        procs.stop(worker)
        demo.print_replays(report.replays)
        demo.say("")
        demo.say("stopping everything the demo started ...")
    if report_path is not None:
        report_path.write_text(json.dumps(report.to_json(), indent=2))
    print("demo finished: every process it started is stopped.", file=out)
    return report

