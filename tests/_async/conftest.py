# async source: fixtures of the twin tests (the sync version is generated).
"""A pipeline on the session's real servers, opened and closed per test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from waste_pipeline._async.pipeline import AsyncScanPipeline
from waste_pipeline.settings import Settings


@pytest.fixture
async def pipeline(settings: Settings) -> AsyncIterator[AsyncScanPipeline]:
    """An open pipeline that stores results."""
    async with AsyncScanPipeline(settings) as opened:
        yield opened


@pytest.fixture
async def bare_pipeline(settings: Settings) -> AsyncIterator[AsyncScanPipeline]:
    """An open pipeline that stores nothing."""
    async with AsyncScanPipeline(settings.model_copy(update={"store_results": False})) as opened:
        yield opened
