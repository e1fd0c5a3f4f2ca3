"""Request and response models of the HTTP API, with the examples shown in the OpenAPI docs."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..models import MAX_IMAGES, MAX_USER_TEXT

__all__ = [
    "EXAMPLE_ACCEPTED",
    "EXAMPLE_EVENTS",
    "EXAMPLE_PROBLEMS",
    "EXAMPLE_RESULT",
    "SCAN_ID_PATTERN",
    "Check",
    "Health",
    "Problem",
    "Readiness",
    "ScanAccepted",
    "ScanCreate",
    "ScanForm",
    "clean_user_text",
]

SCAN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
"""What a scan id may look like (as :func:`waste_pipeline.models.validate_scan_id` checks)."""

# C0 controls except tab, newline and carriage return; DEL; C1 controls; lone surrogates;
# and the Unicode "non-characters" that some databases refuse.
_UNSAFE_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def clean_user_text(value: str) -> str:
    """User text as the API passes it on: unsafe control characters and lone surrogates
    removed, surrounding whitespace stripped (tabs and newlines inside are kept)."""
    return _UNSAFE_TEXT.sub("", value).strip()


UserText = Annotated[
    str,
    Field(
        max_length=MAX_USER_TEXT,
        description=(
            f"What the user says about the item (at most {MAX_USER_TEXT} characters). Control "
            "characters other than tab and newline are removed."
        ),
        examples=["투명 페트병이에요. 라벨은 뗐어요."],
    ),
]
ScanIdField = Annotated[
    str | None,
    Field(
        default=None,
        pattern=SCAN_ID_PATTERN,
        description=(
            "Optional client-chosen scan id (1-64 of A-Z a-z 0-9 _ -, starting with a letter or "
            "digit). Submitting the same id again never creates a second scan: a scan that "
            "ended `done` is returned as stored. Default: a new UUID4."
        ),
        examples=["3f1c7d0e-8a4b-4f3e-9c1d-2b6a5e7f9a10"],
    ),
]
Mode = Literal["inline", "queued"]
Language = Literal["ko", "en"]

_MODE_DESCRIPTION = (
    "`inline` runs the scan in this request and answers 200 with the result; `queued` submits "
    "it to the Celery workers and answers 202 at once (follow `Location` or the events)."
)


class ScanCreate(BaseModel):
    """A scan request as JSON: one image (``image_url``) or several (``images``)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "image_url": "https://example.com/photos/bottle.jpg",
                    "user_text": "투명 페트병이에요. 라벨은 뗐어요.",
                    "language": "ko",
                    "mode": "inline",
                },
                {
                    "images": ["data:image/jpeg;base64,/9j/4AAQSkZJRgABAQ..."],
                    "user_text": "A greasy pizza box",
                    "language": "en",
                    "mode": "queued",
                    "scan_id": "my-scan-0001",
                },
            ]
        },
    )

    image_url: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "An `https://`/`http://` URL of a photo on a public host, or a `data:image/...;"
            "base64,...` URL. Give this or `images`, not both."
        ),
    )
    images: list[Annotated[str, Field(min_length=1)]] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_IMAGES,
        description=f"Several photos of the same item (1-{MAX_IMAGES} URLs, same rules).",
    )
    user_text: UserText = ""
    language: Language | None = Field(
        default=None, description="Answer language; default: the service's setting (`ko`)."
    )
    mode: Mode = Field(default="inline", description=_MODE_DESCRIPTION)
    scan_id: ScanIdField = None

    @field_validator("user_text")
    @classmethod
    def _clean(cls, v: str) -> str:
        return clean_user_text(v)

    @model_validator(mode="after")
    def _one_source(self) -> ScanCreate:
        if (self.image_url is None) == (self.images is None):
            raise ValueError("give exactly one of image_url or images")
        return self

    def image_list(self) -> list[str]:
        """The request's image URLs, in order."""
        if self.image_url is not None:
            return [self.image_url]
        return list(self.images or [])


class ScanForm(BaseModel):
    """The form fields of a multipart scan request (the photos come as ``file`` parts)."""

    model_config = ConfigDict(extra="forbid")

    user_text: UserText = ""
    language: Language | None = None
    mode: Mode = "inline"
    scan_id: ScanIdField = None

    @field_validator("user_text")
    @classmethod
    def _clean(cls, v: str) -> str:
        return clean_user_text(v)


EXAMPLE_ACCEPTED: dict[str, Any] = {
    "scan_id": "3f1c7d0e-8a4b-4f3e-9c1d-2b6a5e7f9a10",
    "status": "pending",
    "location": "/v1/scans/3f1c7d0e-8a4b-4f3e-9c1d-2b6a5e7f9a10",
    "events": "/v1/scans/3f1c7d0e-8a4b-4f3e-9c1d-2b6a5e7f9a10/events",
}


class ScanAccepted(BaseModel):
    """The answer to a queued scan: where to look for its result."""

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE_ACCEPTED]})

    scan_id: str
    status: Literal["pending"] = "pending"
    location: str = Field(description="The scan's URL (also in the `Location` header).")
    events: str = Field(description="Its Server-Sent Events stream.")


class Problem(BaseModel):
    """An error (RFC 9457 problem details, ``application/problem+json``)."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "type": "https://waste-pipeline.dev/problems/image_source_forbidden",
                    "title": "Image source forbidden",
                    "status": 422,
                    "detail": "image URL points at a non-public address (reserved range "
                    "127.0.0.0/8); only public http(s) hosts are allowed",
                    "scan_id": "3f1c7d0e-8a4b-4f3e-9c1d-2b6a5e7f9a10",
                }
            ]
        },
    )

    type: str = Field(description="`https://waste-pipeline.dev/problems/<code>`; stable.")
    title: str
    status: int
    detail: str
    scan_id: str | None = Field(
        default=None, description="Present when a scan was created (its row holds the error)."
    )
    retry_after: int | None = Field(
        default=None, description="Seconds to wait before retrying (transient problems)."
    )
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="Validation errors: `loc`, `msg`, `type` (never the input)."
    )


class Health(BaseModel):
    """The process answers."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})

    status: Literal["ok"] = "ok"


class Check(BaseModel):
    """One readiness check."""

    ok: bool
    detail: str
    ms: float = Field(description="How long the check took, in milliseconds.")


class Readiness(BaseModel):
    """Whether the database, the broker and the model endpoint are reachable."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "ready",
                    "checks": {
                        "database": {"ok": True, "detail": "SELECT 1 ok", "ms": 1.2},
                        "broker": {"ok": True, "detail": "redis PING ok", "ms": 0.8},
                        "model": {"ok": True, "detail": "GET /models: HTTP 200", "ms": 3.5},
                    },
                }
            ]
        }
    )

    status: Literal["ready", "not_ready"]
    checks: dict[str, Check]


# --- examples used in the OpenAPI responses -----------------------------------------------------

EXAMPLE_RESULT: dict[str, Any] = {
    "scan_id": "3f1c7d0e-8a4b-4f3e-9c1d-2b6a5e7f9a10",
    "status": "done",
    "inputs": {
        "images": [{"kind": "url", "url": "https://example.com/photos/bottle.jpg"}],
        "user_text": "투명 페트병이에요. 라벨은 뗐어요.",
        "language": "ko",
    },
    "classification": {
        "major": "재활용폐기물",
        "middle": "무색페트병",
        "minor": "생수병",
        "tags": ["라벨제거"],
        "confidence": 0.93,
        "description": "투명한 생수 페트병",
    },
    "rules": {
        "matched": "middle",
        "rules": {
            "key": "recyclable-clear-pet",
            "major": "재활용폐기물",
            "middle": "무색페트병",
            "title": "투명 페트병",
            "steps": ["내용물을 비우고 헹궈요", "라벨을 떼요", "찌그러뜨려 뚜껑을 닫아요"],
            "cautions": [],
            "tag_notes": {},
            "source": "default",
        },
        "requested": {"major": "재활용폐기물", "middle": "무색페트병"},
    },
    "rules_key": "recyclable-clear-pet",
    "answer": {
        "disposal_steps": ["내용물을 비우고 헹궈요", "찌그러뜨려 뚜껑을 닫아요"],
        "to_fix": [],
        "answer": "라벨을 떼셨으니 헹군 뒤 투명 페트병 전용 수거함에 넣으세요.",
    },
    "timings_ms": {"images": 41.2, "vision": 820.5, "rules": 0.1, "answer": 640.3, "store": 2.2},
    "models": {"vision": "gpt-4.1-mini", "answer": "gpt-4.1-mini"},
    "usage": {"input_tokens": 1450, "output_tokens": 210, "total_tokens": 1660},
    "error": None,
    "attempts": 1,
    "created_at": "2025-01-01T09:00:00Z",
    "updated_at": "2025-01-01T09:00:01.6Z",
}


EXAMPLE_PROBLEMS: dict[str, dict[str, Any]] = {
    "invalid_input": {
        "type": "https://waste-pipeline.dev/problems/invalid_input",
        "title": "Invalid request",
        "status": 422,
        "detail": "user_text: String should have at most 2000 characters",
        "errors": [
            {
                "loc": "user_text",
                "msg": "String should have at most 2000 characters",
                "type": "string_too_long",
            }
        ],
    },
    "image_source_forbidden": {
        "type": "https://waste-pipeline.dev/problems/image_source_forbidden",
        "title": "Image source forbidden",
        "status": 422,
        "detail": "image URL points at a local or metadata host name; only public http(s) "
        "hosts are allowed",
        "scan_id": "3f1c7d0e-8a4b-4f3e-9c1d-2b6a5e7f9a10",
    },
    "image_too_large": {
        "type": "https://waste-pipeline.dev/problems/image_too_large",
        "title": "Image too large",
        "status": 413,
        "detail": "the image is larger than 10485760 bytes",
    },
    "request_too_large": {
        "type": "https://waste-pipeline.dev/problems/request_too_large",
        "title": "Request too large",
        "status": 413,
        "detail": "the request body is larger than 12582912 bytes",
    },
    "image_type_unsupported": {
        "type": "https://waste-pipeline.dev/problems/image_type_unsupported",
        "title": "Unsupported image type",
        "status": 415,
        "detail": "the file is not a JPEG, PNG, WebP or GIF image",
    },
    "unsupported_media_type": {
        "type": "https://waste-pipeline.dev/problems/unsupported_media_type",
        "title": "Unsupported media type",
        "status": 415,
        "detail": "send application/json or multipart/form-data (got text/plain)",
    },
    "scan_not_found": {
        "type": "https://waste-pipeline.dev/problems/scan_not_found",
        "title": "Scan not found",
        "status": 404,
        "detail": "no scan with id 'nope'",
    },
    "server_busy": {
        "type": "https://waste-pipeline.dev/problems/server_busy",
        "title": "Server busy",
        "status": 503,
        "detail": "all 16 inline scan slots of this process are busy; retry shortly or use "
        "mode=queued",
        "retry_after": 2,
    },
    "model_unavailable": {
        "type": "https://waste-pipeline.dev/problems/model_unavailable",
        "title": "Model unavailable",
        "status": 503,
        "detail": "the model endpoint failed with HTTP 503",
        "scan_id": "3f1c7d0e-8a4b-4f3e-9c1d-2b6a5e7f9a10",
        "retry_after": 2,
    },
    "not_ready": {
        "type": "https://waste-pipeline.dev/problems/not_ready",
        "title": "Not ready",
        "status": 503,
        "detail": "not ready: broker",
        "checks": {
            "database": {"ok": True, "detail": "SELECT 1 ok", "ms": 1.1},
            "broker": {"ok": False, "detail": "redis PING failed (ConnectionError)", "ms": 2.0},
            "model": {"ok": True, "detail": "GET /models: HTTP 200", "ms": 3.0},
        },
    },
}

EXAMPLE_EVENTS = (
    "id: 1\nevent: vision\ndata: {\"scan_id\": \"3f1c...\", \"classification\": {\"major\": "
    "\"재활용폐기물\", \"middle\": \"무색페트병\", ...}}\n\n"
    "id: 2\nevent: rule\ndata: {\"scan_id\": \"3f1c...\", \"rules_key\": "
    "\"recyclable-clear-pet\", \"matched\": \"middle\"}\n\n"
    "id: 3\nevent: answer\ndata: {\"scan_id\": \"3f1c...\", \"answer\": {\"disposal_steps\": "
    "[...], \"to_fix\": [], \"answer\": \"...\"}}\n\n"
    "id: 4\nevent: done\ndata: {\"scan_id\": \"3f1c...\", \"status\": \"done\", ...}\n\n"
)
