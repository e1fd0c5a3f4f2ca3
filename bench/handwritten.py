"""The hand-written sync code a user would write without this library: the baseline.

A plain ``openai.OpenAI`` client and a plain ``psycopg`` connection, no framework: the same two
Responses requests the pipeline sends (vision with a strict schema, then the answer grounded in
the looked-up rules) and, when a database is given, the same four writes to the ``scans`` table
(running, classification, rules key, done). What such code typically leaves out, it leaves out
too: no pydantic models, no typed errors, no retries policy of its own, no timings.

The prompts, schemas and per-category rules are computed once at start-up (a user would paste
them in as constants); they are built with :mod:`waste_pipeline.prompting` and
:mod:`waste_pipeline.schemas` only so that the requests are byte-for-byte those of the
pipeline (``tests/test_bench.py`` checks that).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
from openai import OpenAI
from psycopg.types.json import Jsonb

from waste_pipeline import prompting, schemas
from waste_pipeline.rules.pack import RulePack, load_pack

__all__ = ["HandwrittenScanner"]

_CREATE = """
CREATE TABLE IF NOT EXISTS scans (
  id text PRIMARY KEY, status text NOT NULL, inputs jsonb NOT NULL DEFAULT '{}'::jsonb,
  classification jsonb, rules_key text, answer jsonb, result jsonb, error jsonb,
  attempts integer NOT NULL DEFAULT 0, created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(), finished_at timestamptz
)
"""
_BEGIN = """
INSERT INTO scans (id, status, inputs, attempts) VALUES (%s, 'running', %s, 1)
ON CONFLICT (id) DO UPDATE SET status = 'running', attempts = scans.attempts + 1,
  updated_at = now()
"""
_CLASSIFIED = "UPDATE scans SET classification = %s, updated_at = now() WHERE id = %s"
_RULES = "UPDATE scans SET rules_key = %s, updated_at = now() WHERE id = %s"
_DONE = """
UPDATE scans SET status = 'done', answer = %s, result = %s, updated_at = now(),
  finished_at = now() WHERE id = %s
"""


class HandwrittenScanner:
    """One OpenAI client and (optionally) one psycopg connection, made once and reused."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        dsn: str | None = None,
        model: str = "gpt-4.1-mini",
        language: str = "ko",
        pack: RulePack | None = None,
    ) -> None:
        self.client = OpenAI(api_key=api_key, base_url=base_url, max_retries=0, timeout=60.0)
        self.model = model
        self.language = language
        pack = pack or load_pack("default")
        self.vision_instructions = prompting.vision_instructions(pack, language)
        self.vision_format = {
            "format": {
                "type": "json_schema",
                "name": schemas.VISION_SCHEMA_NAME,
                "schema": schemas.vision_schema(pack),
                "strict": True,
            }
        }
        self.answer_instructions = prompting.answer_instructions(language)
        self.answer_format = {
            "format": {
                "type": "json_schema",
                "name": schemas.ANSWER_SCHEMA_NAME,
                "schema": schemas.answer_schema(),
                "strict": True,
            }
        }
        # category label -> (major, middle, rules match, rules as JSON, rules key)
        self.rules: dict[str, tuple[str, str | None, str, dict[str, Any] | None, str | None]] = {}
        for category in pack.categories():
            major, middle = pack.split_category(category)
            found = pack.lookup(major, middle)
            rules = found.rules.model_dump(mode="json") if found.rules else None
            key = found.rules.key if found.rules else None
            self.rules[category] = (major, middle, found.matched, rules, key)
        self.conn: psycopg.Connection[Any] | None = None
        if dsn:
            self.conn = psycopg.connect(dsn, autocommit=True)
            self.conn.execute(_CREATE)

    def close(self) -> None:
        """Close the database connection and the OpenAI client."""
        if self.conn is not None:
            self.conn.close()
        self.client.close()

    # --- the two requests (also used by the test that checks they match the pipeline's) ---

    def vision_request(self, image_url: str, user_text: str) -> dict[str, Any]:
        """Keyword arguments of the vision call."""
        note = f"User note: {user_text}" if user_text else "User note: (none)"
        content = [
            {"type": "input_text", "text": note},
            {"type": "input_image", "image_url": image_url, "detail": "auto"},
        ]
        return {
            "model": self.model,
            "instructions": self.vision_instructions,
            "input": [{"role": "user", "content": content}],
            "text": self.vision_format,
        }

    def answer_request(
        self, classification: dict[str, Any], category: str, user_text: str
    ) -> dict[str, Any]:
        """Keyword arguments of the answer call."""
        _major, _middle, matched, rules, _key = self.rules[category]
        payload = {
            "classification": classification,
            "rules_match": matched,
            "rules": rules,
            "user_note": user_text,
        }
        content = [{"type": "input_text", "text": json.dumps(payload, ensure_ascii=False)}]
        return {
            "model": self.model,
            "instructions": self.answer_instructions,
            "input": [{"role": "user", "content": content}],
            "text": self.answer_format,
        }

    @staticmethod
    def classification(output: dict[str, Any], major: str, middle: str | None) -> dict[str, Any]:
        """The classification as the pipeline records it (same keys, same clean-up)."""
        minor = output.get("minor")
        return {
            "major": major,
            "middle": middle,
            "minor": minor if isinstance(minor, str) and minor.strip() else None,
            "tags": list(dict.fromkeys(output.get("tags", []))),
            "confidence": min(1.0, max(0.0, float(output.get("confidence", 1.0)))),
            "description": str(output.get("description", ""))[:500],
        }

    # --- the scan ---------------------------------------------------------------------------

    def scan(self, image_url: str, user_text: str = "") -> dict[str, Any]:
        """Classify, look up the rules, answer, store; returns the result as a dict."""
        scan_id = str(uuid.uuid4())
        conn = self.conn
        if conn is not None:
            conn.execute(_BEGIN, (scan_id, Jsonb({"user_text": user_text[:200]})))
        vision = self.client.responses.create(**self.vision_request(image_url, user_text))
        output = json.loads(vision.output_text)
        category = output["category"]
        if category not in self.rules:
            raise ValueError(f"unknown category {category!r}")
        major, middle, _matched, _rules, key = self.rules[category]
        classification = self.classification(output, major, middle)
        if conn is not None:
            conn.execute(_CLASSIFIED, (Jsonb(classification), scan_id))
            conn.execute(_RULES, (key, scan_id))
        reply = self.client.responses.create(
            **self.answer_request(classification, category, user_text)
        )
        answer = json.loads(reply.output_text)
        if not answer.get("disposal_steps") or not answer.get("answer"):
            raise ValueError("empty answer")
        result = {
            "scan_id": scan_id,
            "status": "done",
            "classification": classification,
            "rules_key": key,
            "answer": answer,
        }
        if conn is not None:
            conn.execute(_DONE, (Jsonb(answer), Jsonb(result), scan_id))
        return result
