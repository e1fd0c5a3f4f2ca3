# GENERATED from src/waste_pipeline/_async/store.py by `nox -s generate`; do not edit.
"""Durable scan records: one row per scan id, whatever the number of deliveries.

:class:`AsyncScanStore` speaks SQL from :mod:`waste_pipeline.sql` through
:class:`~waste_pipeline._async_db.AsyncpgDatabase` (the sync twin: ``ScanStore`` through
``PsycopgDatabase``). Every write is keyed by the scan id, so a redelivered scan updates its
row and never adds one.
"""

from __future__ import annotations

from typing import Any

from .. import sql
from .._sync_db import PsycopgDatabase
from ..models import Classification, ScanError, ScanResult
from ..settings import Settings
from ..storage import row_to_result

__all__ = ["ScanStore"]


class ScanStore:
    """Reads and writes the ``scans`` table."""

    def __init__(self, db: PsycopgDatabase) -> None:
        self.db = db

    @classmethod
    def from_settings(cls, settings: Settings) -> ScanStore:
        """A store on ``settings.database_url`` (the pool opens on first use)."""
        dsn = settings.dsn()
        if dsn is None:
            from ..errors import ConfigurationError

            raise ConfigurationError("no database configured: set WASTE_PIPELINE_DATABASE_URL")
        return cls(
            PsycopgDatabase(dsn, min_size=settings.db_pool_min, max_size=settings.db_pool_max)
        )

    def create_schema(self) -> None:
        """Create the ``scans`` table and its index; safe to run twice, or at once."""
        self.db.execute(sql.SCHEMA)

    def ensure_pending(self, scan_id: str, inputs: dict[str, Any]) -> None:
        """Record a queued scan as ``pending`` (no-op when the row exists)."""
        self.db.execute(sql.ENSURE_PENDING, scan_id, inputs)

    def begin(self, scan_id: str, inputs: dict[str, Any]) -> ScanResult | None:
        """Mark a delivery as ``running`` and count the attempt.

        Returns the stored result when the scan already ended ``done`` (a redelivery), so the
        caller can skip the work; otherwise None.
        """
        row = self.db.fetchrow(sql.BEGIN, scan_id, inputs)
        if row is not None and row["status"] == "done" and row["result"] is not None:
            return ScanResult.model_validate(row["result"])
        return None

    def save_classification(self, scan_id: str, classification: Classification) -> None:
        """Store the vision stage's output on a running scan."""
        self.db.execute(
            sql.SAVE_CLASSIFICATION, scan_id, classification.model_dump(mode="json")
        )

    def save_rules_key(self, scan_id: str, rules_key: str | None) -> None:
        """Store the rules stage's key on a running scan."""
        self.db.execute(sql.SAVE_RULES, scan_id, rules_key)

    def finish(self, result: ScanResult) -> None:
        """Store a finished scan (status ``done``)."""
        self.db.execute(
            sql.FINISH,
            result.scan_id,
            result.inputs,
            result.classification.model_dump(mode="json") if result.classification else None,
            result.rules_key,
            result.answer.model_dump(mode="json") if result.answer else None,
            result.model_dump(mode="json"),
        )

    def fail(
        self, scan_id: str, inputs: dict[str, Any], error: ScanError, *, final: bool = True
    ) -> None:
        """Store a failure: ``failed`` when final, back to ``pending`` when a retry follows."""
        status = "failed" if final else "pending"
        self.db.execute(sql.FAIL, scan_id, status, inputs, error.model_dump(mode="json"))

    def get(self, scan_id: str) -> ScanResult | None:
        """The stored scan, or None."""
        row = self.db.fetchrow(sql.GET, scan_id)
        return row_to_result(row) if row is not None else None

    def ping(self) -> None:
        """Run ``SELECT 1`` on a pooled connection."""
        self.db.fetchrow("SELECT 1 AS ok")

    def count_by_status(self) -> dict[str, int]:
        """How many scans are in each status."""
        rows = self.db.fetch(sql.COUNT_BY_STATUS)
        return {str(r["status"]): int(r["n"]) for r in rows}

    def close(self) -> None:
        """Close the database pool."""
        self.db.close()
