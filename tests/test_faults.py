"""Fault suite: model faults, PostgreSQL and Redis restarts, ``kill -9`` of workers.

Real PostgreSQL, Redis, stand-in and ``celery -A tasks worker`` processes; the scenarios live in
:mod:`tests.fault_harness` (also runnable as a soak: ``python -m tests.fault_harness --soak``).
After each fault the run must settle with: as many rows as scans submitted, none left
``pending``/``running``, no duplicate work, and a typed reason on every ``failed`` row. Each
test prints its figures on one line (``pytest -s`` shows them); docs/faults.md records them.

Two of them found product bugs that are now fixed (docs/faults.md): a PostgreSQL outage
longer than the retries (the scan now retries until its outcome can be stored) and asyncpg's
``InternalClientError`` after a restart (now ``DatabaseUnavailableError``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.fault_harness import (
    PERMANENT_FAULTS,
    Outcome,
    run_model_faults,
    run_postgres_restart,
    run_redis_restart,
    run_worker_kill,
)

pytestmark = [pytest.mark.slow, pytest.mark.needs_redis]


def _report(outcome: Outcome) -> None:
    print(f"\n{outcome.line()}")


def test_model_faults_20_percent_mix_gevent(
    redis_url: str, postgres_url: str, tmp_path: Path
) -> None:
    """200 scans on ``-P gevent -c 50`` with 20 % of model calls faulted (all 8 kinds).

    Transient faults (429 with retry-after, 500, 503, reset, timeout) are retried by the SDK
    and by Celery and end ``done``; each permanent fault the stand-in served (refusal,
    malformed JSON, schema violation) ends exactly one scan ``failed`` with its code.
    """
    outcome = run_model_faults(redis_url=redis_url, postgres_url=postgres_url,
                               tmp_path=tmp_path, n=200, rate=0.2)
    _report(outcome)
    expected: dict[str, int] = outcome.extra["expected_permanent"]
    for code in set(PERMANENT_FAULTS.values()):
        got, want = outcome.failed_by_code[code], expected.get(code, 0)
        # One permanent fault served = one scan failed; a little slack for a faulted answer
        # that arrived after the client had given up on it (a slow response under load).
        assert abs(got - want) <= max(2, want // 10), (code, got, want)
    assert outcome.statuses["done"] + outcome.statuses["failed"] == 200
    faults = outcome.extra["faults"]
    assert all(kind in faults for kind in ("429", "500", "503", "reset", "timeout")), faults
    # Some transient faults outlived the SDK's one retry: Celery retried them, and they ended
    # done (no transient code among the failures, checked by allowed_codes).
    assert sum(outcome.retries_by_code.values()) > 0


def test_postgres_restart_gevent(redis_url: str, tmp_path: Path) -> None:
    """PostgreSQL stops for 11 s while 100 scans run on gevent, then starts again.

    11 s is longer than the pool's 10 s wait for a connection: deliveries first wait, then
    fail with ``database_unavailable`` and Celery retries them; every scan ends ``done``.
    """
    outcome = run_postgres_restart(redis_url=redis_url, tmp_path=tmp_path, pool="gevent",
                                   concurrency=50, n=100, down=11.0)
    _report(outcome)


def test_postgres_outage_longer_than_retries_prefork(redis_url: str, tmp_path: Path) -> None:
    """PostgreSQL down 6 s under ``-P prefork -c 2``: longer than the retries (≈ 3 s here).

    asyncpg fails fast while the server is down, so a delivery spends its 5 retries within
    the outage. Nothing may be stranded: each scan ends ``done`` or ``failed`` with
    ``database_unavailable`` once PostgreSQL is back.
    """
    outcome = run_postgres_restart(redis_url=redis_url, tmp_path=tmp_path, pool="prefork",
                                   concurrency=2, n=40, latency=0.05, down=6.0,
                                   require_done=False, timeout=20.0)
    _report(outcome)


def test_redis_restart_durable_gevent(postgres_url: str, tmp_path: Path) -> None:
    """A durable Redis broker (AOF, fsync always) is down 3 s while 100 scans run: all done.

    Queued messages and the ``unacked`` hash survive; deliveries cut off by the connection
    loss come back after the visibility timeout (10 s here) and run again, once.
    """
    outcome = run_redis_restart(postgres_url=postgres_url, tmp_path=tmp_path, pool="gevent",
                                concurrency=50, n=100, durable=True, down=3.0)
    _report(outcome)
    assert outcome.extra["queued_at_stop"] > 0, "the restart came too late to matter"


def test_redis_quick_restart_durable_gevent(postgres_url: str, tmp_path: Path) -> None:
    """The same with Redis back after 0.2 s: all done, some only thanks to the scan ledger.

    On the connection loss Celery cancels the running acks_late tasks
    (``worker_cancel_long_running_tasks_on_connection_loss``), and its gevent pool reports a
    killed greenlet as a success: the message is acknowledged as soon as Redis is back, and
    the scan survives only through the ledger's requeue (``lost_after`` after its last sign
    of life: 15 s here, 960 s by default). See docs/faults.md.
    """
    outcome = run_redis_restart(postgres_url=postgres_url, tmp_path=tmp_path, pool="gevent",
                                concurrency=50, n=100, durable=True, down=0.2, timeout=60.0)
    _report(outcome)


def test_redis_restart_without_persistence_loses_queued_scans(
    postgres_url: str, tmp_path: Path
) -> None:
    """Why the broker must persist: ``EmbeddedRedis`` (no AOF) restarted drops queued scans.

    What still holds: one row per scan, and every lost scan is visible as a ``pending`` or
    ``running`` row (its message is gone, and so is the scan ledger kept in the same Redis).
    """
    outcome = run_redis_restart(postgres_url=postgres_url, tmp_path=tmp_path, pool="gevent",
                                concurrency=50, n=100, durable=False, down=0.5)
    _report(outcome)
    assert sum(outcome.statuses.values()) == 100, "a scan lost its row"
    assert outcome.extra["lost"] > 0, "nothing was queued when Redis restarted"


def test_worker_kill_gevent(redis_url: str, postgres_url: str, tmp_path: Path) -> None:
    """``kill -9`` a ``-P gevent -c 50`` worker mid-run, start another: all done, once.

    The dead worker's deliveries come back after the visibility timeout (10 s here), swept
    by the new worker's unacked sweeper (tasks/worker.py: kombu's gevent consumer never does).
    """
    outcome = run_worker_kill(redis_url=redis_url, postgres_url=postgres_url,
                              tmp_path=tmp_path, pool="gevent", concurrency=50, n=100,
                              visibility_timeout=10.0, timeout=60.0)
    _report(outcome)
    assert outcome.redelivered > 0, "nothing was in flight when the worker was killed"


def test_worker_kill_prefork(redis_url: str, postgres_url: str, tmp_path: Path) -> None:
    """``kill -9`` one pool child, later the whole ``-P prefork -c 2`` worker: all done, once."""
    outcome = run_worker_kill(redis_url=redis_url, postgres_url=postgres_url,
                              tmp_path=tmp_path, pool="prefork", concurrency=2, n=40,
                              latency=0.05, visibility_timeout=10.0, timeout=60.0)
    _report(outcome)
    assert outcome.redelivered > 0, "nothing was in flight when the worker was killed"


async def test_asyncpg_broken_connection_is_database_unavailable() -> None:
    """The driver error seen after a PostgreSQL restart under prefork is a transient error."""
    import asyncpg

    from waste_pipeline._async_db import AsyncpgDatabase
    from waste_pipeline.errors import DatabaseUnavailableError

    class BrokenConnection:
        async def execute(self, *args: Any) -> None:
            raise asyncpg.InternalClientError(
                "cannot switch to state 12; another operation (2) is in progress"
            )

    class Pool:
        @contextlib.asynccontextmanager
        async def acquire(self, **_: Any) -> AsyncIterator[Any]:
            yield BrokenConnection()

    db = AsyncpgDatabase("postgresql://unused@127.0.0.1:1/unused")
    db._pool = Pool()  # type: ignore[assignment]
    with pytest.raises(DatabaseUnavailableError):
        await db.execute("SELECT 1")
