# GENERATED from src/waste_pipeline/_async/answer.py by `nox -s generate`; do not edit.
"""Write the disposal steps, what the user still has to fix, and a short friendly answer."""

from __future__ import annotations

from ..modelio import ModelReply
from ..models import Answer, Classification, RulesLookup
from ..prompting import answer_content, answer_instructions
from ..schemas import ANSWER_SCHEMA_NAME, answer_schema, parse_answer
from .model import ModelClient

__all__ = ["write_answer"]


def write_answer(
    client: ModelClient,
    classification: Classification,
    lookup: RulesLookup,
    *,
    user_text: str,
    model: str,
    language: str,
) -> tuple[Answer, ModelReply]:
    """One structured answer call, grounded in the looked-up rules."""
    reply = client.structured(
        model=model,
        instructions=answer_instructions(language),
        content=answer_content(classification, lookup, user_text),
        schema_name=ANSWER_SCHEMA_NAME,
        schema=answer_schema(),
    )
    return parse_answer(reply.text), reply
