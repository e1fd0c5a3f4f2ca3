"""What the model is told: instructions and user content for the vision and answer steps."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import prompts
from .models import Classification, RulesLookup

if TYPE_CHECKING:
    from .imaging import PreparedImage
    from .rules.pack import RulePack

__all__ = ["answer_content", "answer_instructions", "vision_content", "vision_instructions"]

_LANGUAGE_NAMES = {"ko": "Korean", "en": "English"}


def vision_instructions(pack: RulePack, language: str) -> str:
    """The vision step's instructions: the task, the pack's taxonomy and its tags."""
    lines = []
    for category in pack.categories():
        major, middle = pack.split_category(category)
        examples = ", ".join(pack.minors(major, middle)[:8]) if middle else ""
        lines.append(f"- {category}: {examples}" if examples else f"- {category}")
    tags = "\n".join(f"- {tag}: {text}" for tag, text in sorted(pack.tags().items()))
    return prompts.render(
        "vision",
        taxonomy="\n".join(lines),
        tags=tags,
        language_name=_LANGUAGE_NAMES.get(language, "Korean"),
    )


def vision_content(images: Sequence[PreparedImage], user_text: str) -> list[dict[str, Any]]:
    """The user message of the vision step: the user's note, then every image."""
    text = f"User note: {user_text}" if user_text else "User note: (none)"
    content: list[dict[str, Any]] = [{"type": "input_text", "text": text}]
    for image in images:
        url = image.data_url or image.source_url
        content.append({"type": "input_image", "image_url": url, "detail": "auto"})
    return content


def answer_instructions(language: str) -> str:
    """The answer step's instructions in the requested language."""
    return prompts.load("answer_en" if language == "en" else "answer_ko")


def answer_content(
    classification: Classification, lookup: RulesLookup, user_text: str
) -> list[dict[str, Any]]:
    """The user message of the answer step: classification, rules and the user's note, as JSON."""
    payload = {
        "classification": classification.model_dump(mode="json"),
        "rules_match": lookup.matched,
        "rules": lookup.rules.model_dump(mode="json") if lookup.rules else None,
        "user_note": user_text,
    }
    text = json.dumps(payload, ensure_ascii=False)
    return [{"type": "input_text", "text": text}]
