"""The OpenAI stand-in: a local HTTP server that speaks the slice of the OpenAI API we use.

It is a **test double**. Nothing it says comes from a model: structured answers are filled in
from the requested JSON schema (see :mod:`waste_pipeline.standin.schema_fill`), every generated
string starts with ``[stand-in]``, and every response carries the header ``X-Stand-In: true``.

Endpoints: ``POST /v1/responses``, ``POST /v1/chat/completions``, ``GET /v1/models``,
``GET /healthz``, ``GET /_standin/stats`` and ``POST /_standin/reset``.

Faults can be injected at random (``fault_rate`` over ``faults``, from a seeded
``random.Random``) or per request, with a marker in the user's text:

=========================  ===============================================================
``[[standin:429]]``        429 with ``retry-after`` / ``retry-after-ms`` and an error body
``[[standin:500]]``        500 with an OpenAI error body
``[[standin:503]]``        503 with an OpenAI error body
``[[standin:reset]]``      the TCP connection is aborted; no response at all
``[[standin:timeout]]``    the answer comes after ``timeout_seconds``
``[[standin:malformed]]``  200, but the output text is not valid JSON
``[[standin:refusal]]``    200 with a refusal instead of output text
``[[standin:schema]]``     200 with valid JSON that violates the requested schema
``[[standin:KINDxN]]``     KIND for the first N attempts of this exact request body, then success
``[[standin:latency=S]]``  this request's latency is S seconds instead of the base latency
=========================  ===============================================================

Markers are read from user-role messages only, and are removed from the text before enum
matching and hashing, so a request that finally succeeds gets the same answer as one without
the marker.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import Any, Final, Literal

from aiohttp import web

from waste_pipeline.standin.schema_fill import PLACEHOLDER_PREFIX, SchemaFillError, fill, violate

__all__ = [
    "FAULT_KINDS",
    "StandInConfig",
    "StandInServer",
    "create_app",
    "serve",
]

log = logging.getLogger(__name__)

FAULT_KINDS: Final[tuple[str, ...]] = (
    "429",
    "500",
    "503",
    "reset",
    "timeout",
    "malformed",
    "refusal",
    "schema",
)
"""Every fault the stand-in can inject, in the order stats report them."""

_ENDPOINTS: Final[tuple[str, ...]] = ("responses", "chat.completions", "models", "healthz")
_MARKER = re.compile(r"\[\[standin:([^\[\]]*)\]\]", re.IGNORECASE)
_FAULT_MARKER = re.compile(r"^(429|500|503|reset|timeout|malformed|refusal|schema)(?:x(\d+))?$")
_LATENCY_MARKER = re.compile(r"^latency=(\d+(?:\.\d+)?)$")
_OFFLOAD_BYTES = 256 * 1024
"""Request bodies larger than this are parsed and hashed in a worker thread."""
_MAX_REMEMBERED_BODIES = 100_000

PLAIN_TEXT_ANSWER: Final[str] = (
    f"{PLACEHOLDER_PREFIX} This answer comes from the OpenAI stand-in, a test double; "
    "no model was asked."
)
REFUSAL_TEXT: Final[str] = (
    f"{PLACEHOLDER_PREFIX} I'm sorry, I can't help with that. (refusal injected by the stand-in)"
)
MALFORMED_TEXT: Final[str] = '{"stand_in": "malformed output injected by the stand-in", "cut'


@dataclass(frozen=True)
class StandInConfig:
    """Knobs of the stand-in server.

    ``latency`` (seconds) is added to every model call; ``fault_rate`` (0..1) is the chance
    that a model call without a marker gets a random fault from ``faults``, drawn from a
    ``random.Random(seed)`` (one draw per model call, in arrival order; ``/_standin/reset``
    restarts the sequence). ``timeout_seconds`` is how long the ``timeout`` fault stalls;
    ``retry_after`` (seconds) goes into the 429's ``retry-after`` headers. ``models`` is what
    ``GET /v1/models`` lists (any model name is accepted and echoed). ``backlog`` is the listen
    backlog (large, for load tests); ``shutdown_timeout`` is how long ``stop()`` lets in-flight
    requests finish before cancelling them; ``client_max_size`` caps a request body (bytes).
    """

    host: str = "127.0.0.1"
    port: int = 0
    latency: float = 0.0
    fault_rate: float = 0.0
    faults: tuple[str, ...] = FAULT_KINDS
    seed: int = 0
    timeout_seconds: float = 30.0
    retry_after: float = 1.0
    models: tuple[str, ...] = ("gpt-4.1-mini", "gpt-4.1", "gpt-4o-mini", "gpt-4o", "gpt-5-mini")
    backlog: int = 4096
    shutdown_timeout: float = 0.25
    client_max_size: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        unknown = [f for f in self.faults if f not in FAULT_KINDS]
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}; known: {', '.join(FAULT_KINDS)}")
        if not 0.0 <= self.fault_rate <= 1.0:
            raise ValueError("fault_rate must be between 0 and 1")
        if self.fault_rate > 0 and not self.faults:
            raise ValueError("fault_rate > 0 needs at least one fault kind")
        for name in ("latency", "timeout_seconds", "retry_after", "shutdown_timeout"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number >= 0")
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be between 0 and 65535")


# --------------------------------------------------------------------------------------------
# state
# --------------------------------------------------------------------------------------------


class _State:
    """Counters, the fault RNG and per-body attempt counts; touched only on the server loop."""

    def __init__(self, config: StandInConfig) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        self.requests: dict[str, int] = dict.fromkeys((*_ENDPOINTS, "other"), 0)
        self.faults: dict[str, int] = dict.fromkeys(FAULT_KINDS, 0)
        self.answers = 0
        self.rng = random.Random(self.config.seed)
        self.attempts: dict[str, int] = {}

    def snapshot(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "test_double": True,
            "requests": dict(self.requests),
            "faults": dict(self.faults),
            "total": sum(self.requests.values()),
            "faults_total": sum(self.faults.values()),
            "answers": self.answers,
            "config": {
                "latency": cfg.latency,
                "fault_rate": cfg.fault_rate,
                "faults": list(cfg.faults),
                "seed": cfg.seed,
                "timeout_seconds": cfg.timeout_seconds,
            },
        }

    def attempt(self, key: str) -> int:
        """Count one more attempt of the request body ``key``; return the attempt number."""
        n = self.attempts.get(key, 0) + 1
        if n == 1 and len(self.attempts) >= _MAX_REMEMBERED_BODIES:
            self.attempts.pop(next(iter(self.attempts)))
        self.attempts[key] = n
        return n


_STATE: Final = web.AppKey("standin_state", _State)


# --------------------------------------------------------------------------------------------
# request analysis (pure; may run in a worker thread for big bodies)
# --------------------------------------------------------------------------------------------


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


@dataclass
class _Call:
    """What a model call asks for, as far as the stand-in cares."""

    endpoint: Literal["responses", "chat.completions"]
    body: dict[str, Any]
    model: str
    body_key: str
    user_text: str
    user_content: str
    input_tokens: int
    format_type: str = "text"
    schema: dict[str, Any] | None = None
    fault: str | None = None
    fault_times: int | None = None
    latency: float | None = None
    images: list[str] = field(default_factory=list)


def _parse_markers(texts: list[str]) -> tuple[str | None, int | None, float | None]:
    fault: str | None = None
    times: int | None = None
    latency: float | None = None
    for text in texts:
        for m in _MARKER.finditer(text):
            spec = m.group(1).strip().lower()
            fm = _FAULT_MARKER.match(spec)
            lm = _LATENCY_MARKER.match(spec)
            if fm:
                if fault is None:
                    fault = fm.group(1)
                    times = int(fm.group(2)) if fm.group(2) is not None else None
            elif lm:
                latency = float(lm.group(1))
            else:
                raise _BadRequest(
                    f"unknown stand-in marker [[standin:{m.group(1)}]]; known: "
                    f"{', '.join(FAULT_KINDS)} (optionally with xN), latency=SECONDS",
                    code="unknown_standin_marker",
                )
    return fault, times, latency


def _content_parts(content: Any, texts: list[str], images: list[str], chat: bool) -> None:
    """Collect text and image URLs from a message's ``content`` (a string or a list of parts)."""
    if isinstance(content, str):
        texts.append(content)
        return
    if not isinstance(content, list):
        return
    for part in content:
        if not isinstance(part, Mapping):
            continue
        kind = part.get("type")
        if kind in ("input_text", "text", "output_text") and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "input_image":
            url = part.get("image_url") or part.get("file_id") or ""
            images.append(str(url))
        elif kind == "image_url" and chat:
            img = part.get("image_url")
            url = img.get("url") if isinstance(img, Mapping) else img
            images.append(str(url or ""))


def _all_text_len(value: Any) -> int:
    """Characters of text anywhere in ``value`` (image data URLs excluded), for token counts."""
    if isinstance(value, str):
        return 0 if value.startswith("data:") else len(value)
    if isinstance(value, Mapping):
        return sum(_all_text_len(v) for k, v in value.items() if k not in ("type", "role"))
    if isinstance(value, list):
        return sum(_all_text_len(v) for v in value)
    return 0


def _analyze(endpoint: Literal["responses", "chat.completions"], raw: bytes) -> _Call:
    """Parse and check a model-call body; extract user text, markers and the output format."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _BadRequest(f"We could not parse the JSON body of your request. ({exc})") from None
    if not isinstance(body, dict):
        raise _BadRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest("you must provide a model parameter", param="model")
    if body.get("stream"):
        raise _BadRequest(
            "the stand-in does not support streaming; call without stream=True",
            param="stream",
            code="unsupported_value",
        )

    texts: list[str] = []
    images: list[str] = []
    format_type = "text"
    schema: dict[str, Any] | None = None
    if endpoint == "responses":
        items = body.get("input")
        if items is None:
            raise _BadRequest("Missing required parameter: 'input'.", param="input")
        if isinstance(items, str):
            texts.append(items)
        elif isinstance(items, list):
            for item in items:
                if isinstance(item, Mapping) and item.get("role") == "user":
                    _content_parts(item.get("content"), texts, images, chat=False)
        else:
            raise _BadRequest("'input' must be a string or a list of items.", param="input")
        text_cfg = body.get("text")
        fmt = text_cfg.get("format") if isinstance(text_cfg, Mapping) else None
        if isinstance(fmt, Mapping):
            format_type = str(fmt.get("type", "text"))
            if format_type == "json_schema":
                schema = fmt.get("schema")
                if not isinstance(schema, dict) or not isinstance(fmt.get("name"), str):
                    raise _BadRequest(
                        "text.format of type json_schema needs 'name' and 'schema'.",
                        param="text.format",
                    )
    else:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _BadRequest("Missing required parameter: 'messages'.", param="messages")
        for msg in messages:
            if isinstance(msg, Mapping) and msg.get("role") == "user":
                _content_parts(msg.get("content"), texts, images, chat=True)
        rf = body.get("response_format")
        if isinstance(rf, Mapping):
            format_type = str(rf.get("type", "text"))
            if format_type == "json_schema":
                js = rf.get("json_schema")
                schema = js.get("schema") if isinstance(js, Mapping) else None
                if (
                    not isinstance(schema, dict)
                    or not isinstance(js, Mapping)
                    or not isinstance(js.get("name"), str)
                ):
                    raise _BadRequest(
                        "response_format.json_schema needs 'name' and 'schema'.",
                        param="response_format",
                    )
    if format_type not in ("text", "json_schema", "json_object"):
        raise _BadRequest(
            f"the stand-in does not support output format {format_type!r}",
            param="response_format" if endpoint == "chat.completions" else "text.format",
            code="unsupported_value",
        )

    fault, times, latency = _parse_markers(texts)
    # Markers go, and whitespace is normalised, so "x [[standin:429x2]]" answers like "x".
    clean = [" ".join(_MARKER.sub(" ", t).split()) for t in texts]
    user_text = "\n".join(clean)
    user_content = user_text + "\n" + "\n".join(images)
    input_tokens = max(
        1,
        (
            _all_text_len(body.get("input") or body.get("messages"))
            + _all_text_len(body.get("instructions"))
        )
        // 4
        + 85 * len(images),
    )
    return _Call(
        endpoint=endpoint,
        body=body,
        model=model,
        body_key=hashlib.sha256(raw).hexdigest(),
        user_text=user_text,
        user_content=user_content,
        input_tokens=input_tokens,
        format_type=format_type,
        schema=schema,
        fault=fault,
        fault_times=times,
        latency=latency,
        images=images,
    )


def _answer_text(call: _Call, fault: str | None) -> str:
    """The output text for a successful (or ``malformed`` / ``schema``-faulted) call."""
    if fault == "malformed":
        return MALFORMED_TEXT
    if call.format_type == "json_schema" and call.schema is not None:
        try:
            instance = fill(call.schema, user_text=call.user_text, user_content=call.user_content)
        except SchemaFillError as exc:
            raise _BadRequest(
                f"Invalid schema for response_format: {exc}", param="schema"
            ) from None
        if fault == "schema":
            instance = violate(call.schema, instance)
        return json.dumps(instance, ensure_ascii=False)
    if call.format_type == "json_object":
        obj: dict[str, Any] = {"stand_in": True, "answer": PLAIN_TEXT_ANSWER}
        if fault == "schema":
            return json.dumps(["stand-in schema violation"])
        return json.dumps(obj, ensure_ascii=False)
    return PLAIN_TEXT_ANSWER


# --------------------------------------------------------------------------------------------
# OpenAI-shaped payloads
# --------------------------------------------------------------------------------------------


def _error_body(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    ).encode()


def _error_response(
    status: int,
    message: str,
    type_: str,
    code: str | None,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    return web.Response(
        status=status,
        body=_error_body(message, type_, code, param),
        content_type="application/json",
        headers=dict(headers or {}),
    )


def _json_response(payload: Mapping[str, Any], processing_ms: int) -> web.Response:
    return web.Response(
        body=json.dumps(payload, ensure_ascii=False).encode(),
        content_type="application/json",
        headers={"openai-processing-ms": str(processing_ms)},
    )


def _responses_payload(call: _Call, text: str | None, refusal: str | None) -> dict[str, Any]:
    body = call.body
    now = int(time.time())
    if refusal is not None:
        content: dict[str, Any] = {"type": "refusal", "refusal": refusal}
        out_len = len(refusal)
    else:
        assert text is not None
        content = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        out_len = len(text)
    output_tokens = max(1, out_len // 4)
    text_cfg = body.get("text") if isinstance(body.get("text"), Mapping) else None
    return {
        "id": f"resp_{uuid.uuid4().hex}",
        "object": "response",
        "created_at": now,
        "status": "completed",
        "completed_at": now,
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": body.get("max_tool_calls"),
        "model": call.model,
        "output": [
            {
                "type": "message",
                "id": f"msg_{uuid.uuid4().hex}",
                "status": "completed",
                "role": "assistant",
                "content": [content],
            }
        ],
        "parallel_tool_calls": bool(body.get("parallel_tool_calls", True)),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": bool(body.get("store", True)),
        "temperature": body.get("temperature", 1.0),
        "text": text_cfg or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation", "disabled"),
        "usage": {
            "input_tokens": call.input_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": call.input_tokens + output_tokens,
        },
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }


def _chat_payload(call: _Call, text: str | None, refusal: str | None) -> dict[str, Any]:
    out_len = len(refusal if refusal is not None else text or "")
    completion_tokens = max(1, out_len // 4)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": call.model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None if refusal is not None else text,
                    "refusal": refusal,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": call.input_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": call.input_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": "fp_stand_in",
    }


# --------------------------------------------------------------------------------------------
# handlers
# --------------------------------------------------------------------------------------------


def _choose_fault(state: _State, call: _Call) -> str | None:
    """Decide this call's fault: its marker (honouring xN), else a random draw, else none."""
    cfg = state.config
    drawn: str | None = None
    if cfg.fault_rate > 0 and cfg.faults:
        roll = state.rng.random()
        kind = state.rng.choice(cfg.faults)
        if roll < cfg.fault_rate:
            drawn = kind
    if call.fault is not None:
        if call.fault_times is None:
            return call.fault
        attempt = state.attempt(call.body_key)
        return call.fault if attempt <= call.fault_times else None
    return drawn


async def _model_call(
    request: web.Request, endpoint: Literal["responses", "chat.completions"]
) -> web.StreamResponse:
    state = request.app[_STATE]
    cfg = state.config
    started = time.monotonic()
    raw = await request.read()
    try:
        if len(raw) > _OFFLOAD_BYTES:
            call = await asyncio.to_thread(_analyze, endpoint, raw)
        else:
            call = _analyze(endpoint, raw)
    except _BadRequest as exc:
        return _error_response(400, exc.message, "invalid_request_error", exc.code, exc.param)

    fault = _choose_fault(state, call)
    if fault is not None:
        state.faults[fault] += 1
        log.debug("stand-in: injecting fault %s into %s", fault, endpoint)

    latency = cfg.latency if call.latency is None else call.latency
    if latency > 0:
        await asyncio.sleep(latency)

    if fault == "reset":
        transport = request.transport
        if transport is not None:
            transport.abort()
        # With handler_cancellation the loss cancels this task; without it, nothing is sent.
        raise asyncio.CancelledError
    if fault == "429":
        ra = cfg.retry_after
        return _error_response(
            429,
            f"Rate limit reached for {call.model} (injected by the stand-in). "
            f"Please try again in {ra:g}s.",
            "requests",
            "rate_limit_exceeded",
            headers={
                "retry-after": str(max(0, math.ceil(ra))),
                "retry-after-ms": str(int(ra * 1000)),
                "x-ratelimit-remaining-requests": "0",
            },
        )
    if fault == "500":
        return _error_response(
            500,
            "The server had an error while processing your request. Sorry about that! "
            "(injected by the stand-in)",
            "server_error",
            None,
        )
    if fault == "503":
        return _error_response(
            503,
            "The engine is currently overloaded, please try again later. "
            "(injected by the stand-in)",
            "server_error",
            "service_unavailable",
        )
    if fault == "timeout":
        await asyncio.sleep(cfg.timeout_seconds)

    try:
        if fault == "refusal":
            text, refusal = None, REFUSAL_TEXT
        else:
            text, refusal = _answer_text(call, fault), None
    except _BadRequest as exc:
        return _error_response(400, exc.message, "invalid_request_error", exc.code, exc.param)
    payload = (
        _responses_payload(call, text, refusal)
        if endpoint == "responses"
        else _chat_payload(call, text, refusal)
    )
    state.answers += 1
    return _json_response(payload, int((time.monotonic() - started) * 1000))


async def _responses(request: web.Request) -> web.StreamResponse:
    return await _model_call(request, "responses")


async def _chat_completions(request: web.Request) -> web.StreamResponse:
    return await _model_call(request, "chat.completions")


async def _models(request: web.Request) -> web.StreamResponse:
    cfg = request.app[_STATE].config
    data = [
        {"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "stand-in"}
        for m in cfg.models
    ]
    return web.json_response({"object": "list", "data": data})


async def _healthz(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok", "test_double": True})


async def _stats(request: web.Request) -> web.StreamResponse:
    return web.json_response(request.app[_STATE].snapshot())


async def _reset(request: web.Request) -> web.StreamResponse:
    state = request.app[_STATE]
    state.reset()
    return web.json_response(state.snapshot())


def _auth_ok(request: web.Request) -> bool:
    value = request.headers.get("Authorization", "")
    scheme, _, token = value.partition(" ")
    return scheme.lower() == "bearer" and bool(token.strip())


@web.middleware
async def _middleware(
    request: web.Request,
    handler: Callable[[web.Request], Any],
) -> web.StreamResponse:
    state = request.app[_STATE]
    name = request.match_info.route.name
    if not request.path.startswith("/_standin/"):
        state.requests[name if name in state.requests else "other"] += 1
    is_api = request.path.startswith("/v1/")
    if is_api and not _auth_ok(request):
        # Never echo or log the header's value: it may hold a real key.
        return _error_response(
            401,
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (the stand-in accepts any value).",
            "invalid_request_error",
            "missing_api_key",
        )
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPException as exc:
        if not is_api or exc.status < 400:
            raise
        code = {404: "unknown_url", 405: "method_not_allowed", 413: "request_too_large"}
        return _error_response(
            exc.status,
            f"Invalid URL ({request.method} {request.path}): {exc.reason} (stand-in)",
            "invalid_request_error",
            code.get(exc.status),
        )
    return response


async def _mark_stand_in(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["X-Stand-In"] = "true"
    response.headers.setdefault("x-request-id", f"req_{uuid.uuid4().hex}")


def create_app(config: StandInConfig | None = None) -> web.Application:
    """Build the stand-in's aiohttp application (for embedding or ``aiohttp.test_utils``)."""
    cfg = config or StandInConfig()
    app = web.Application(middlewares=[_middleware], client_max_size=cfg.client_max_size)
    app[_STATE] = _State(cfg)
    app.router.add_post("/v1/responses", _responses, name="responses")
    app.router.add_post("/v1/chat/completions", _chat_completions, name="chat.completions")
    app.router.add_get("/v1/models", _models, name="models")
    app.router.add_get("/healthz", _healthz, name="healthz")
    app.router.add_get("/_standin/stats", _stats, name="stats")
    app.router.add_post("/_standin/reset", _reset, name="reset")
    app.on_response_prepare.append(_mark_stand_in)
    return app


async def _start(config: StandInConfig) -> tuple[web.AppRunner, str, web.Application]:
    app = create_app(config)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        handler_cancellation=True,
        shutdown_timeout=config.shutdown_timeout,
    )
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, backlog=config.backlog)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    port = runner.addresses[0][1]
    host = config.host if ":" not in config.host else f"[{config.host}]"
    return runner, f"http://{host}:{port}/v1", app


async def serve(
    config: StandInConfig | None = None,
    *,
    on_ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run the stand-in in the current event loop until ``stop`` is set or the task is cancelled.

    ``on_ready`` is called with the base URL (ending in ``/v1``) once the port is bound.
    """
    runner, url, _ = await _start(config or StandInConfig())
    try:
        if on_ready is not None:
            on_ready(url)
        await (stop or asyncio.Event()).wait()
    finally:
        await runner.cleanup()


class StandInServer:
    """The stand-in running in a background thread with its own event loop.

    ``start()`` binds (port 0 picks a free port) and returns once the server accepts
    connections; ``url`` is then the base URL to give the OpenAI SDK (it ends in ``/v1``).
    Usable as a context manager::

        with StandInServer(StandInConfig(latency=0.1)) as server:
            client = openai.OpenAI(base_url=server.url, api_key="sk-test")
    """

    def __init__(self, config: StandInConfig | None = None) -> None:
        self.config = config or StandInConfig()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._app: web.Application | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        """Base URL for the SDK, e.g. ``http://127.0.0.1:41234/v1``."""
        if self._url is None:
            raise RuntimeError("the stand-in is not running; call start() first")
        return self._url

    @property
    def root_url(self) -> str:
        """The server root (``url`` without ``/v1``): ``/healthz`` and ``/_standin`` live here."""
        return self.url.removesuffix("/v1")

    @property
    def port(self) -> int:
        """The bound TCP port."""
        return int(self.url.rsplit(":", 1)[1].split("/", 1)[0])

    def start(self, timeout: float = 10.0) -> StandInServer:
        """Start serving in a daemon thread; return ``self`` once the port is bound."""
        if self._thread is not None:
            raise RuntimeError("the stand-in is already running")
        ready = threading.Event()
        failure: list[BaseException] = []
        loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                self._runner, self._url, self._app = loop.run_until_complete(_start(self.config))
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        thread = threading.Thread(target=run, name="openai-stand-in", daemon=True)
        self._loop, self._thread = loop, thread
        thread.start()
        if not ready.wait(timeout):
            raise RuntimeError("the stand-in did not start in time")
        if failure:
            self._loop = self._thread = None
            raise RuntimeError(f"the stand-in could not start: {failure[0]!r}") from failure[0]
        return self

    def _call(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        loop = self._loop
        if loop is None:
            raise RuntimeError("the stand-in is not running")

        async def wrapper() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(wrapper(), loop).result(timeout)

    def _state(self) -> _State:
        if self._app is None:
            raise RuntimeError("the stand-in is not running; call start() first")
        return self._app[_STATE]

    def stats(self) -> dict[str, Any]:
        """The same counters as ``GET /_standin/stats``, read on the server's loop."""
        state = self._state()
        result: dict[str, Any] = self._call(state.snapshot)
        return result

    def reset(self) -> None:
        """Zero the counters, forget attempt counts, restart the fault RNG."""
        state = self._state()
        self._call(state.reset)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving (in-flight requests are cancelled) and join the thread. Idempotent."""
        loop, thread, runner = self._loop, self._thread, self._runner
        if loop is None or thread is None:
            return
        if runner is not None and not loop.is_closed():
            fut = asyncio.run_coroutine_threadsafe(runner.cleanup(), loop)
            with contextlib.suppress(Exception):
                fut.result(timeout)
        if not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        self._loop = self._thread = self._runner = self._app = None
        self._url = None

    def __enter__(self) -> StandInServer:
        return self.start() if self._thread is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self._url or "not running"
        return f"StandInServer({where}, config={asdict(self.config)!r})"
