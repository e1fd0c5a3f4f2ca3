# GENERATED from tests/_async/conftest.py by `nox -s generate`; do not edit.
"""A pipeline on the session's real servers, opened and closed per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from waste_pipeline._sync.pipeline import ScanPipeline
from waste_pipeline.settings import Settings


@pytest.fixture
def pipeline(settings: Settings) -> Iterator[ScanPipeline]:
    """An open pipeline that stores results."""
    with ScanPipeline(settings) as opened:
        yield opened


@pytest.fixture
def bare_pipeline(settings: Settings) -> Iterator[ScanPipeline]:
    """An open pipeline that stores nothing."""
    with ScanPipeline(settings.model_copy(update={"store_results": False})) as opened:
        yield opened
