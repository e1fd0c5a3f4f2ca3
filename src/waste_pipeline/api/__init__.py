"""The HTTP API of waste-pipeline (FastAPI on the async twin).

``create_app(settings)`` builds an app; ``app`` is a lazily built one for
``uvicorn waste_pipeline.api:app`` (embedded defaults for whatever the environment leaves out).
Importing this package opens nothing.
"""

from __future__ import annotations

from .app import ApiLimits, LazyApp, create_app
from .app import app as app

__all__ = ["ApiLimits", "LazyApp", "app", "create_app"]
