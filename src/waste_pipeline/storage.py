"""Driver-neutral helpers of the scan store (row <-> :class:`ScanResult`)."""

from __future__ import annotations

from typing import Any

from .models import Answer, Classification, ScanError, ScanResult

__all__ = ["row_to_result"]


def row_to_result(row: dict[str, Any]) -> ScanResult:
    """Build a :class:`ScanResult` from a ``scans`` row (the full result when stored)."""
    if row.get("result") is not None and row["status"] == "done":
        result = ScanResult.model_validate(row["result"])
    else:
        result = ScanResult(
            scan_id=row["id"],
            status=row["status"],
            inputs=row.get("inputs") or {},
            classification=(
                Classification.model_validate(row["classification"])
                if row.get("classification")
                else None
            ),
            rules_key=row.get("rules_key"),
            answer=Answer.model_validate(row["answer"]) if row.get("answer") else None,
            error=ScanError.model_validate(row["error"]) if row.get("error") else None,
        )
    return result.model_copy(
        update={
            "status": row["status"],
            "attempts": row.get("attempts", 0),
            "created_at": row.get("created_at"),
            "updated_at": row.get("updated_at"),
        }
    )
