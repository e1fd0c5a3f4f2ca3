"""Problem responses (RFC 9457, ``application/problem+json``) for every error the API returns.

Every error answer of the API has the same shape::

    {"type": "https://waste-pipeline.dev/problems/<code>", "title": "...", "status": 422,
     "detail": "...", "scan_id": "..."}

``<code>`` is stable: for a pipeline error it is the error class's ``code``
(:mod:`waste_pipeline.errors`), for an HTTP-level error one of the API's own codes below.
``scan_id`` is present when a scan was created (its row is ``failed`` or ``pending``).
Extension members: ``errors`` (validation errors: location, message, type; never the input),
``retry_after`` (seconds, also sent as the ``Retry-After`` header) and ``checks`` (``/readyz``).

Nothing reaches a client unredacted: every string member goes through
:func:`waste_pipeline.errors.redact` with the process's secrets (API key, database and broker
URLs and their passwords), and no handler ever puts a traceback into a response.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import (
    ConfigurationError,
    ContentRefusedError,
    DatabaseUnavailableError,
    ImageError,
    ImageFetchError,
    ImageHostUnavailableError,
    ImageSourceForbiddenError,
    ImageTooLargeError,
    ImageTypeError,
    InvalidInputError,
    ModelOutputError,
    ModelRateLimitedError,
    ModelTimeoutError,
    ModelUnavailableError,
    PermanentError,
    ScanNotFoundError,
    TransientError,
    WastePipelineError,
    redact,
)

__all__ = [
    "PROBLEM_BASE",
    "PROBLEM_MEDIA_TYPE",
    "PROBLEM_TYPES",
    "ProblemResponse",
    "ProblemType",
    "Redactor",
    "RequestTooLargeError",
    "ServerBusyError",
    "UnsupportedMediaTypeError",
    "install_problem_handlers",
    "problem",
    "problem_for_error",
    "problem_type_url",
    "validation_problem",
]

log = logging.getLogger(__name__)

PROBLEM_BASE = "https://waste-pipeline.dev/problems/"
"""Every problem ``type`` is this base followed by the stable code."""

PROBLEM_MEDIA_TYPE = "application/problem+json"


# --- API-level errors (the pipeline's own live in waste_pipeline.errors) ------------------------


class RequestTooLargeError(PermanentError):
    """The request body is larger than the API accepts."""

    code = "request_too_large"
    http_status = 413


class UnsupportedMediaTypeError(PermanentError):
    """The request body has a content type the endpoint does not take."""

    code = "unsupported_media_type"
    http_status = 415


class ServerBusyError(TransientError):
    """Every inline-scan slot of this API process is taken; come back shortly."""

    code = "server_busy"
    http_status = 503


# --- the catalogue -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ProblemType:
    """One documented problem type: its code, usual HTTP status, title and meaning."""

    code: str
    status: int
    title: str
    description: str


def _from_error(cls: type[WastePipelineError], title: str) -> ProblemType:
    doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else title
    return ProblemType(cls.code, cls.http_status, title, doc)


PROBLEM_TYPES: dict[str, ProblemType] = {
    p.code: p
    for p in (
        # request and image problems (the scan's fault; retrying the same request cannot help)
        _from_error(InvalidInputError, "Invalid request"),
        _from_error(ImageSourceForbiddenError, "Image source forbidden"),
        _from_error(ImageTooLargeError, "Image too large"),
        _from_error(ImageTypeError, "Unsupported image type"),
        _from_error(ImageFetchError, "Image could not be fetched"),
        _from_error(ImageError, "Image problem"),
        _from_error(ContentRefusedError, "Content refused"),
        _from_error(ModelOutputError, "Invalid model output"),
        _from_error(ConfigurationError, "Service misconfigured"),
        _from_error(ScanNotFoundError, "Scan not found"),
        _from_error(PermanentError, "Scan failed"),
        # transient (retry later; Retry-After when known)
        _from_error(ModelRateLimitedError, "Model rate limited"),
        _from_error(ModelUnavailableError, "Model unavailable"),
        _from_error(ModelTimeoutError, "Timed out"),
        _from_error(DatabaseUnavailableError, "Database unavailable"),
        _from_error(ImageHostUnavailableError, "Image host unavailable"),
        _from_error(TransientError, "Temporary failure"),
        # HTTP level
        _from_error(RequestTooLargeError, "Request too large"),
        _from_error(UnsupportedMediaTypeError, "Unsupported media type"),
        _from_error(ServerBusyError, "Server busy"),
        ProblemType(
            "broker_unavailable",
            503,
            "Queue unavailable",
            "The scan could not be queued: the broker refused or could not be reached "
            "(tasks.scan.BrokerUnavailableError; the row is stored failed).",
        ),
        ProblemType("not_found", 404, "Not found", "No such endpoint."),
        ProblemType(
            "method_not_allowed", 405, "Method not allowed", "The endpoint exists, not this verb."
        ),
        ProblemType("not_ready", 503, "Not ready", "A dependency of the service is not reachable."),
        ProblemType("internal_error", 500, "Internal error", "An unexpected error (a bug)."),
        ProblemType("http_error", 400, "HTTP error", "Any other HTTP-level error."),
        _from_error(WastePipelineError, "Error"),
    )
}
"""Every problem type the API can answer with, by code (documented in ``docs/api.md``)."""

_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
}


def problem_type_url(code: str) -> str:
    """The ``type`` URI of a problem code."""
    return PROBLEM_BASE + code


# --- redaction ---------------------------------------------------------------------------------


class Redactor:
    """Masks this process's secrets (and secret-shaped strings) in text sent to clients."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        values: set[str] = set()
        for secret in secrets:
            if not secret:
                continue
            values.add(secret)
            values.update(_url_secrets(secret))
        # Longest first, so a URL is masked whole before its password alone.
        self.secrets = sorted((v for v in values if len(v) >= 4), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        """``text`` with every known secret masked."""
        return redact(text, *self.secrets)

    def clean(self, value: Any) -> Any:
        """Redact every string inside a JSON-ready value."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, Mapping):
            return {str(k): self.clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.clean(v) for v in value]
        return value


def _url_secrets(value: str) -> list[str]:
    """The password (raw and percent-decoded) of a URL such as a DSN or a broker URL."""
    if "://" not in value:
        return []
    try:
        password = urlsplit(value).password
    except ValueError:
        return []
    if not password:
        return []
    return [password, unquote(password)]


# --- building responses ------------------------------------------------------------------------


class ProblemResponse(JSONResponse):
    """A JSON response with media type ``application/problem+json``."""

    media_type = PROBLEM_MEDIA_TYPE


def problem(
    code: str,
    detail: str,
    *,
    status: int | None = None,
    title: str | None = None,
    scan_id: str | None = None,
    retry_after: float | None = None,
    headers: Mapping[str, str] | None = None,
    redactor: Redactor | None = None,
    **extra: Any,
) -> ProblemResponse:
    """A problem response for ``code`` (status and title default to the catalogue's)."""
    known = PROBLEM_TYPES.get(code)
    status = status or (known.status if known else 500)
    body: dict[str, Any] = {
        "type": problem_type_url(code),
        "title": title or (known.title if known else "Error"),
        "status": status,
        "detail": detail,
    }
    if scan_id is not None:
        body["scan_id"] = scan_id
    out_headers = dict(headers or {})
    if retry_after is not None and math.isfinite(retry_after) and retry_after >= 0:
        seconds = max(1, math.ceil(retry_after))
        body["retry_after"] = seconds
        out_headers["Retry-After"] = str(seconds)
    body.update({k: v for k, v in extra.items() if v is not None})
    clean = (redactor or Redactor()).clean(body)
    return ProblemResponse(clean, status_code=status, headers=out_headers)


def problem_for_error(
    exc: WastePipelineError,
    *,
    scan_id: str | None = None,
    redactor: Redactor | None = None,
    default_retry_after: float | None = None,
) -> ProblemResponse:
    """The problem response of a typed pipeline error (type from ``exc.code``)."""
    retry_after = getattr(exc, "retry_after", None) if exc.transient else None
    if exc.transient and retry_after is None:
        retry_after = default_retry_after
    known = PROBLEM_TYPES.get(exc.code)
    return problem(
        exc.code,
        exc.message,
        status=exc.http_status,
        title=known.title if known else None,
        scan_id=scan_id if scan_id is not None else exc.scan_id,
        retry_after=retry_after,
        redactor=redactor,
    )


def _loc(parts: Sequence[Any]) -> str:
    shown = [str(p)[:60] for p in parts if p not in ("body",)]
    return ".".join(shown)[:200] or "body"


def validation_errors(errors: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Pydantic/FastAPI errors as ``{loc, msg, type}`` (the offending input is never echoed)."""
    out: list[dict[str, Any]] = []
    for err in list(errors)[:20]:
        msg = str(err.get("msg", "invalid value"))
        out.append(
            {
                "loc": _loc(err.get("loc", ())),
                "msg": msg[:300],
                "type": str(err.get("type", "value_error")),
            }
        )
    return out


def validation_problem(
    errors: Sequence[Mapping[str, Any]], *, redactor: Redactor | None = None
) -> ProblemResponse:
    """The 422 ``invalid_input`` problem of request validation errors."""
    items = validation_errors(errors)
    if items:
        first = items[0]
        detail = f"{first['loc']}: {first['msg']}"
        if len(errors) > 1:
            detail += f" (and {len(errors) - 1} more)"
    else:
        detail = "the request is not valid"
    return problem(
        InvalidInputError.code, detail, status=422, errors=items, redactor=redactor
    )


# --- wiring ------------------------------------------------------------------------------------


def _redactor(request: Request) -> Redactor:
    found = getattr(request.app.state, "redactor", None)
    return found if isinstance(found, Redactor) else Redactor()


def install_problem_handlers(app: FastAPI) -> None:
    """Make every error of ``app`` a problem response (the app's ``state.redactor`` masks)."""

    async def on_pipeline_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, WastePipelineError)
        return problem_for_error(exc, redactor=_redactor(request))

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError | ValidationError)
        return validation_problem(exc.errors(), redactor=_redactor(request))

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        detail = exc.detail if isinstance(exc.detail, str) else "HTTP error"
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no endpoint {request.url.path[:200]}"
        elif exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path[:200]}"
        known = PROBLEM_TYPES.get(code)
        return problem(
            code,
            detail,
            status=exc.status_code,
            title=known.title if known and known.status == exc.status_code else None,
            headers=exc.headers,
            redactor=_redactor(request),
        )

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The traceback goes to the server log only (uvicorn logs it again when re-raised).
        log.error("unexpected error in %s %s: %s", request.method, request.url.path,
                  type(exc).__name__)
        return problem(
            "internal_error",
            "an unexpected error occurred; it has been logged",
            redactor=_redactor(request),
        )

    app.add_exception_handler(WastePipelineError, on_pipeline_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(ValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
