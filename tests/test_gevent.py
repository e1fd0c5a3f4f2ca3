"""The sync twin under gevent: the generated tests pass again, and blocking calls yield."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "src")])
    return env


def test_generated_sync_tests_pass_under_gevent(postgres_url: str, standin: str) -> None:
    """tests/_sync again, in a process where gevent patched everything first."""
    proc = subprocess.run(
        [sys.executable, "-m", "tests.gevent_run", "tests/_sync", "-q", "-x"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert " passed" in proc.stdout


@pytest.fixture(scope="module")
def slow_standin() -> Iterator[str]:
    """A stand-in whose every model call takes 0.2 s."""
    from waste_pipeline.standin import StandInConfig, StandInServer

    with StandInServer(StandInConfig(latency=0.2)) as server:
        yield server.url


def _run_scans(
    base_url: str, database_url: str, *extra: str, db_sleep: float = 0.2, **env: str
) -> dict[str, object]:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.gevent_scans",
            "--scans",
            "50",
            "--db-sleep",
            str(db_sleep),
            *extra,
        ],
        cwd=ROOT,
        env=_env(OPENAI_BASE_URL=base_url, WASTE_PIPELINE_DATABASE_URL=database_url, **env),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return report


def test_50_concurrent_sync_scans_overlap_under_gevent(
    slow_standin: str, postgres_url: str
) -> None:
    """50 scans x (0.2 s query + 2 model calls of 0.2 s): ~0.6 s if every driver yields.

    Serialised, the same work takes 50 x 0.6 = 30 s; the bound of 3 s fails on any driver
    that blocks the hub (the psycopg C wait function, a blocking DNS lookup, ...).
    """
    report = _run_scans(slow_standin, postgres_url)
    assert report["done"] == 50, report
    assert report["psycopg_blocking_wait"] is False
    assert float(report["elapsed"]) < 3.0, report  # type: ignore[arg-type]


def test_the_harness_catches_a_driver_that_blocks_the_hub(
    slow_standin: str, postgres_url: str
) -> None:
    """Negative control: psycopg's C wait function serialises the queries (50 x 0.1 s)."""
    report = _run_scans(
        slow_standin, postgres_url, "--skip-wait-guard", db_sleep=0.1, PSYCOPG_WAIT_FUNC="wait_c"
    )
    assert report["psycopg_blocking_wait"] is True
    assert float(report["elapsed"]) > 3.0, report  # type: ignore[arg-type]


def test_the_pipeline_refuses_a_blocking_psycopg_under_gevent(
    slow_standin: str, postgres_url: str
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.gevent_scans", "--scans", "1"],
        cwd=ROOT,
        env=_env(
            OPENAI_BASE_URL=slow_standin,
            WASTE_PIPELINE_DATABASE_URL=postgres_url,
            PSYCOPG_WAIT_FUNC="wait_c",
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "imported before gevent" in proc.stderr
