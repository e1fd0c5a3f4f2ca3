"""The error hierarchy: every failure is either permanent or transient.

* :class:`PermanentError` — retrying cannot help (bad image, refused content, output that fails
  validation, bad configuration). A task fails at once and stores the reason.
* :class:`TransientError` — the same call may succeed later (429, 5xx, timeouts, database
  unavailable). A task retries with backoff, then stores the reason.

Every error has a stable ``code`` (used as the ``failed`` row's reason and as the problem type of
the HTTP API) and a message a user can act on. Messages never contain secrets: build them from
our own words and :func:`redact`-ed values only.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

__all__ = [
    "ConfigurationError",
    "ContentRefusedError",
    "DatabaseUnavailableError",
    "ImageError",
    "ImageFetchError",
    "ImageHostUnavailableError",
    "ImageSourceForbiddenError",
    "ImageTooLargeError",
    "ImageTypeError",
    "InvalidInputError",
    "ModelOutputError",
    "ModelRateLimitedError",
    "ModelTimeoutError",
    "ModelUnavailableError",
    "PermanentError",
    "ScanNotFoundError",
    "TransientError",
    "WastePipelineError",
    "redact",
]

_SECRET_PATTERNS = [
    re.compile(r"sk-[A-Za-z0-9_\-]{6,}"),  # OpenAI-style keys
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._\-]+"),
    re.compile(r"(?i)(password=)[^\s&;]+"),
    re.compile(r"(?i)(://[^:/@\s]+:)[^@\s]+(@)"),  # user:password@ in URLs
]


def redact(text: str, *secrets: str | None) -> str:
    """Return ``text`` with known secret shapes and the given secret values masked."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    for pattern in _SECRET_PATTERNS:
        if pattern.groups == 2:
            text = pattern.sub(lambda m: f"{m.group(1)}***{m.group(2)}", text)
        elif pattern.groups == 1:
            text = pattern.sub(lambda m: f"{m.group(1)}***", text)
        else:
            text = pattern.sub("***", text)
    return text


class WastePipelineError(Exception):
    """Base class of every error this library raises on purpose."""

    code: ClassVar[str] = "error"
    transient: ClassVar[bool] = False
    http_status: ClassVar[int] = 500
    scan_id: str | None = None
    """The scan this error ended, when it ended one."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(redact(message))
        self.message = redact(message)
        self.details = {k: v for k, v in details.items() if v is not None}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description, as stored in a ``failed`` row."""
        info: dict[str, Any] = {
            "code": self.code,
            "message": self.message,
            "transient": self.transient,
            "type": type(self).__name__,
        }
        if self.details:
            info["details"] = self.details
        return info


class PermanentError(WastePipelineError):
    """Retrying will not help; the scan fails with this reason."""

    code = "permanent"
    http_status = 422


class TransientError(WastePipelineError):
    """The same call may succeed later; callers may retry with backoff."""

    code = "transient"
    transient = True
    http_status = 503

    def __init__(self, message: str, *, retry_after: float | None = None, **details: Any) -> None:
        super().__init__(message, retry_after=retry_after, **details)
        self.retry_after = retry_after


# --- permanent ---------------------------------------------------------------------------------


class InvalidInputError(PermanentError):
    """The request itself is malformed (bad URL, too many images, text too long, bad scan id)."""

    code = "invalid_input"
    http_status = 422


class ImageError(PermanentError):
    """Base class of problems with one of the scan's images."""

    code = "image_error"
    http_status = 422


class ImageSourceForbiddenError(ImageError):
    """The image URL points at a scheme or address we refuse (loopback, private, metadata...)."""

    code = "image_source_forbidden"


class ImageTooLargeError(ImageError):
    """The image is larger than the configured byte or pixel limit."""

    code = "image_too_large"
    http_status = 413


class ImageTypeError(ImageError):
    """The bytes are not a JPEG, PNG, WebP or GIF image (or cannot be decoded)."""

    code = "image_type_unsupported"
    http_status = 415


class ImageFetchError(ImageError):
    """The image host answered, but not with an image we can use (404, empty body...)."""

    code = "image_fetch_failed"


class ContentRefusedError(PermanentError):
    """The model refused to handle the content."""

    code = "content_refused"


class ModelOutputError(PermanentError):
    """The model's output did not validate against the expected schema."""

    code = "model_output_invalid"
    http_status = 502


class ConfigurationError(PermanentError):
    """The pipeline is misconfigured (bad API key, unknown model, unreadable rule pack)."""

    code = "configuration_error"
    http_status = 500


class ScanNotFoundError(PermanentError):
    """No scan with that id is stored."""

    code = "scan_not_found"
    http_status = 404


# --- transient ---------------------------------------------------------------------------------


class ModelRateLimitedError(TransientError):
    """The model endpoint answered 429; ``retry_after`` says when to come back, if it said."""

    code = "model_rate_limited"
    http_status = 503


class ModelUnavailableError(TransientError):
    """The model endpoint failed (5xx) or the connection broke."""

    code = "model_unavailable"
    http_status = 503


class ModelTimeoutError(TransientError):
    """The model endpoint (or an image host) did not answer in time."""

    code = "timeout"
    http_status = 504


class DatabaseUnavailableError(TransientError):
    """PostgreSQL could not be reached or the connection broke."""

    code = "database_unavailable"
    http_status = 503


class ImageHostUnavailableError(TransientError):
    """An image host timed out, refused or broke the connection, or answered 5xx (or 429)."""

    code = "image_host_unavailable"
    http_status = 503
