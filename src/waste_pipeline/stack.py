"""Embedded defaults: fill in what the environment leaves out, with real local servers.

Every command (CLI, ``serve``, the ASGI app at ``waste_pipeline.api:app``) runs on a fresh
machine with nothing configured:

=============================  =====================================================
variable missing               default
=============================  =====================================================
``WASTE_PIPELINE_DATABASE_URL``  embedded PostgreSQL in ``settings.home/postgres``
``CELERY_BROKER_URL``            embedded Redis in ``settings.home/redis``
``OPENAI_API_KEY`` and
``OPENAI_BASE_URL``              the local OpenAI stand-in (a test double), announced
=============================  =====================================================

Setting a variable replaces its default. Each default is announced on stderr, the stand-in
plainly, so nobody mistakes its answers for a model's. The embedded servers are shared by every
process using the same home (their ports are kept in ``home/embedded.json``): a server that was
already running is reused and left running; one this stack started is stopped when the stack
closes. The stand-in runs in a thread of this process (or, with ``standin="process"``, as a
child process) and always stops with the stack.

Set ``WASTE_PIPELINE_EMBEDDED=0`` to turn the defaults off (a missing variable then stays
missing, and whatever needs it fails with a clear configuration error).

Usage::

    with EmbeddedStack(Settings()) as stack:
        settings = stack.settings      # every URL filled in
        os.environ.update(stack.env())  # for child processes (workers), if any
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal, TextIO
from urllib.parse import urlsplit

from pydantic import SecretStr

from .settings import Settings

__all__ = [
    "STANDIN_NOTICE",
    "EmbeddedStack",
    "Stack",
    "describe_url",
    "embedded_enabled",
]

STANDIN_NOTICE = (
    "OPENAI_API_KEY is not set: using the local OpenAI stand-in "
    "(a test double — its answers are NOT from a model)"
)
"""The line printed on stderr whenever the stand-in replaces a model."""

StandInMode = Literal["thread", "process"]


def embedded_enabled() -> bool:
    """False when ``WASTE_PIPELINE_EMBEDDED`` is ``0``/``false``/``no``/``off``."""
    value = os.environ.get("WASTE_PIPELINE_EMBEDDED", "1").strip().lower()
    return value not in ("0", "false", "no", "off")


def describe_url(url: str | None) -> str:
    """``scheme://host:port/path`` of a URL without user name or password (safe to print)."""
    if not url:
        return "(not set)"
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(unparseable URL)"
    return f"{parts.scheme}://{host}{port}{parts.path}"


@dataclass
class Stack:
    """The resolved configuration and what was started to provide it."""

    settings: Settings
    notices: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    standin_url: str | None = None

    def env(self) -> dict[str, str]:
        """Environment variables that give a child process the same configuration."""
        out: dict[str, str] = {"WASTE_PIPELINE_HOME": str(self.settings.home)}
        dsn = self.settings.dsn()
        if dsn:
            out["WASTE_PIPELINE_DATABASE_URL"] = dsn
        if self.settings.celery_broker_url:
            out["CELERY_BROKER_URL"] = self.settings.celery_broker_url
        if self.settings.celery_result_backend:
            out["CELERY_RESULT_BACKEND"] = self.settings.celery_result_backend
        if self.settings.openai_base_url:
            out["OPENAI_BASE_URL"] = self.settings.openai_base_url
        key = self.settings.api_key()
        if key:
            out["OPENAI_API_KEY"] = key
        return out


class EmbeddedStack:
    """Context manager: settings with embedded defaults filled in; stops what it started.

    ``need_database``, ``need_broker`` and ``need_model`` say which defaults this command
    needs (``scan --no-store`` needs no database, ``db init`` no model). ``announce`` receives
    each notice (default: print to ``stream``, stderr).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        need_database: bool = True,
        need_broker: bool = True,
        need_model: bool = True,
        standin: StandInMode = "thread",
        standin_latency: float = 0.0,
        stream: TextIO | None = None,
        announce: Callable[[str], None] | None = None,
        enabled: bool | None = None,
    ) -> None:
        self._base = settings if settings is not None else Settings()
        self._need_database = need_database
        self._need_broker = need_broker
        self._need_model = need_model
        self._standin_mode = standin
        self._standin_latency = standin_latency
        self._stream = stream
        self._announce = announce
        self._enabled = embedded_enabled() if enabled is None else enabled
        self._stops: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self.stack: Stack | None = None

    # --- public -------------------------------------------------------------------------------

    def start(self) -> Stack:
        """Resolve the settings, starting what is missing; idempotent."""
        with self._lock:
            if self.stack is not None:
                return self.stack
            try:
                self.stack = self._resolve()
            except BaseException:
                self._stop_all()
                raise
            return self.stack

    def close(self) -> None:
        """Stop everything this stack started (in reverse order); idempotent."""
        with self._lock:
            self._stop_all()
            self.stack = None

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- internals ----------------------------------------------------------------------------

    def _say(self, text: str) -> None:
        if self._announce is not None:
            self._announce(text)
            return
        stream = self._stream or sys.stderr
        print(text, file=stream, flush=True)

    def _stop_all(self) -> None:
        while self._stops:
            stop = self._stops.pop()
            with contextlib.suppress(Exception):
                stop()

    def _resolve(self) -> Stack:
        base = self._base
        update: dict[str, object] = {}
        stack = Stack(settings=base)
        home = Path(base.home).expanduser()
        if not self._enabled:
            return stack
        if self._need_database and base.store_results and not base.dsn():
            url, started = self._postgres(home)
            update["database_url"] = SecretStr(url)
            note = (
                "WASTE_PIPELINE_DATABASE_URL is not set: using the embedded PostgreSQL in "
                f"{home / 'postgres'} ({describe_url(url)})"
            )
            stack.notices.append(note)
            if started:
                stack.started.append("postgres")
            self._say(note)
        if self._need_broker and not base.celery_broker_url:
            url, started = self._redis(home)
            update["celery_broker_url"] = url
            note = (
                "CELERY_BROKER_URL is not set: using the embedded Redis in "
                f"{home / 'redis'} ({describe_url(url)})"
            )
            stack.notices.append(note)
            if started:
                stack.started.append("redis")
            self._say(note)
        if self._need_model and not base.api_key() and not base.openai_base_url:
            self._say(STANDIN_NOTICE)
            stack.notices.append(STANDIN_NOTICE)
            url = self._standin()
            update["openai_base_url"] = url
            stack.standin_url = url
            stack.started.append("stand-in")
        stack.settings = base.model_copy(update=update)
        return stack

    def _postgres(self, home: Path) -> tuple[str, bool]:
        from .embedded import EmbeddedPostgres, ensure_embedded_postgres

        was_running = EmbeddedPostgres(home.absolute() / "postgres").is_running()
        server = ensure_embedded_postgres(home)
        if not was_running:
            self._stops.append(server.stop)
        return server.url, not was_running

    def _redis(self, home: Path) -> tuple[str, bool]:
        from .embedded import EmbeddedRedis, ensure_embedded_redis

        was_running = EmbeddedRedis(home.absolute() / "redis").is_running()
        server = ensure_embedded_redis(home)
        if not was_running:
            self._stops.append(server.stop)
        return server.url, not was_running

    def _standin(self) -> str:
        if self._standin_mode == "process":
            return self._standin_process()
        from .standin import StandInConfig, StandInServer

        server = StandInServer(StandInConfig(latency=self._standin_latency)).start()
        self._stops.append(server.stop)
        return server.url

    def _standin_process(self) -> str:
        proc = subprocess.Popen(
            [sys.executable, "-m", "waste_pipeline.standin", "--host", "127.0.0.1", "--port", "0",
             "--latency", str(self._standin_latency)],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )

        def stop() -> None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            if proc.stdout is not None:
                proc.stdout.close()

        self._stops.append(stop)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        prefix = "stand-in listening on "
        if not line.startswith(prefix):
            raise RuntimeError("the OpenAI stand-in did not start (no 'listening' line)")
        return line[len(prefix) :].split()[0]
