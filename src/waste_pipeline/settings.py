"""Configuration, read from the environment in one place.

Every setting has a default that works on a developer machine; the README's configuration table
lists them. Variables: ``OPENAI_API_KEY``, ``OPENAI_BASE_URL``, ``WASTE_PIPELINE_DATABASE_URL``,
``CELERY_BROKER_URL``, ``CELERY_RESULT_BACKEND`` and ``WASTE_PIPELINE_*`` for the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from .models import MAX_IMAGES

__all__ = ["Settings"]


class Settings(BaseSettings):
    """All configuration of the pipeline, the workers and the service."""

    model_config = SettingsConfigDict(
        env_prefix="WASTE_PIPELINE_", extra="ignore", populate_by_name=True
    )

    # --- model endpoint --------------------------------------------------------------------
    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_API_KEY", "openai_api_key")
    )
    openai_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_BASE_URL", "openai_base_url")
    )
    vision_model: str = "gpt-4.1-mini"
    answer_model: str = "gpt-4.1-mini"
    model_timeout: float = Field(default=60.0, gt=0, description="seconds per model call")
    model_max_retries: int = Field(
        default=2, ge=0, description="SDK-level retries of one model call (429/5xx/timeouts)"
    )
    language: Literal["ko", "en"] = "ko"

    # --- database ---------------------------------------------------------------------------
    database_url: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("WASTE_PIPELINE_DATABASE_URL", "database_url"),
    )
    db_pool_min: int = Field(default=1, ge=0)
    db_pool_max: int = Field(default=10, ge=1)
    store_results: bool = True

    # --- rules ------------------------------------------------------------------------------
    rules_pack: str = Field(
        default="default",
        description="'default' (the shipped pack) or a folder in the project's or eco2 layout",
    )

    # --- images -----------------------------------------------------------------------------
    max_images: int = Field(default=MAX_IMAGES, ge=1, le=MAX_IMAGES)
    image_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    image_max_pixels: int = Field(default=40_000_000, ge=1, description="decompression-bomb guard")
    image_timeout: float = Field(default=10.0, gt=0)
    image_max_redirects: int = Field(default=3, ge=0)
    image_max_side: int = Field(default=1024, ge=64, description="downscale to this longest side")
    image_inline: bool = Field(
        default=True, description="send images as data: URLs (True) or pass URLs through (False)"
    )
    image_allowed_hosts: list[str] = Field(
        default_factory=list,
        description="hosts exempt from the public-address check (e.g. a test server on loopback)",
    )
    scan_concurrency: int = Field(default=8, ge=1, description="CLI: scans run at once")

    # --- celery -----------------------------------------------------------------------------
    celery_broker_url: str | None = Field(
        default=None, validation_alias=AliasChoices("CELERY_BROKER_URL", "celery_broker_url")
    )
    celery_result_backend: str | None = Field(
        default=None,
        validation_alias=AliasChoices("CELERY_RESULT_BACKEND", "celery_result_backend"),
    )

    # --- local state ------------------------------------------------------------------------
    home: Path = Field(
        default=Path.home() / ".waste-pipeline",
        description="where embedded PostgreSQL/Redis keep their data",
    )

    def api_key(self) -> str | None:
        """The API key in clear text, for the SDK only. Never log it."""
        return self.openai_api_key.get_secret_value() if self.openai_api_key else None

    def dsn(self) -> str | None:
        """The database URL in clear text, for the driver only. Never log it."""
        return self.database_url.get_secret_value() if self.database_url else None
