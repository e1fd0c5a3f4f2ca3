"""Real Celery workers for the integration tests: start, submit, wait for rows, kill.

Everything here is a real process on loopback: ``celery -A tasks worker ...`` subprocesses (each
in its own process group, so a kill takes its children too), the OpenAI stand-in as a separate
``python -m waste_pipeline.standin`` process (it must not share the test's GIL), and the
session's PostgreSQL and Redis. Each :class:`CeleryStack` uses its own Redis database number,
so queues, unacked messages and results of one test never reach another.

Counting executions: every task body logs one ``execute <task> scan=<id> task=<id>
retries=<n> redelivered=<bool>`` line (``tasks.scan.ScanTask.log_execution``); the harness
reads the workers' logs (``--loglevel INFO``) with :meth:`Worker.executions`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
CELERY = str(Path(sys.executable).with_name("celery"))
TEST_API_KEY = "sk-test-3f9a7c1e5b2d4a6f8e0c"

_EXECUTE = re.compile(
    r"execute (?P<task>scan\.\w+) scan=(?P<scan>\S+) task=(?P<id>\S+) "
    r"retries=(?P<retries>\d+) redelivered=(?P<redelivered>\w+)"
)
_DB_NUMBERS = itertools.count(1)


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child process: ours, the repo on PYTHONPATH, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "PYTEST_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "src")])
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def redis_db_url(base: str, db: int) -> str:
    """``base`` with its database number replaced by ``db``."""
    parts = urlsplit(base)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", "", ""))


def _kill_group(proc: subprocess.Popen[Any], sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


# --- the stand-in --------------------------------------------------------------------------------


class StandInProcess:
    """``python -m waste_pipeline.standin --port 0 --latency L`` as a separate process."""

    def __init__(self, latency: float = 0.2, *extra: str) -> None:
        self.latency = latency
        self.extra = extra
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self, timeout: float = 30.0) -> StandInProcess:
        """Start it and wait for its ``listening on URL`` line."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "waste_pipeline.standin", "--port", "0",
             "--latency", str(self.latency), *self.extra],
            cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, start_new_session=True,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            match = re.search(r"listening on (\S+/v1)", line)
            if match:
                self.url = match.group(1)
                return self
        self.stop()
        raise RuntimeError("the stand-in did not start")

    @property
    def root_url(self) -> str:
        """``http://host:port`` (without ``/v1``)."""
        return self.url.rsplit("/v1", 1)[0]

    def stats(self) -> dict[str, Any]:
        """``GET /_standin/stats``."""
        with urllib.request.urlopen(f"{self.root_url}/_standin/stats", timeout=10) as resp:
            data: dict[str, Any] = json.loads(resp.read())
        return data

    def model_calls(self) -> int:
        """Model calls received since the last reset."""
        requests = self.stats()["requests"]
        return int(requests.get("responses", 0)) + int(requests.get("chat.completions", 0))

    def reset(self) -> None:
        """``POST /_standin/reset``: zero the counters."""
        req = urllib.request.Request(f"{self.root_url}/_standin/reset", data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=10):
            pass

    def stop(self) -> None:
        """Kill its process group and reap it."""
        if self.proc is not None:
            _kill_group(self.proc, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                _kill_group(self.proc)
                self.proc.wait(5)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None


# --- workers -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Execution:
    """One execution of a task body, as logged by the worker."""

    task: str
    scan_id: str
    task_id: str
    retries: int
    redelivered: bool


class Worker:
    """One ``celery -A tasks worker`` subprocess (its own process group), logging to a file."""

    def __init__(self, args: Sequence[str], env: dict[str, str], log_path: Path) -> None:
        self.args = [CELERY, "-A", "tasks", "worker", *args]
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    def start(self) -> Worker:
        """Start the process (does not wait; see :meth:`wait_ready`)."""
        self._log = open(self.log_path, "ab")  # closed in stop()
        self.proc = subprocess.Popen(
            self.args, cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        return self

    def log_text(self) -> str:
        """Everything the worker printed so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_ready(self, timeout: float = 60.0) -> Worker:
        """Wait for Celery's ``ready.`` line; raise with the log tail if it exits or times out."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_text()
            if re.search(r"@\S+ ready\.", text):
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited ({self.proc.returncode}):\n{text[-4000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"worker not ready after {timeout} s:\n{self.log_text()[-4000:]}")

    def wait_exit(self, timeout: float) -> int | None:
        """Wait for the process to exit; its status, or None if it still runs."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    @property
    def pid(self) -> int:
        """The worker's main process id."""
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """``kill -9`` the worker and all its children (the whole process group)."""
        if self.proc is not None:
            _kill_group(self.proc)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)

    def terminate(self, timeout: float = 30.0) -> int | None:
        """Warm shutdown (SIGTERM: finish running tasks, then exit); SIGKILL after ``timeout``."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
        status = self.wait_exit(timeout)
        self.kill()
        return status

    def stop(self) -> None:
        """Kill whatever is left of the process group and close the log."""
        self.kill()
        if self._log is not None:
            self._log.close()
            self._log = None

    def greenlet_dump(self, wait: float = 2.0) -> str:
        """Ask a gevent worker for the stacks of its greenlets (SIGUSR2); return them.

        Only for ``-P gevent`` workers (elsewhere SIGUSR2 has no handler and would kill).
        """
        if self.proc is None or self.proc.poll() is not None or "gevent" not in self.args:
            return ""
        before = len(self.log_text())
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGUSR2)
        time.sleep(wait)
        text = self.log_text()[before:]
        start = text.find("greenlet dump (SIGUSR2)")
        return text[start:] if start >= 0 else ""

    def executions(self, task: str | None = None) -> list[Execution]:
        """Every task-body execution this worker logged (optionally of one task)."""
        found = []
        for m in _EXECUTE.finditer(self.log_text()):
            if task is None or m["task"] == task:
                found.append(Execution(m["task"], m["scan"], m["id"], int(m["retries"]),
                                       m["redelivered"] == "True"))
        return found


# --- one test's stack ---------------------------------------------------------------------------


class CeleryStack:
    """Workers, a submitting client and SQL checks for one test, on its own Redis database."""

    def __init__(
        self,
        *,
        redis_url: str,
        postgres_url: str,
        standin_url: str,
        tmp_path: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.db = next(_DB_NUMBERS) % 16 or 15
        self.broker_url = redis_db_url(redis_url, self.db)
        self.postgres_url = postgres_url
        self.standin_url = standin_url
        self.tmp_path = tmp_path
        self.extra_env = dict(env or {})
        self.workers: list[Worker] = []
        self.scan_ids: list[str] = []
        self.stuck_report = ""
        self._pipeline: Any = None
        self._app: Any = None
        self.flush()
        _ = self.pipeline  # opens the pool and creates the scans table before any query

    # environment and clients

    def env(self, **extra: str) -> dict[str, str]:
        """A worker's environment: stand-in, database, broker, fake key, plus ``extra``."""
        return child_env(
            OPENAI_BASE_URL=self.standin_url,
            OPENAI_API_KEY=TEST_API_KEY,
            WASTE_PIPELINE_DATABASE_URL=self.postgres_url,
            WASTE_PIPELINE_HOME=str(self.tmp_path / "home"),
            WASTE_PIPELINE_MODEL_MAX_RETRIES="0",
            CELERY_BROKER_URL=self.broker_url,
            CELERY_RESULT_BACKEND=self.broker_url,
            **{**self.extra_env, **extra},
        )

    def redis(self) -> Any:
        """A redis-py client on this stack's database."""
        import redis

        return redis.Redis.from_url(self.broker_url)

    def flush(self) -> None:
        """Empty this stack's Redis database."""
        client = self.redis()
        try:
            client.flushdb()
        finally:
            client.close()

    @property
    def app(self) -> Any:
        """A client Celery app on this stack's broker (it sends tasks by name)."""
        if self._app is None:
            from tasks.app import CelerySettings, create_app
            from waste_pipeline.settings import Settings

            settings = Settings(celery_broker_url=self.broker_url,
                                celery_result_backend=self.broker_url)
            tuning = CelerySettings.model_validate(
                {k[len("WASTE_PIPELINE_CELERY_"):].lower(): v
                 for k, v in self.extra_env.items() if k.startswith("WASTE_PIPELINE_CELERY_")}
            )
            self._app = create_app(settings, tuning, set_as_current=False)
        return self._app

    @property
    def pipeline(self) -> Any:
        """The submitting side's sync pipeline (records the ``pending`` rows)."""
        if self._pipeline is None:
            from waste_pipeline import ScanPipeline
            from waste_pipeline.settings import Settings

            self._pipeline = ScanPipeline(Settings(
                openai_api_key=TEST_API_KEY, openai_base_url=self.standin_url,
                database_url=self.postgres_url, db_pool_max=4,
            )).open()
        return self._pipeline

    # workers

    def worker(self, *args: str, wait: bool = True, name: str | None = None,
               **env: str) -> Worker:
        """Start ``celery -A tasks worker ARGS`` (INFO logs, no gossip/mingle/heartbeat)."""
        name = name or f"w{len(self.workers) + 1}-{uuid.uuid4().hex[:6]}"
        worker = Worker(
            [*args, "--loglevel", "INFO", "-n", f"{name}@%h",
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            self.env(**env),
            self.tmp_path / f"{name}.log",
        )
        self.workers.append(worker.start())
        if wait:
            worker.wait_ready()
        return worker

    def executions(self, task: str | None = None) -> list[Execution]:
        """Executions logged by every worker of this stack."""
        return [e for w in self.workers for e in w.executions(task)]

    # submitting

    def submit(self, images: Sequence[str], user_text: str = "", *, mode: str = "run",
               scan_id: str | None = None) -> str:
        """:func:`tasks.submit_scan` through this stack's client app and pipeline."""
        from tasks import submit_scan

        sid = submit_scan(list(images), user_text, scan_id=scan_id, mode=mode,  # type: ignore[arg-type]
                          pipeline=self.pipeline, app=self.app)
        self.scan_ids.append(sid)
        return sid

    def submit_over(self, n: int, seconds: float, images: Sequence[str], *,
                    mode_of: Any = None, scan_ids: Sequence[str] | None = None) -> list[str]:
        """Submit ``n`` scans evenly over ``seconds`` (``mode_of(i)`` picks each one's mode).

        ``scan_ids`` gives the ids to use (e.g. to watch them from another thread).
        """
        start = time.monotonic()
        ids = []
        for i in range(n):
            due = start + seconds * i / max(1, n)
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            mode = mode_of(i) if mode_of else "run"
            sid = scan_ids[i] if scan_ids is not None else None
            ids.append(self.submit(images, f"item {i}", mode=mode, scan_id=sid))
        return ids

    # rows

    def statuses(self, ids: Iterable[str] | None = None) -> Counter[str]:
        """How many of ``ids`` (default: every scan submitted here) are in each status."""
        rows = self.rows(ids)
        return Counter(r["status"] for r in rows)

    def rows(self, ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """The ``scans`` rows of ``ids``."""
        import psycopg
        from psycopg.rows import dict_row

        wanted = list(ids if ids is not None else self.scan_ids)
        with psycopg.connect(self.postgres_url, row_factory=dict_row) as conn:
            return list(conn.execute(
                "SELECT id, status, attempts, error, rules_key, finished_at FROM scans "
                "WHERE id = ANY(%s)", (wanted,)
            ).fetchall())

    def wait_rows(self, ids: Sequence[str], *, timeout: float,
                  final: frozenset[str] = frozenset({"done", "failed"})) -> Counter[str]:
        """Poll until every scan of ``ids`` is in a final status (or ``timeout``).

        On a timeout, every live gevent worker is asked for its greenlets' stacks (kept in
        :attr:`stuck_report` and printed), so a stuck scan says where it is stuck.
        """
        deadline = time.monotonic() + timeout
        counts = Counter[str]()
        while time.monotonic() < deadline:
            counts = self.statuses(ids)
            if sum(counts[s] for s in final) >= len(ids):
                return counts
            time.sleep(0.25)
        stuck = [r["id"] for r in self.rows(ids) if r["status"] not in final]
        dumps = [w.greenlet_dump() for w in self.workers]
        self.stuck_report = f"stuck scans: {stuck[:10]}\n" + "\n".join(d for d in dumps if d)
        print(self.stuck_report[-20000:], flush=True)
        return counts

    def close(self) -> None:
        """Kill every worker (whole process groups) and close the clients."""
        for worker in self.workers:
            worker.stop()
        if self._pipeline is not None:
            self._pipeline.close()
            self._pipeline = None
        if self._app is not None:
            self._app.close()
            self._app = None


@contextlib.contextmanager
def celery_stack(**kwargs: Any) -> Iterator[CeleryStack]:
    """A :class:`CeleryStack` that kills its workers on exit, whatever happened."""
    stack = CeleryStack(**kwargs)
    try:
        yield stack
    finally:
        stack.close()
