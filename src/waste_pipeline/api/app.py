"""The HTTP API: FastAPI on the async twin (:class:`~waste_pipeline.AsyncScanPipeline`).

One pipeline per process, opened in the app's lifespan and closed at shutdown. Endpoints:

* ``POST /v1/scans`` — JSON or multipart upload; ``mode=inline`` (200 + result) or
  ``mode=queued`` (202 + ``Location``);
* ``GET /v1/scans/{scan_id}`` — the stored scan;
* ``GET /v1/scans/{scan_id}/events`` — Server-Sent Events per stage;
* ``GET /healthz`` (the process) and ``GET /readyz`` (database, broker, model endpoint).

Every error is ``application/problem+json`` (:mod:`waste_pipeline.api.problems`). Limits
(:class:`ApiLimits`, ``WASTE_PIPELINE_API_*`` variables): request body size, images per scan
(``settings.max_images``), user text length (``models.MAX_USER_TEXT``) and concurrent inline
scans per process. ``docs/api.md`` documents all of it.

Nothing is opened at import time or in :func:`create_app`: the settings are read and the
pipeline, the readiness HTTP client and (with ``embedded_defaults``) the embedded servers are
started by the lifespan.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

import httpx2
from fastapi import FastAPI, Header, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._async.pipeline import AsyncScanPipeline
from ..errors import (
    ConfigurationError,
    ImageTooLargeError,
    ImageTypeError,
    InvalidInputError,
    ScanNotFoundError,
    WastePipelineError,
)
from ..imaging import check_url, sniff_image_type, to_data_url
from ..modelio import STANDIN_KEY
from ..models import MAX_USER_TEXT, ImageInput, ScanRequest, ScanResult, new_scan_id
from ..settings import Settings
from .events import scan_events
from .problems import (
    PROBLEM_MEDIA_TYPE,
    ProblemResponse,
    Redactor,
    RequestTooLargeError,
    ServerBusyError,
    UnsupportedMediaTypeError,
    install_problem_handlers,
    problem,
    problem_for_error,
)
from .schemas import (
    EXAMPLE_ACCEPTED,
    EXAMPLE_EVENTS,
    EXAMPLE_PROBLEMS,
    EXAMPLE_RESULT,
    SCAN_ID_PATTERN,
    Check,
    Health,
    Problem,
    Readiness,
    ScanAccepted,
    ScanCreate,
    ScanForm,
    clean_user_text,
)

__all__ = ["ApiLimits", "ApiState", "BodyLimitMiddleware", "LazyApp", "SubmitScan", "app",
           "create_app"]

log = logging.getLogger(__name__)

API_VERSION = "1.0.0"


# --- configuration -----------------------------------------------------------------------------


class ApiLimits(BaseSettings):
    """Limits and timings of one API process (variables ``WASTE_PIPELINE_API_*``)."""

    model_config = SettingsConfigDict(env_prefix="WASTE_PIPELINE_API_", extra="ignore")

    max_body_bytes: int = Field(
        default=12 * 1024 * 1024,
        ge=1024,
        description="largest request body; larger ones get 413 (by Content-Length, or as soon "
        "as the streamed body passes it)",
    )
    max_inline_scans: int = Field(
        default=16, ge=1, description="inline scans running at once in this process; more: 503"
    )
    retry_after_seconds: int = Field(
        default=2, ge=1, description="Retry-After of a 503 server_busy / transient problem"
    )
    events_max_seconds: float = Field(
        default=300.0, gt=0, description="longest an events stream stays open"
    )
    events_poll_interval: float = Field(
        default=0.1, gt=0, description="first poll interval of an events stream (it backs off)"
    )
    readiness_timeout: float = Field(default=2.0, gt=0, description="per /readyz check")


class SubmitScan(Protocol):
    """Queue a scan; returns its id. Records the row ``pending`` before it enqueues.

    The default is ``tasks.submit_scan_async`` (the Celery app's helper) on a client app for
    ``settings.celery_broker_url``; a failed publish stores the row ``failed``
    (``broker_unavailable``) and raises a transient error.
    """

    async def __call__(
        self,
        pipeline: AsyncScanPipeline,
        images: list[str],
        user_text: str,
        *,
        scan_id: str,
        language: str,
    ) -> str: ...


PUBLISH_RETRY_POLICY: dict[str, float] = {
    "max_retries": 3,
    "interval_start": 0.0,
    "interval_step": 0.5,
    "interval_max": 1.0,
}
"""How the API retries a task publish before answering 503 ``broker_unavailable``."""


class _CelerySubmitter:
    """``tasks.submit_scan_async`` on a Celery client app for these settings (built lazily)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._app: Any = None
        self._submit: Any = None

    def _load(self) -> None:
        try:
            from tasks import submit_scan_async
            from tasks.app import create_app as create_celery_app
        except ImportError as exc:
            raise ConfigurationError(
                "queued mode needs the 'tasks' package (the Celery app) on the import path"
            ) from exc
        app = create_celery_app(self._settings, set_as_current=False)
        # The API never reads Celery results (the scans table is the record): without a result
        # backend a dead Redis fails the publish in ~1 s instead of the backend's ~19 s of
        # reconnects. A publish is retried briefly, then the scan is stored failed and the
        # client gets 503 broker_unavailable with Retry-After.
        app.conf.result_backend = "disabled://"
        app.conf.task_publish_retry_policy = dict(PUBLISH_RETRY_POLICY)
        self._app = app
        self._submit = submit_scan_async

    async def __call__(
        self,
        pipeline: AsyncScanPipeline,
        images: list[str],
        user_text: str,
        *,
        scan_id: str,
        language: str,
    ) -> str:
        if self._submit is None:
            await asyncio.to_thread(self._load)
        result = await self._submit(
            pipeline, images, user_text, language=language, scan_id=scan_id, app=self._app
        )
        return str(result)

    def close(self) -> None:
        """Release the client app's broker connections."""
        if self._app is not None:
            self._app.close()


@dataclass
class ApiState:
    """What the lifespan opened; one per process, shared by every request."""

    settings: Settings
    limits: ApiLimits
    pipeline: AsyncScanPipeline
    http: httpx2.AsyncClient
    inline_slots: asyncio.Semaphore
    redactor: Redactor
    submit: SubmitScan


# --- request body limit ------------------------------------------------------------------------


class _BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with a 413 problem, before the app reads them.

    A ``Content-Length`` over the limit is refused at once (the body is never read); a body
    without one (chunked) is counted while it streams and refused as soon as it passes the
    limit, whatever the endpoint was doing with it.
    """

    def __init__(self, app: ASGIApp, max_bytes: int | Callable[[], int]) -> None:
        self.app = app
        self._max = max_bytes

    def _limit(self) -> int:
        return self._max() if callable(self._max) else self._max

    def _response(self, limit: int) -> ProblemResponse:
        err = RequestTooLargeError(f"the request body is larger than {limit} bytes")
        return problem_for_error(err)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit()
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > limit:
                    await self._response(limit)(scope, receive, send)
                    return
        received = 0
        too_large = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    too_large = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if too_large and not started:
                return  # the app's own answer to the broken read is replaced below
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _BodyTooLarge:
            if started:
                raise
        if too_large and not started:
            await self._response(limit)(scope, receive, send)


# --- OpenAPI helpers ---------------------------------------------------------------------------


def _problem_responses(*codes: str) -> dict[int | str, dict[str, Any]]:
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        example = EXAMPLE_PROBLEMS[code]
        status = int(example["status"])
        entry = out.setdefault(
            status,
            {
                "description": example["title"],
                "content": {
                    PROBLEM_MEDIA_TYPE: {
                        "schema": {"$ref": "#/components/schemas/Problem"},
                        "examples": {},
                    }
                },
            },
        )
        media = entry["content"][PROBLEM_MEDIA_TYPE]
        media["examples"][code] = {"summary": example["title"], "value": example}
        if entry["description"] != example["title"] and example["title"] not in entry[
            "description"
        ]:
            entry["description"] += f" / {example['title']}"
    return out


_MULTIPART_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["file"],
    "properties": {
        "file": {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "minItems": 1,
            "description": "The photo(s): JPEG, PNG, WebP or GIF (checked by content, not by "
            "name or declared type), each at most `image_max_bytes` (10 MiB); repeat the part "
            "for several photos (up to `max_images`).",
        },
        "user_text": {"type": "string", "maxLength": MAX_USER_TEXT},
        "language": {"type": "string", "enum": ["ko", "en"]},
        "mode": {"type": "string", "enum": ["inline", "queued"], "default": "inline"},
        "scan_id": {"type": "string", "pattern": SCAN_ID_PATTERN},
    },
}

_CREATE_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/ScanCreate"},
                "examples": {
                    "url": {
                        "summary": "One photo by URL, answered inline",
                        "value": {
                            "image_url": "https://example.com/photos/bottle.jpg",
                            "user_text": "투명 페트병이에요. 라벨은 뗐어요.",
                            "language": "ko",
                        },
                    },
                    "queued": {
                        "summary": "Queued to the workers, with a client scan id",
                        "value": {
                            "images": ["https://example.com/a.jpg", "https://example.com/b.jpg"],
                            "user_text": "A greasy pizza box",
                            "language": "en",
                            "mode": "queued",
                            "scan_id": "my-scan-0001",
                        },
                    },
                    "data_url": {
                        "summary": "A photo inline as a data: URL",
                        "value": {"image_url": "data:image/jpeg;base64,/9j/4AAQSkZJRgABAQ..."},
                    },
                },
            },
            "multipart/form-data": {
                "schema": _MULTIPART_SCHEMA,
                "encoding": {"file": {"contentType": "image/jpeg, image/png, image/webp, "
                                                     "image/gif"}},
            },
        },
    }
}

ScanIdPath = Annotated[
    str,
    Path(
        pattern=SCAN_ID_PATTERN,
        description="The scan id: 1-64 of A-Z a-z 0-9 _ -, starting with a letter or digit.",
        examples=["3f1c7d0e-8a4b-4f3e-9c1d-2b6a5e7f9a10"],
    ),
]


def _openapi_factory(app: FastAPI) -> Callable[[], dict[str, Any]]:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                tags=app.openapi_tags,
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components["ScanCreate"] = ScanCreate.model_json_schema()
            components["Problem"] = Problem.model_json_schema()
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi


# --- the app -----------------------------------------------------------------------------------

_DESCRIPTION = """\
Photograph an item, learn how to throw it away: **vision → rules → answer → store**.

* `POST /v1/scans` runs a scan **inline** (200 with the result) or **queued** to the Celery
  workers (202 with `Location`).
* `GET /v1/scans/{scan_id}` reads a scan; `GET /v1/scans/{scan_id}/events` follows it as
  Server-Sent Events (`vision`, `rule`, `answer`, then `done` or `failed`).
* Errors are `application/problem+json` with a stable `type`
  (`https://waste-pipeline.dev/problems/<code>`).

Limits: request body 12 MiB, 4 images per scan, 2000 characters of user text, a fixed number of
concurrent inline scans per process (503 `server_busy` with `Retry-After` beyond it).
"""


def create_app(
    settings: Settings | None = None,
    *,
    limits: ApiLimits | None = None,
    embedded_defaults: bool = False,
    submit: SubmitScan | None = None,
) -> FastAPI:
    """Build the API. Nothing is opened here: the lifespan opens the pipeline.

    ``settings`` default to :class:`Settings` read from the environment at startup;
    ``embedded_defaults`` fills missing URLs with the embedded servers and the stand-in
    (:mod:`waste_pipeline.stack`); ``submit`` replaces the Celery submit helper of queued mode.
    """
    api_limits = limits if limits is not None else ApiLimits()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        base = settings if settings is not None else Settings()
        async with contextlib.AsyncExitStack() as exits:
            if embedded_defaults:
                from ..stack import EmbeddedStack

                embedded = EmbeddedStack(base)
                stack = await asyncio.to_thread(embedded.start)
                exits.push_async_callback(asyncio.to_thread, embedded.close)
                resolved = stack.settings
            else:
                resolved = base
            redactor = Redactor(
                [
                    resolved.api_key(),
                    resolved.dsn(),
                    resolved.celery_broker_url,
                    resolved.celery_result_backend,
                ]
            )
            app.state.redactor = redactor
            pipeline = AsyncScanPipeline(resolved)
            await pipeline.open()
            exits.push_async_callback(pipeline.aclose)
            http = httpx2.AsyncClient(timeout=httpx2.Timeout(api_limits.readiness_timeout))
            exits.push_async_callback(http.aclose)
            submitter: SubmitScan
            if submit is None:
                celery_submitter = _CelerySubmitter(resolved)
                exits.callback(celery_submitter.close)
                submitter = celery_submitter
            else:
                submitter = submit
            app.state.api = ApiState(
                settings=resolved,
                limits=api_limits,
                pipeline=pipeline,
                http=http,
                inline_slots=asyncio.Semaphore(api_limits.max_inline_scans),
                redactor=redactor,
                submit=submitter,
            )
            try:
                yield
            finally:
                app.state.api = None

    app = FastAPI(
        title="waste-pipeline",
        version=API_VERSION,
        description=_DESCRIPTION,
        lifespan=lifespan,
        openapi_tags=[
            {"name": "scans", "description": "Submit scans and read their results."},
            {"name": "health", "description": "Liveness and readiness probes."},
        ],
    )
    app.state.redactor = Redactor(
        [settings.api_key(), settings.dsn(), settings.celery_broker_url] if settings else []
    )
    app.state.api = None
    app.openapi = _openapi_factory(app)  # type: ignore[method-assign]
    install_problem_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=api_limits.max_body_bytes)
    _routes(app)
    return app


def _state(request: Request) -> ApiState:
    state = getattr(request.app.state, "api", None)
    if not isinstance(state, ApiState):
        raise ConfigurationError("the service is starting or stopping")
    return state


# --- POST /v1/scans: parsing -------------------------------------------------------------------


@dataclass
class _Parsed:
    images: list[str | ImageInput]
    """URLs stay strings: the pipeline validates them (and records a failed scan)."""
    user_text: str
    language: str
    mode: str
    scan_id: str


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def _parse_json(request: Request, state: ApiState) -> _Parsed:
    body = await request.body()
    try:
        data = ScanCreate.model_validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    urls = data.image_list()
    _check_count(len(urls), state)
    return _Parsed(
        images=list(urls),
        user_text=data.user_text,
        language=data.language or state.settings.language,
        mode=data.mode,
        scan_id=data.scan_id or new_scan_id(),
    )


def _check_count(count: int, state: ApiState) -> None:
    limit = state.settings.max_images
    if count > limit:
        raise InvalidInputError(f"too many images: {count} (at most {limit} per scan)")


async def _parse_multipart(request: Request, state: ApiState) -> _Parsed:
    limit = state.settings.max_images
    try:
        form = await request.form(max_files=limit, max_fields=16, max_part_size=64 * 1024)
    except StarletteHTTPException as exc:
        detail = exc.detail if isinstance(exc.detail, str) else "malformed multipart body"
        if "Too many files" in detail:
            raise InvalidInputError(f"too many images (at most {limit} per scan)") from None
        raise InvalidInputError(f"malformed multipart body: {detail}") from None
    files: list[UploadFile] = []
    fields: dict[str, str] = {}
    for key, value in form.multi_items():
        if key == "file":
            if not isinstance(value, UploadFile):
                raise InvalidInputError("'file' must be a file upload, not a text field")
            files.append(value)
        elif isinstance(value, UploadFile):
            raise InvalidInputError(f"unexpected file part {key[:40]!r}: photos go in 'file'")
        elif key in fields:
            raise InvalidInputError(f"form field {key[:40]!r} is given more than once")
        else:
            fields[key] = value
    try:
        meta = ScanForm.model_validate(fields)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    if not files:
        raise InvalidInputError("a multipart scan needs at least one 'file' part (the photo)")
    _check_count(len(files), state)
    images = [await _read_upload(f, state.settings.image_max_bytes) for f in files]
    return _Parsed(
        images=list(images),
        user_text=meta.user_text,
        language=meta.language or state.settings.language,
        mode=meta.mode,
        scan_id=meta.scan_id or new_scan_id(),
    )


async def _read_upload(upload: UploadFile, limit: int) -> ImageInput:
    """Size and magic-byte checks of one uploaded photo, before anything else sees it."""
    data = await upload.read(limit + 1)
    if not data:
        raise InvalidInputError("the uploaded file is empty")
    if len(data) > limit:
        raise ImageTooLargeError(f"the image is larger than {limit} bytes", max_bytes=limit)
    if sniff_image_type(data) is None:
        raise ImageTypeError(
            "the uploaded file is not a JPEG, PNG, WebP or GIF image (judged by its content)"
        )
    name = clean_user_text(upload.filename or "")[:200] or None
    return ImageInput(data=data, filename=name)


# --- POST /v1/scans: running -------------------------------------------------------------------


async def _inline(state: ApiState, parsed: _Parsed) -> JSONResponse:
    slots = state.inline_slots
    if slots.locked():
        raise ServerBusyError(
            f"all {state.limits.max_inline_scans} inline scan slots of this process are busy; "
            "retry shortly or use mode=queued",
            retry_after=state.limits.retry_after_seconds,
        )
    async with slots:
        try:
            result = await state.pipeline.scan(
                parsed.images,
                parsed.user_text,
                parsed.scan_id,
                language=parsed.language,
            )
        except WastePipelineError as exc:
            return problem_for_error(
                exc,
                scan_id=parsed.scan_id,
                redactor=state.redactor,
                default_retry_after=state.limits.retry_after_seconds,
            )
    return JSONResponse(
        state.redactor.clean(result.model_dump(mode="json")),
        headers={"Content-Location": f"/v1/scans/{result.scan_id}"},
    )


def _precheck(state: ApiState, parsed: _Parsed) -> ScanRequest:
    """The checks a worker would fail first (shape, URL policy without DNS)."""
    request = state.pipeline.request(parsed.images, parsed.user_text, language=parsed.language)
    for image in request.images:
        if image.url is not None and image.url[:5].lower() != "data:":
            check_url(image.url, state.settings.image_allowed_hosts)
    return request


def _as_message_images(images: Sequence[ImageInput]) -> list[str]:
    """Images as JSON-safe strings for the task message (uploads become data: URLs)."""
    out: list[str] = []
    for image in images:
        if image.data is not None:
            media_type = sniff_image_type(image.data) or "application/octet-stream"
            out.append(to_data_url(image.data, media_type))
        else:
            assert image.url is not None
            out.append(image.url)
    return out


async def _queued(state: ApiState, parsed: _Parsed) -> JSONResponse:
    pipeline = state.pipeline
    if not pipeline.store_enabled:
        raise ConfigurationError("queued mode needs a database (WASTE_PIPELINE_DATABASE_URL)")
    inputs: dict[str, Any] = {"user_text": parsed.user_text[:200]}
    try:
        request = _precheck(state, parsed)
        inputs = request.describe()
    except WastePipelineError as exc:
        await pipeline.record_failure(parsed.scan_id, inputs, exc)
        return problem_for_error(exc, scan_id=parsed.scan_id, redactor=state.redactor)
    try:
        await state.submit(
            pipeline,
            _as_message_images(request.images),
            request.user_text,
            scan_id=parsed.scan_id,
            language=request.language,
        )
    except WastePipelineError as exc:
        # The helper stored the row ``failed`` (broker_unavailable) before raising.
        log.warning("queueing scan %s failed: %s", parsed.scan_id, exc.code)
        return problem_for_error(
            exc,
            scan_id=parsed.scan_id,
            redactor=state.redactor,
            default_retry_after=state.limits.retry_after_seconds,
        )
    location = f"/v1/scans/{parsed.scan_id}"
    accepted = ScanAccepted(
        scan_id=parsed.scan_id, location=location, events=f"{location}/events"
    )
    return JSONResponse(accepted.model_dump(), status_code=202, headers={"Location": location})


# --- readiness ---------------------------------------------------------------------------------


async def _timed(name: str, check: Awaitable[tuple[bool, str]], seconds: float) -> Check:
    start = time.perf_counter()
    try:
        async with asyncio.timeout(seconds):
            ok, detail = await check
    except TimeoutError:
        ok, detail = False, f"no answer within {seconds:g} s"
    except Exception as exc:
        ok, detail = False, f"{name} check failed ({type(exc).__name__})"
    return Check(ok=ok, detail=detail, ms=round((time.perf_counter() - start) * 1000, 2))


async def _check_database(state: ApiState) -> tuple[bool, str]:
    if not state.pipeline.store_enabled:
        return True, "storage disabled: nothing to check"
    await state.pipeline.ping()  # the pool the scans use
    return True, "SELECT 1 ok"


async def _check_broker(state: ApiState) -> tuple[bool, str]:
    url = state.settings.celery_broker_url
    if not url:
        return True, "no broker configured: queued mode is off"
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return True, "not a Redis broker: not checked"
    import redis.asyncio as aioredis

    timeout = state.limits.readiness_timeout
    client = aioredis.Redis.from_url(
        url, socket_connect_timeout=timeout, socket_timeout=timeout, retry_on_timeout=False
    )
    try:
        pong = await client.ping()
    finally:
        await client.aclose()
    return bool(pong), "redis PING ok"


async def _check_model(state: ApiState) -> tuple[bool, str]:
    base = (state.settings.openai_base_url or "https://api.openai.com/v1").rstrip("/")
    key = state.settings.api_key() or STANDIN_KEY
    response = await state.http.get(
        f"{base}/models",
        headers={"Authorization": f"Bearer {key}"},
        timeout=state.limits.readiness_timeout,
    )
    status = response.status_code
    if status == 200:
        return True, "GET /models: HTTP 200"
    if status in (401, 403):
        return False, f"GET /models: HTTP {status} (the API key was refused)"
    return False, f"GET /models: HTTP {status}"


# --- routes ------------------------------------------------------------------------------------


def _routes(app: FastAPI) -> None:
    @app.post(
        "/v1/scans",
        tags=["scans"],
        summary="Submit a scan (inline or queued)",
        status_code=200,
        response_model=ScanResult,
        openapi_extra=_CREATE_OPENAPI,
        responses={
            200: {
                "description": "Inline scan finished: the stored result.",
                "content": {"application/json": {"example": EXAMPLE_RESULT}},
            },
            202: {
                "model": ScanAccepted,
                "description": "Queued: the scan is `pending`; follow `Location`.",
                "headers": {"Location": {"schema": {"type": "string"},
                                         "description": "/v1/scans/{scan_id}"}},
                "content": {"application/json": {"example": EXAMPLE_ACCEPTED}},
            },
            **_problem_responses(
                "image_source_forbidden",
                "invalid_input",
                "request_too_large",
                "image_too_large",
                "image_type_unsupported",
                "unsupported_media_type",
                "server_busy",
                "model_unavailable",
            ),
        },
    )
    async def create_scan(request: Request) -> JSONResponse:
        """Submit one scan: a photo (URL, ``data:`` URL or upload) and what the user says.

        **JSON** (`application/json`): `image_url` or `images`, `user_text`, `language`,
        `mode`, `scan_id`. **Multipart** (`multipart/form-data`): one or more `file` parts
        (the photos; type and size are checked by content before anything else) and the same
        fields as form fields.

        `mode=inline` (default) runs the scan in this request and answers **200** with the
        result; a failed scan answers with a problem holding its `scan_id` (its row is
        `failed`). `mode=queued` answers **202** with `Location: /v1/scans/{scan_id}` once
        the scan is recorded `pending` and handed to the workers.

        Request validation errors (shape, limits, unreadable uploads) create no scan. Once a
        request is valid, a scan exists: whatever happens next is stored in its row.
        """
        state = _state(request)
        media = _media_type(request)
        if media == "application/json" or media.endswith("+json"):
            parsed = await _parse_json(request, state)
        elif media == "multipart/form-data":
            parsed = await _parse_multipart(request, state)
        else:
            shown = media[:60] or "no content type"
            raise UnsupportedMediaTypeError(
                f"send application/json or multipart/form-data (got {shown})"
            )
        if parsed.mode == "queued":
            return await _queued(state, parsed)
        return await _inline(state, parsed)

    @app.get(
        "/v1/scans/{scan_id}",
        tags=["scans"],
        summary="Read a scan",
        response_model=ScanResult,
        responses={
            200: {"content": {"application/json": {"example": EXAMPLE_RESULT}}},
            **_problem_responses("scan_not_found", "invalid_input"),
        },
    )
    async def get_scan(request: Request, scan_id: ScanIdPath) -> JSONResponse:
        """The scan's status and, when it ended, its result or its error."""
        state = _state(request)
        result = await state.pipeline.get(scan_id)
        if result is None:
            raise ScanNotFoundError(f"no scan with id {scan_id!r}")
        return JSONResponse(state.redactor.clean(result.model_dump(mode="json")))

    @app.get(
        "/v1/scans/{scan_id}/events",
        tags=["scans"],
        summary="Follow a scan (Server-Sent Events)",
        response_class=StreamingResponse,
        responses={
            200: {
                "description": "An event stream: `vision`, `rule`, `answer`, then `done` or "
                "`failed` (each with JSON data and a fixed id); `timeout` if the stream's "
                "maximum duration passes first. It ends by itself.",
                "content": {"text/event-stream": {"schema": {"type": "string"},
                                                  "example": EXAMPLE_EVENTS}},
            },
            **_problem_responses("scan_not_found", "invalid_input"),
        },
    )
    async def follow_scan(
        request: Request,
        scan_id: ScanIdPath,
        last_event_id: Annotated[
            str | None,
            Header(
                alias="Last-Event-ID",
                description="Resume after this event id (1 vision, 2 rule, 3 answer).",
            ),
        ] = None,
    ) -> StreamingResponse:
        """Server-Sent Events, one per stage, read from the scan's row; ends by itself."""
        state = _state(request)
        if await state.pipeline.get(scan_id) is None:
            raise ScanNotFoundError(f"no scan with id {scan_id!r}")
        resume = int(last_event_id) if last_event_id and last_event_id.isdigit() else 0
        stream = scan_events(
            state.pipeline,
            scan_id,
            poll_interval=state.limits.events_poll_interval,
            max_seconds=state.limits.events_max_seconds,
            last_event_id=min(resume, 4),
            redactor=state.redactor,
            disconnected=request.is_disconnected,
        )
        return StreamingResponse(
            stream,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.get("/healthz", tags=["health"], summary="Liveness", response_model=Health)
    async def healthz() -> Health:
        """The process is up and serving requests (checks nothing else)."""
        return Health()

    @app.get(
        "/readyz",
        tags=["health"],
        summary="Readiness",
        response_model=Readiness,
        responses=_problem_responses("not_ready"),
    )
    async def readyz(request: Request) -> JSONResponse:
        """Database (`SELECT 1`), broker (Redis `PING`) and model endpoint (`GET /models`).

        200 when every check passes, else a 503 `not_ready` problem with the same `checks`.
        """
        state = _state(request)
        timeout = state.limits.readiness_timeout
        names = ("database", "broker", "model")
        results = await asyncio.gather(
            _timed("database", _check_database(state), timeout),
            _timed("broker", _check_broker(state), timeout),
            _timed("model", _check_model(state), timeout),
        )
        checks = dict(zip(names, results, strict=True))
        dumped = {k: v.model_dump() for k, v in checks.items()}
        failing = [k for k, v in checks.items() if not v.ok]
        if failing:
            return problem(
                "not_ready",
                f"not ready: {', '.join(failing)}",
                checks=dumped,
                redactor=state.redactor,
            )
        return JSONResponse(Readiness(status="ready", checks=checks).model_dump())


# --- the lazily built module-level app -----------------------------------------------------------


class LazyApp:
    """An ASGI app that builds the real one on first use, so importing it opens nothing.

    ``uvicorn waste_pipeline.api:app`` serves :func:`create_app` with embedded defaults: a
    missing database, broker or API key is replaced by the embedded servers / the stand-in,
    announced on stderr (``WASTE_PIPELINE_EMBEDDED=0`` turns that off).
    """

    def __init__(self, factory: Callable[[], FastAPI]) -> None:
        self._factory = factory
        self._app: FastAPI | None = None

    @property
    def app(self) -> FastAPI:
        """The real app (built on first access)."""
        if self._app is None:
            self._app = self._factory()
        return self._app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def _default_app() -> FastAPI:
    return create_app(embedded_defaults=True)


app = LazyApp(_default_app)
"""The ASGI app for ``uvicorn waste_pipeline.api:app`` (built on first request/lifespan)."""
