# GENERATED from src/waste_pipeline/_async/vision.py by `nox -s generate`; do not edit.
"""Classify the item in the scan's images into the rule pack's taxonomy."""

from __future__ import annotations

from collections.abc import Sequence

from ..imaging import PreparedImage
from ..modelio import ModelReply
from ..models import Classification
from ..prompting import vision_content, vision_instructions
from ..rules.pack import RulePack
from ..schemas import VISION_SCHEMA_NAME, parse_classification, vision_schema
from .model import ModelClient

__all__ = ["classify_images"]


def classify_images(
    client: ModelClient,
    pack: RulePack,
    images: Sequence[PreparedImage],
    *,
    user_text: str,
    model: str,
    language: str,
) -> tuple[Classification, ModelReply]:
    """One structured vision call; the category and tags are enums of ``pack``."""
    reply = client.structured(
        model=model,
        instructions=vision_instructions(pack, language),
        content=vision_content(images, user_text),
        schema_name=VISION_SCHEMA_NAME,
        schema=vision_schema(pack),
    )
    return parse_classification(reply.text, pack), reply
