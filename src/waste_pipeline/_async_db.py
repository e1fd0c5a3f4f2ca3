"""The async twin's PostgreSQL driver: asyncpg behind a small, driver-neutral interface.

``_sync_db.PsycopgDatabase`` has the same methods. Both take the same SQL text (PostgreSQL's
native ``$1`` placeholders; psycopg runs it through a raw cursor), return rows as dicts, encode
and decode ``jsonb`` as Python objects, and turn connection problems into
:class:`~waste_pipeline.errors.DatabaseUnavailableError` whose message never holds the DSN.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from .errors import DatabaseUnavailableError

__all__ = ["AsyncpgDatabase"]

_UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InterfaceError,
    asyncpg.AdminShutdownError,
    # After a server restart a pooled connection can fail mid-protocol with
    # "cannot switch to state ..." (seen in tests/test_faults.py): the connection is gone.
    asyncpg.InternalClientError,
)


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(
            typename, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


class AsyncpgDatabase:
    """A pool of asyncpg connections, opened once and shared by every scan of the process."""

    def __init__(
        self, dsn: str, *, min_size: int = 1, max_size: int = 10, timeout: float = 10.0
    ) -> None:
        self._dsn = dsn
        self._min_size = min_size
        self._max_size = max_size
        self._timeout = timeout
        self._pool: asyncpg.Pool | None = None

    @property
    def driver(self) -> str:
        """The name of the underlying driver."""
        return "asyncpg"

    async def open(self) -> None:
        """Create the pool (idempotent)."""
        if self._pool is not None:
            return
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=self._min_size,
                max_size=self._max_size,
                timeout=self._timeout,
                command_timeout=self._timeout * 3,
                init=_init_connection,
            )
        except _UNAVAILABLE as exc:
            raise DatabaseUnavailableError(
                f"cannot connect to PostgreSQL ({type(exc).__name__})"
            ) from None

    async def close(self) -> None:
        """Close every connection of the pool."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        if self._pool is None:
            await self.open()
        assert self._pool is not None
        try:
            async with self._pool.acquire(timeout=self._timeout) as conn:
                yield conn
        except _UNAVAILABLE as exc:
            raise DatabaseUnavailableError(
                f"PostgreSQL connection failed ({type(exc).__name__})"
            ) from None

    async def execute(self, sql: str, *args: Any) -> None:
        """Run one statement."""
        async with self._connection() as conn:
            await conn.execute(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> dict[str, Any] | None:
        """Run a query and return its first row as a dict, or None."""
        async with self._connection() as conn:
            row = await conn.fetchrow(sql, *args)
        return dict(row) if row is not None else None

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        """Run a query and return every row as a dict."""
        async with self._connection() as conn:
            rows = await conn.fetch(sql, *args)
        return [dict(r) for r in rows]

    async def __aenter__(self) -> AsyncpgDatabase:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
