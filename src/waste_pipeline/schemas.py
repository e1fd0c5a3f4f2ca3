"""JSON schemas sent to the model (structured output) and the checks of what comes back.

The vision schema is built from the rule pack: ``category`` and ``tags`` are enums of the
pack's categories and tags, so a model cannot invent either. Output is validated again here,
because a stand-in, a proxy or a model ignoring ``strict`` may still send anything.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from .errors import ModelOutputError
from .models import MAX_STEPS, Answer, Classification

if TYPE_CHECKING:
    from .rules.pack import RulePack

__all__ = [
    "ANSWER_SCHEMA_NAME",
    "VISION_SCHEMA_NAME",
    "answer_schema",
    "parse_answer",
    "parse_classification",
    "vision_schema",
]

VISION_SCHEMA_NAME = "waste_classification"
ANSWER_SCHEMA_NAME = "disposal_answer"

_NULLABLE_STRING: dict[str, Any] = {"anyOf": [{"type": "string"}, {"type": "null"}]}


def vision_schema(pack: RulePack) -> dict[str, Any]:
    """The strict JSON schema of the vision step's output for this pack."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["category", "minor", "tags", "confidence", "description"],
        "properties": {
            "category": {"type": "string", "enum": pack.categories()},
            "minor": _NULLABLE_STRING,
            "tags": {"type": "array", "items": {"type": "string", "enum": sorted(pack.tags())}},
            "confidence": {"type": "number"},
            "description": {"type": "string"},
        },
    }


def answer_schema() -> dict[str, Any]:
    """The strict JSON schema of the answer step's output."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["disposal_steps", "to_fix", "answer"],
        "properties": {
            "disposal_steps": {
                "type": "array",
                "items": {"type": "string"},
                "minItems": 1,
                "maxItems": MAX_STEPS,
            },
            "to_fix": {"type": "array", "items": {"type": "string"}},
            "answer": {"type": "string"},
        },
    }


def _load_object(text: str, what: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        raise ModelOutputError(f"the model's {what} is not valid JSON") from None
    if not isinstance(data, dict):
        raise ModelOutputError(f"the model's {what} is not a JSON object")
    return data


def parse_classification(text: str, pack: RulePack) -> Classification:
    """Validate the vision output against the pack; raise ModelOutputError when it does not fit."""
    data = _load_object(text, "classification")
    category = data.get("category")
    if not isinstance(category, str) or category not in set(pack.categories()):
        raise ModelOutputError(
            "the model's classification names a category outside the rule pack",
            category=str(category)[:80],
        )
    tags = data.get("tags", [])
    known = pack.tags()
    if not isinstance(tags, list) or any(not isinstance(t, str) or t not in known for t in tags):
        raise ModelOutputError("the model's classification has unknown situation tags")
    major, middle = pack.split_category(category)
    minor = data.get("minor")
    try:
        confidence = float(data.get("confidence", 1.0))
        return Classification(
            major=major,
            middle=middle,
            minor=minor if isinstance(minor, str) and minor.strip() else None,
            tags=list(dict.fromkeys(tags)),
            confidence=min(1.0, max(0.0, confidence)),
            description=str(data.get("description", ""))[:500],
        )
    except (ValidationError, TypeError, ValueError):
        raise ModelOutputError("the model's classification does not fit the schema") from None


def parse_answer(text: str) -> Answer:
    """Validate the answer output; raise ModelOutputError when it does not fit."""
    data = _load_object(text, "answer")
    try:
        answer = Answer.model_validate(data)
    except ValidationError:
        raise ModelOutputError("the model's answer does not fit the schema") from None
    if not answer.disposal_steps or not answer.answer.strip():
        raise ModelOutputError("the model's answer is empty")
    return answer
