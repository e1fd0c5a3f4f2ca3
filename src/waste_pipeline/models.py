"""Pydantic models: the scan request, each stage's output, and the stored scan result."""

from __future__ import annotations

import base64
import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "MAX_IMAGES",
    "MAX_USER_TEXT",
    "Answer",
    "Classification",
    "DisposalRules",
    "ImageInput",
    "RulesLookup",
    "ScanError",
    "ScanRequest",
    "ScanResult",
    "ScanStatus",
    "StageResult",
    "TokenUsage",
    "clean_text",
    "new_scan_id",
    "validate_scan_id",
]

MAX_IMAGES = 4
"""Most images one scan accepts (the setting ``max_images`` may lower it, never raise it)."""

MAX_USER_TEXT = 2000
"""Longest user text, in characters."""

MAX_STEPS = 10
"""Most disposal steps an answer carries."""

ScanStatus = Literal["pending", "running", "done", "failed"]
Language = Literal["ko", "en"]

_SCAN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_UNSTORABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


def clean_text(value: str) -> str:
    """``value`` without control characters (tabs and newlines stay) and lone surrogates.

    PostgreSQL refuses both in ``text``/``jsonb``; user text goes through this before it is
    stored or sent anywhere.
    """
    return _UNSTORABLE.sub("", value)


def new_scan_id() -> str:
    """A fresh scan id (a UUID4 in canonical form)."""
    return str(uuid.uuid4())


def validate_scan_id(value: str) -> str:
    """Return ``value`` if it is a valid scan id (1-64 of ``A-Za-z0-9_-``); else ValueError."""
    if not isinstance(value, str) or not _SCAN_ID.fullmatch(value):
        raise ValueError("scan id must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-'")
    return value


class ImageInput(BaseModel):
    """One image of a scan: an ``http(s)://`` URL, a ``data:`` URL, or raw bytes."""

    model_config = ConfigDict(frozen=True)

    url: str | None = None
    data: bytes | None = Field(default=None, repr=False)
    filename: str | None = None

    @classmethod
    def of(cls, value: str | bytes | ImageInput) -> ImageInput:
        """Wrap a URL string or raw bytes."""
        if isinstance(value, ImageInput):
            return value
        if isinstance(value, bytes | bytearray):
            return cls(data=bytes(value))
        return cls(url=value)

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if len(v) > 15_000_000:
            raise ValueError("image URL is too long")
        low = v[:16].lower()
        if not (low.startswith("http://") or low.startswith("https://") or low.startswith("data:")):
            raise ValueError("image must be an http(s):// URL or a data: URL")
        if _CONTROL.search(v[:4096]) or any(c.isspace() for c in v[:4096] if c != " "):
            raise ValueError("image URL contains control characters")
        return v

    def model_post_init(self, __context: Any) -> None:
        if (self.url is None) == (self.data is None):
            raise ValueError("give exactly one of url or data")

    def describe(self) -> dict[str, Any]:
        """A small JSON-ready description for storage (never the image bytes)."""
        if self.data is not None:
            return {"kind": "bytes", "size": len(self.data), "filename": self.filename}
        assert self.url is not None
        if self.url[:5].lower() == "data:":
            return {"kind": "data_url", "size": len(self.url)}
        return {"kind": "url", "url": self.url[:2048]}


class ScanRequest(BaseModel):
    """What the user sent: one or more images and, optionally, some text."""

    images: Annotated[list[ImageInput], Field(min_length=1, max_length=MAX_IMAGES)]
    user_text: Annotated[str, Field(max_length=MAX_USER_TEXT)] = ""
    language: Language = "ko"

    @field_validator("user_text")
    @classmethod
    def _clean_text(cls, v: str) -> str:
        # Tabs and newlines are fine; other control characters are stripped.
        return clean_text(v).strip()

    @field_validator("images", mode="before")
    @classmethod
    def _wrap_images(cls, v: Any) -> Any:
        if isinstance(v, str | bytes | ImageInput):
            v = [v]
        if isinstance(v, list):
            return [ImageInput.of(x) if isinstance(x, str | bytes) else x for x in v]
        return v

    def describe(self) -> dict[str, Any]:
        """JSON-ready inputs as stored in the ``scans`` row."""
        return {
            "images": [i.describe() for i in self.images],
            "user_text": self.user_text,
            "language": self.language,
        }


class Classification(BaseModel):
    """The vision step's output: where the item sits in the taxonomy, plus situation tags."""

    major: str
    middle: str | None = None
    minor: str | None = None
    tags: list[str] = Field(default_factory=list)
    confidence: float = Field(default=1.0, ge=0.0, le=1.0)
    description: str = ""


class DisposalRules(BaseModel):
    """Disposal rules for one category of the rule pack."""

    key: str
    major: str
    middle: str | None = None
    title: str = ""
    steps: list[str] = Field(default_factory=list)
    cautions: list[str] = Field(default_factory=list)
    tag_notes: dict[str, str] = Field(default_factory=dict)
    source: str = ""


class RulesLookup(BaseModel):
    """The rules step's output. ``matched`` says how: by middle, by major (fallback), or not."""

    matched: Literal["middle", "major", "none"]
    rules: DisposalRules | None = None
    requested: dict[str, str | None] = Field(default_factory=dict)

    @property
    def key(self) -> str | None:
        """The rules key, or None on a miss."""
        return self.rules.key if self.rules else None


class Answer(BaseModel):
    """The answer step's output."""

    disposal_steps: Annotated[list[str], Field(max_length=MAX_STEPS)]
    to_fix: list[str] = Field(default_factory=list)
    answer: str


class TokenUsage(BaseModel):
    """Tokens the model calls used, summed over the scan."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0

    def add(self, other: TokenUsage) -> TokenUsage:
        """Return the sum of two usages."""
        return TokenUsage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            total_tokens=self.total_tokens + other.total_tokens,
        )


T = TypeVar("T")


class StageResult(BaseModel, Generic[T]):
    """One stage's output with what it cost: tokens, wall time per step, and the model used."""

    value: T
    usage: TokenUsage = Field(default_factory=TokenUsage)
    timings_ms: dict[str, float] = Field(default_factory=dict)
    model: str | None = None


class ScanError(BaseModel):
    """Why a scan failed: the error's stable code and a message a user can act on."""

    code: str
    message: str
    transient: bool = False
    type: str = ""
    details: dict[str, Any] = Field(default_factory=dict)


class ScanResult(BaseModel):
    """Everything about one scan, as returned by ``scan()`` and stored in the ``scans`` table."""

    scan_id: str
    status: ScanStatus
    inputs: dict[str, Any] = Field(default_factory=dict)
    classification: Classification | None = None
    rules: RulesLookup | None = None
    rules_key: str | None = None
    answer: Answer | None = None
    timings_ms: dict[str, float] = Field(default_factory=dict)
    models: dict[str, str] = Field(default_factory=dict)
    usage: TokenUsage = Field(default_factory=TokenUsage)
    error: ScanError | None = None
    attempts: int = 0
    replayed: bool = False
    """True when the scan id had already ended ``done``: the stored result, not run again."""
    created_at: datetime | None = None
    updated_at: datetime | None = None


def decode_data_url(url: str) -> tuple[str, bytes]:
    """Split a ``data:`` URL into (media type, bytes). Raises ValueError when malformed."""
    if not url[:5].lower() == "data:" or "," not in url:
        raise ValueError("malformed data: URL")
    header, _, payload = url[5:].partition(",")
    media_type = header.split(";")[0] or "text/plain"
    if header.endswith(";base64"):
        try:
            return media_type, base64.b64decode(payload, validate=True)
        except (ValueError, TypeError) as exc:
            raise ValueError("data: URL is not valid base64") from exc
    from urllib.parse import unquote_to_bytes

    return media_type, unquote_to_bytes(payload)
