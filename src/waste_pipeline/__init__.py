"""waste-pipeline: photograph an item, learn how to throw it away.

The pipeline (vision -> rules -> answer -> store) is written once, as async code in
``waste_pipeline._async``; ``waste_pipeline._sync`` is generated from it by ``nox -s generate``.
Use :class:`AsyncScanPipeline` under asyncio and :class:`ScanPipeline` everywhere else
(threads, gevent)::

    from waste_pipeline import ScanPipeline

    with ScanPipeline() as pipeline:
        result = pipeline.scan("https://example.com/bottle.jpg", "라벨은 뗐어요")

The twins are imported lazily: ``import waste_pipeline`` loads neither asyncpg nor psycopg, so
a gevent process can import this package and monkey-patch afterwards (psycopg must be imported
after patching).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    ContentRefusedError,
    DatabaseUnavailableError,
    ImageError,
    InvalidInputError,
    ModelOutputError,
    PermanentError,
    TransientError,
    WastePipelineError,
)
from .models import (
    Answer,
    Classification,
    DisposalRules,
    ImageInput,
    RulesLookup,
    ScanRequest,
    ScanResult,
    StageResult,
)
from .settings import Settings

if TYPE_CHECKING:
    from ._async.pipeline import AsyncScanPipeline
    from ._sync.pipeline import ScanPipeline

__all__ = [
    "Answer",
    "AsyncScanPipeline",
    "Classification",
    "ContentRefusedError",
    "DatabaseUnavailableError",
    "DisposalRules",
    "ImageError",
    "ImageInput",
    "InvalidInputError",
    "ModelOutputError",
    "PermanentError",
    "RulesLookup",
    "ScanPipeline",
    "ScanRequest",
    "ScanResult",
    "Settings",
    "StageResult",
    "TransientError",
    "WastePipelineError",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "AsyncScanPipeline":
        from ._async.pipeline import AsyncScanPipeline

        return AsyncScanPipeline
    if name == "ScanPipeline":
        from ._sync.pipeline import ScanPipeline

        return ScanPipeline
    raise AttributeError(f"module 'waste_pipeline' has no attribute {name!r}")
