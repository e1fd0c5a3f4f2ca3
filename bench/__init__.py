"""Benchmarks of waste-pipeline: they measure and report, they never assert.

``python -m bench`` (``nox -s bench``) runs the CPU-overhead, throughput and memory parts and
writes ``bench/results/latest.md``, ``latest.json`` and ``throughput.png``;
``python -m bench.load`` (``nox -s load``) runs the Locust scenario. See ``docs/benchmarks.md``.

This module holds what every part shares: a :class:`Supervisor` that owns every process a
benchmark starts (each in its own session, so its whole process group can be killed, also on
Ctrl-C and errors), the OpenAI stand-in as a separate process, embedded PostgreSQL and Redis,
psutil helpers for the CPU and RSS of a process tree, and a description of the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any, Self

import psutil

__all__ = [
    "RESULTS_DIR",
    "ROOT",
    "RssSampler",
    "Stack",
    "StandIn",
    "Supervisor",
    "child_env",
    "install_signal_handlers",
    "log",
    "machine_info",
    "percentile",
    "run_child_json",
    "tree_cpu_seconds",
    "tree_processes",
    "tree_pss_bytes",
    "tree_rss_bytes",
]

ROOT = Path(__file__).resolve().parents[1]
"""The project root (``bench/`` lives in it)."""
RESULTS_DIR = ROOT / "bench" / "results"
"""Where reports are written."""

PACKAGES = (
    "waste-pipeline",
    "openai",
    "httpx2",
    "celery",
    "kombu",
    "gevent",
    "psycopg",
    "asyncpg",
    "pydantic",
    "fastapi",
    "uvicorn",
    "locust",
    "pillow",
)


def log(message: str) -> None:
    """One progress line on stderr (benchmarks print results to files, progress to stderr)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child process: ours, with the project and ``src`` importable.

    Variables that would point a child at another deployment (``OPENAI_*``, ``CELERY_*``,
    ``WASTE_PIPELINE_*``) are dropped; the caller passes the ones it means.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "CELERY_", "WASTE_PIPELINE_"))
    }
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "src")])
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values`` by linear interpolation (nan if empty)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


# --- processes ---------------------------------------------------------------------------------


class _Interrupted(KeyboardInterrupt):
    """SIGTERM/SIGHUP turned into an exception, so every ``finally`` runs."""


def install_signal_handlers() -> None:
    """Make SIGTERM and SIGHUP raise :class:`KeyboardInterrupt` (cleanup runs as on Ctrl-C)."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise _Interrupted(f"signal {signum}")

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, handler)


@dataclass
class _Child:
    name: str
    proc: subprocess.Popen[Any]
    log_path: Path | None = None
    log_file: IO[bytes] | None = None


class Supervisor:
    """Owns every process a benchmark starts; :meth:`stop_all` kills their process groups.

    Each child starts in a new session (its own process group); stopping sends SIGTERM to the
    group, waits ``grace`` seconds, then SIGKILLs the group and any descendant that left it
    (found with psutil). Use as a context manager: the children are stopped on exit, on errors
    and on Ctrl-C alike.
    """

    def __init__(self, log_dir: Path | None = None) -> None:
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="wp-bench-logs-"))
        self._children: list[_Child] = []

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()

    def spawn(
        self,
        name: str,
        cmd: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        stdout_pipe: bool = False,
        cwd: Path = ROOT,
    ) -> subprocess.Popen[Any]:
        """Start ``cmd`` in its own session; output goes to a log file (or a pipe for stdout)."""
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        log_path = self.log_dir / f"{safe}-{len(self._children)}.log"
        log_file = log_path.open("wb")
        proc: subprocess.Popen[Any] = subprocess.Popen(
            list(cmd),
            cwd=cwd,
            env=dict(env) if env is not None else child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else log_file,
            stderr=log_file,
            start_new_session=True,
            text=stdout_pipe,
        )
        self._children.append(_Child(name, proc, log_path, log_file))
        return proc

    def log_tail(self, proc: subprocess.Popen[Any], limit: int = 3000) -> str:
        """The end of a child's log file."""
        for child in self._children:
            if child.proc is proc and child.log_path is not None:
                with contextlib.suppress(OSError):
                    return child.log_path.read_text(errors="replace")[-limit:]
        return ""

    def stop(self, proc: subprocess.Popen[Any], grace: float = 10.0) -> None:
        """Stop one child and its whole process tree."""
        for child in list(self._children):
            if child.proc is proc:
                _kill_tree(child.proc, grace)
                if child.log_file is not None:
                    child.log_file.close()
                self._children.remove(child)

    def stop_all(self, grace: float = 10.0) -> None:
        """Stop every child still running (newest first)."""
        while self._children:
            self.stop(self._children[-1].proc, grace)


def _kill_tree(proc: subprocess.Popen[Any], grace: float) -> None:
    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    for child in descendants:
        with contextlib.suppress(psutil.Error):
            child.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def run_child_json(
    args: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 600.0
) -> dict[str, Any]:
    """Run ``python ARGS`` in its own session; its last stdout line is the JSON result.

    The child's process group is killed if we are interrupted or it overruns ``timeout``.
    """
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env=dict(env) if env is not None else child_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        _kill_tree(proc, 2.0)
        raise
    lines = [line for line in out.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"benchmark child {' '.join(args)} failed (exit {proc.returncode}):\n{err[-3000:]}"
        )
    result: dict[str, Any] = json.loads(lines[-1])
    return result


# --- process-tree measurements -----------------------------------------------------------------


def tree_processes(pid: int) -> list[psutil.Process]:
    """``pid`` and all its descendants that are alive."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants (children's own time)."""
    total = 0.0
    for proc in tree_processes(pid):
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def tree_rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` and its descendants, summed (bytes)."""
    total = 0
    for proc in tree_processes(pid):
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total


def tree_pss_bytes(pid: int) -> int:
    """Proportional set size of ``pid`` and its descendants (shared pages split), bytes."""
    total = 0
    for proc in tree_processes(pid):
        with contextlib.suppress(psutil.Error, AttributeError):
            total += proc.memory_full_info().pss
    return total


class RssSampler:
    """Samples the RSS of a process tree in a thread; ``peak`` is the highest sum seen."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.peak_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            procs = tree_processes(self.pid)
            rss = 0
            for proc in procs:
                with contextlib.suppress(psutil.Error):
                    rss += proc.memory_info().rss
            if rss > self.peak:
                self.peak, self.peak_processes = rss, len(procs)
            self._stop.wait(self.interval)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# --- servers -----------------------------------------------------------------------------------


@dataclass
class StandIn:
    """The OpenAI stand-in, running as its own process (``python -m waste_pipeline.standin``)."""

    url: str
    proc: subprocess.Popen[Any]
    latency: float

    @property
    def pid(self) -> int:
        """The stand-in's process id."""
        return self.proc.pid

    @classmethod
    def start(cls, supervisor: Supervisor, latency: float) -> StandIn:
        """Start a stand-in with ``latency`` seconds per model call; wait for its URL."""
        cmd = [
            sys.executable,
            "-m",
            "waste_pipeline.standin",
            "--port",
            "0",
            "--latency",
            str(latency),
        ]
        proc = supervisor.spawn(f"standin-{latency}", cmd, stdout_pipe=True)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "listening on" not in line:
            raise RuntimeError(f"the stand-in did not start: {supervisor.log_tail(proc)}")
        url = line.split("listening on", 1)[1].split()[0]
        # Keep draining stdout so the child never blocks on a full pipe.
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        return cls(url=url, proc=proc, latency=latency)

    def stats(self) -> dict[str, Any]:
        """``GET /_standin/stats``."""
        import urllib.request

        base = self.url.rsplit("/v1", 1)[0]
        with urllib.request.urlopen(f"{base}/_standin/stats", timeout=5) as response:  # noqa: S310
            data: dict[str, Any] = json.loads(response.read())
        return data

    def cpu_seconds(self) -> float:
        """CPU seconds the stand-in process has used so far."""
        return tree_cpu_seconds(self.pid)

    def stop(self, supervisor: Supervisor) -> None:
        """Stop the stand-in process."""
        supervisor.stop(self.proc)


@dataclass
class Stack:
    """Embedded PostgreSQL and Redis for the benchmarks, started on first use, in a temp dir."""

    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="wp-bench-")))
    _pg: Any = None
    _redis: Any = None

    @property
    def postgres_url(self) -> str:
        """URL of the embedded PostgreSQL (started now if needed)."""
        if self._pg is None:
            from waste_pipeline.embedded import EmbeddedPostgres

            log("starting embedded PostgreSQL")
            self._pg = EmbeddedPostgres(self.base / "pg").start()
        url: str = self._pg.url
        return url

    @property
    def postgres_pid(self) -> int | None:
        """PID of the postmaster, if started."""
        return self._pg.pid if self._pg is not None else None

    @property
    def redis_url(self) -> str:
        """URL of the embedded Redis (started now if needed)."""
        if self._redis is None:
            from waste_pipeline.embedded import EmbeddedRedis

            log("starting embedded Redis")
            self._redis = EmbeddedRedis(self.base / "redis").start()
        url: str = self._redis.url
        return url

    @property
    def redis_pid(self) -> int | None:
        """PID of redis-server, if started."""
        return self._redis.pid if self._redis is not None else None

    def database_cpu_seconds(self) -> float:
        """CPU seconds used so far by every postgres process of the embedded cluster."""
        if self._pg is None:
            return 0.0
        target = os.path.realpath(self._pg.pgdata)
        total = 0.0
        for proc in psutil.process_iter(["name"]):
            with contextlib.suppress(psutil.Error):
                if proc.info["name"] == "postgres" and proc.cwd() == target:
                    t = proc.cpu_times()
                    total += t.user + t.system
        return total

    def redis_cpu_seconds(self) -> float:
        """CPU seconds used so far by redis-server."""
        pid = self.redis_pid
        return tree_cpu_seconds(pid) if pid is not None else 0.0

    def stop(self) -> None:
        """Stop both servers and remove the temp dir."""
        for server in (self._redis, self._pg):
            if server is not None:
                with contextlib.suppress(Exception):
                    server.stop()
        self._pg = self._redis = None
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def environment() -> Iterator[tuple[Supervisor, Stack]]:
    """A supervisor and a stack, both torn down on exit (errors and Ctrl-C included)."""
    with Stack() as stack, Supervisor() as supervisor:
        yield supervisor, stack


# --- the machine -------------------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _cpu_limit() -> float | None:
    """CPUs allowed by the cgroup (``cpu.max``), if any."""
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            return int(quota) / int(period)
    return None


def machine_info(command: str) -> dict[str, Any]:
    """CPU model, cores, memory, OS, Python, library versions, date and the command run."""
    versions: dict[str, str] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "-"
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "cpu_model": _cpu_model(),
        "logical_cpus": psutil.cpu_count(logical=True),
        "physical_cores": psutil.cpu_count(logical=False),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cgroup_cpu_limit": _cpu_limit(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "python_impl": platform.python_implementation(),
        "versions": versions,
    }
