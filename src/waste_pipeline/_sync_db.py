"""The sync twin's PostgreSQL driver: psycopg 3 + psycopg_pool behind the same interface.

Same methods and SQL text as ``_async_db.AsyncpgDatabase``. A raw cursor lets psycopg run the
``$1``-style SQL. Under gevent, psycopg must have been imported *after* monkey-patching (it
picks its wait function at import); :meth:`open` refuses to run when it was not, instead of
silently blocking every greenlet of the worker on each query.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import psycopg.waiting
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from ._sync_compat import gevent_active
from .errors import ConfigurationError, DatabaseUnavailableError

__all__ = ["PsycopgDatabase", "uses_blocking_wait"]

_UNAVAILABLE = (OSError, TimeoutError, psycopg.OperationalError, PoolTimeout)


def uses_blocking_wait() -> bool:
    """True when psycopg waits with its C function, which does not yield to gevent."""
    wait_c = getattr(psycopg.waiting, "wait_c", None)
    return wait_c is not None and psycopg.waiting.wait is wait_c


def _reason(exc: BaseException) -> str:
    """The exception's class and SQLSTATE: enough to act on, never the DSN or a password."""
    sqlstate = getattr(exc, "sqlstate", None)
    return f"{type(exc).__name__}, SQLSTATE {sqlstate}" if sqlstate else type(exc).__name__


def _adapt(args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(Jsonb(a) if isinstance(a, dict | list) else a for a in args)


class PsycopgDatabase:
    """A pool of psycopg connections, opened once and shared by every scan of the process."""

    def __init__(
        self, dsn: str, *, min_size: int = 1, max_size: int = 10, timeout: float = 10.0
    ) -> None:
        self._dsn = dsn
        self._min_size = min_size
        self._max_size = max_size
        self._timeout = timeout
        self._pool: ConnectionPool[Any] | None = None

    @property
    def driver(self) -> str:
        """The name of the underlying driver."""
        return "psycopg"

    def open(self) -> None:
        """Create the pool (idempotent)."""
        if self._pool is not None:
            return
        if gevent_active() and uses_blocking_wait():
            raise ConfigurationError(
                "psycopg was imported before gevent monkey-patched the process, so every query "
                "would block all greenlets; patch first (celery -P gevent does) or set "
                "PSYCOPG_WAIT_FUNC=wait_select"
            )
        try:  # fail fast (refused, unknown host, bad credentials) instead of waiting the timeout
            psycopg.connect(self._dsn, connect_timeout=max(1, int(self._timeout))).close()
        except _UNAVAILABLE as exc:
            raise DatabaseUnavailableError(
                f"cannot connect to PostgreSQL ({_reason(exc)})"
            ) from None
        pool: ConnectionPool[Any] = ConnectionPool(
            self._dsn,
            min_size=self._min_size,
            max_size=self._max_size,
            timeout=self._timeout,
            open=False,
            check=ConnectionPool.check_connection,
            kwargs={
                "autocommit": True,
                "row_factory": dict_row,
                "connect_timeout": max(1, int(self._timeout)),
            },
            name="waste_pipeline",
        )
        try:
            pool.open(wait=True, timeout=self._timeout)
        except _UNAVAILABLE as exc:
            pool.close()
            raise DatabaseUnavailableError(
                f"cannot connect to PostgreSQL ({type(exc).__name__})"
            ) from None
        self._pool = pool

    def close(self) -> None:
        """Close every connection of the pool."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        if self._pool is None:
            self.open()
        assert self._pool is not None
        try:
            with self._pool.connection(timeout=self._timeout) as conn:
                yield conn
        except _UNAVAILABLE as exc:
            raise DatabaseUnavailableError(
                f"PostgreSQL connection failed ({type(exc).__name__})"
            ) from None

    def execute(self, sql: str, *args: Any) -> None:
        """Run one statement."""
        with self._connection() as conn, psycopg.RawCursor(conn) as cur:
            cur.execute(sql, _adapt(args))

    def fetchrow(self, sql: str, *args: Any) -> dict[str, Any] | None:
        """Run a query and return its first row as a dict, or None."""
        with self._connection() as conn, psycopg.RawCursor(conn, row_factory=dict_row) as cur:
            cur.execute(sql, _adapt(args))
            row = cur.fetchone()
        return dict(row) if row is not None else None

    def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        """Run a query and return every row as a dict."""
        with self._connection() as conn, psycopg.RawCursor(conn, row_factory=dict_row) as cur:
            cur.execute(sql, _adapt(args))
            rows = cur.fetchall()
        return [dict(r) for r in rows]

    def __enter__(self) -> PsycopgDatabase:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
