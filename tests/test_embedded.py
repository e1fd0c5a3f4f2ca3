"""Real embedded PostgreSQL and Redis servers: start, connect, restart, crash and recover."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator

import asyncpg  # type: ignore[import-untyped]
import psycopg
import pytest
import redis

from waste_pipeline.embedded import (
    EmbeddedPostgres,
    EmbeddedRedis,
    EmbeddedServerError,
    _pgdata_processes,
    ensure_embedded_postgres,
    ensure_embedded_redis,
    find_redis_server,
    free_port,
)


@pytest.fixture(scope="module")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg"))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def rds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    try:
        yield server.start()
    finally:
        server.stop()


def _select_one(url: str) -> int:
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute("SELECT 1").fetchone()
        assert row is not None
        return int(row[0])


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_postgres_psycopg(pg: EmbeddedPostgres) -> None:
    assert pg.is_running()
    assert pg.pid is not None
    assert pg.url == f"postgresql://postgres@127.0.0.1:{pg.port}/waste_pipeline"
    assert _select_one(pg.url) == 1
    with psycopg.connect(pg.url) as conn:
        settings: dict[str, str] = dict(
            conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN "
                "('max_connections', 'fsync', 'listen_addresses')"
            ).fetchall()
        )
        assert settings == {
            "max_connections": "300",
            "fsync": "off",
            "listen_addresses": "127.0.0.1",
        }
        assert conn.execute("SELECT current_database()").fetchone() == ("waste_pipeline",)


def test_postgres_asyncpg(pg: EmbeddedPostgres) -> None:
    async def main() -> int:
        conn = await asyncpg.connect(pg.url, timeout=5)
        try:
            return int(await conn.fetchval("SELECT 1"))
        finally:
            await conn.close()

    assert asyncio.run(main()) == 1


def test_postgres_runs_unprivileged(pg: EmbeddedPostgres) -> None:
    assert pg.pid is not None
    uid = os.stat(f"/proc/{pg.pid}").st_uid
    assert uid != 0  # as root we run it as the embedded_postgres user; else as ourselves
    assert os.getpgid(pg.pid) == pg.pid  # its own process group


def test_postgres_start_is_idempotent_and_reuses(pg: EmbeddedPostgres) -> None:
    pid = pg.pid
    pg.start()
    assert pg.pid == pid
    other = EmbeddedPostgres(pg.data_dir)  # e.g. a second process on the same data dir
    other.start()
    assert (other.pid, other.port) == (pid, pg.port)


def test_postgres_restart_keeps_port_and_data(pg: EmbeddedPostgres) -> None:
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS kept (x int)")
        conn.execute("INSERT INTO kept VALUES (42)")
    port, pid = pg.port, pg.pid
    pg.restart()
    assert pg.port == port
    assert pg.pid != pid
    with psycopg.connect(pg.url) as conn:
        assert conn.execute("SELECT x FROM kept").fetchall() == [(42,)]


def test_postgres_restarts_after_parent_lost_access(pg: EmbeddedPostgres) -> None:
    """pytest resets /tmp/pytest-of-<user> to 0700 at every session start (e.g. a sub-run)."""
    pg.stop()
    for path in (pg.data_dir, pg.data_dir.parent, pg.data_dir.parent.parent):
        path.chmod(0o700)
    pg.start()
    assert _select_one(pg.url) == 1


def test_postgres_kill_then_start_recovers(pg: EmbeddedPostgres) -> None:
    conn = psycopg.connect(pg.url, autocommit=True)
    conn.execute("CREATE TABLE IF NOT EXISTS crash (x int)")
    conn.execute("INSERT INTO crash VALUES (7)")
    port = pg.port
    assert len(_pgdata_processes(pg.pgdata)) > 1  # postmaster + its (setsid'd) children
    pg.kill()
    assert not pg.is_running()
    assert _pgdata_processes(pg.pgdata) == []  # backends and helpers died with it
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    conn.close()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg.url, connect_timeout=2)
    pg.start()
    assert pg.port == port
    with psycopg.connect(pg.url) as conn2:
        assert conn2.execute("SELECT x FROM crash").fetchall() == [(7,)]


def test_postgres_kill_postmaster_only_then_start(pg: EmbeddedPostgres) -> None:
    conn = psycopg.connect(pg.url, autocommit=True)  # a backend outliving its postmaster
    pg.kill(whole_group=False)
    pg.start()
    assert _select_one(pg.url) == 1
    conn.close()


def test_two_postgres_coexist(
    pg: EmbeddedPostgres, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with EmbeddedPostgres(tmp_path_factory.mktemp("pg2"), database="other") as second:
        assert second.port != pg.port
        assert second.url.endswith("/other")
        assert _select_one(second.url) == 1
        assert _select_one(pg.url) == 1
    assert not second.is_running()
    assert _select_one(pg.url) == 1


def test_postgres_long_path_uses_short_socket_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    deep = tmp_path_factory.mktemp("long") / ("d" * 60) / ("e" * 60)
    server = EmbeddedPostgres(deep)
    assert not str(server.socket_dir).startswith(str(deep))
    with server:
        assert _select_one(server.url) == 1
        assert any(p.name.startswith(".s.PGSQL.") for p in server.socket_dir.iterdir())


def test_postgres_port_in_use_is_a_clear_error(
    pg: EmbeddedPostgres, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        server = EmbeddedPostgres(tmp_path_factory.mktemp("busy"), port)
        with pytest.raises(EmbeddedServerError, match="in use"):
            server.start()
    assert not server.is_running()


def test_postgres_start_failure_shows_log_tail(tmp_path_factory: pytest.TempPathFactory) -> None:
    server = EmbeddedPostgres(tmp_path_factory.mktemp("bad"), settings={"shared_buffers": "x"})
    with pytest.raises(EmbeddedServerError, match=r"exited with code[\s\S]*shared_buffers"):
        server.start()
    assert not server.is_running()


def test_redis_binary_found() -> None:
    assert os.access(find_redis_server(), os.X_OK)


def test_redis_ping_set_get_restart(rds: EmbeddedRedis) -> None:
    assert rds.url == f"redis://127.0.0.1:{rds.port}/0"
    client = redis.Redis.from_url(rds.url)
    try:
        assert client.ping()
        client.set("k", "v")
        assert client.get("k") == b"v"
        port, pid = rds.port, rds.pid
        rds.restart()
        assert (rds.port, rds.is_running()) == (port, True)
        assert rds.pid != pid
        assert client.ping()  # redis-py reconnects
        rds.kill()
        assert not rds.is_running()
        rds.start()
        assert rds.port == port
        assert client.ping()
    finally:
        client.close()


def test_home_servers_are_shared(tmp_path_factory: pytest.TempPathFactory) -> None:
    home = tmp_path_factory.mktemp("home")
    pg = ensure_embedded_postgres(home)
    rd = ensure_embedded_redis(home)
    try:
        started = time.monotonic()
        pg_again, rd_again = ensure_embedded_postgres(home), ensure_embedded_redis(home)
        assert time.monotonic() - started < 5
        assert (pg_again.pid, pg_again.port) == (pg.pid, pg.port)
        assert (rd_again.pid, rd_again.port) == (rd.pid, rd.port)
        assert (home / "embedded.json").exists()
        assert _select_one(pg_again.url) == 1
        assert redis.Redis.from_url(rd_again.url).ping()
        pg.stop()
        rd.stop()
        port = pg.port
        assert ensure_embedded_postgres(home).port == port  # same port after a stop
    finally:
        ensure_embedded_postgres(home).stop()
        ensure_embedded_redis(home).stop()
