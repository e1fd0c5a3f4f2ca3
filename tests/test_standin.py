"""The OpenAI stand-in, exercised over real HTTP with the real ``openai`` SDK client."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
import jsonschema
import openai
import pydantic
import pytest

from waste_pipeline.standin import (
    FAULT_KINDS,
    StandInConfig,
    StandInServer,
    fill,
    serve,
    violate,
)

MAJORS = ["플라스틱", "유리", "재활용폐기물/종이류", "재활용폐기물/종이팩", "일반쓰레기"]
TAGS = ["오염됨", "라벨있음", "뚜껑있음", "깨짐"]

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "major": {"type": "string", "enum": MAJORS},
        "middle": {"anyOf": [{"type": "string", "maxLength": 12}, {"type": "null"}]},
        "tags": {"type": "array", "items": {"type": "string", "enum": TAGS}, "maxItems": 3},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "steps": {
            "type": "array",
            "items": {"$ref": "#/$defs/Step"},
            "minItems": 1,
            "maxItems": 10,
        },
        "recyclable": {"type": "boolean"},
        "note": {"type": "null"},
    },
    "required": ["major", "middle", "tags", "confidence", "steps", "recyclable", "note"],
    "additionalProperties": False,
    "$defs": {
        "Step": {
            "type": "object",
            "properties": {
                "order": {"type": "integer", "minimum": 1, "maximum": 10},
                "text": {"type": "string", "maxLength": 40},
            },
            "required": ["order", "text"],
            "additionalProperties": False,
        }
    },
}

INSTRUCTIONS = "Classify the item. Categories: " + ", ".join(MAJORS)


def _fmt(schema: dict[str, Any] = SCHEMA) -> dict[str, Any]:
    return {
        "format": {
            "type": "json_schema",
            "name": "classification",
            "schema": schema,
            "strict": True,
        }
    }


def _user(text: str, image: str | None = None) -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = [{"type": "input_text", "text": text}]
    if image:
        content.append({"type": "input_image", "image_url": image, "detail": "low"})
    return [
        {"role": "system", "content": "Possible answers: " + " ".join(MAJORS)},
        {"role": "user", "content": content},
    ]


@pytest.fixture(scope="module")
def server() -> Iterator[StandInServer]:
    with StandInServer(StandInConfig(timeout_seconds=5)) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: StandInServer) -> Iterator[openai.OpenAI]:
    # Strict validation: our payloads must satisfy the SDK's pydantic models, not just parse.
    with openai.OpenAI(
        base_url=server.url, api_key="sk-test", max_retries=0, _strict_response_validation=True
    ) as c:
        yield c


def _classify(client: openai.OpenAI, text: str, image: str | None = None, **kw: Any) -> Any:
    return client.responses.create(
        model="gpt-4.1-mini",
        instructions=INSTRUCTIONS,
        input=_user(text, image),
        text=_fmt(),
        **kw,
    )


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def _post(url: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body or {}).encode()
    req = urllib.request.Request(url, data=data, method="POST")
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.status, json.loads(resp.read())


# -- answers ---------------------------------------------------------------------------------


def test_responses_returns_schema_valid_json(client: openai.OpenAI) -> None:
    raw = client.responses.with_raw_response.create(
        model="gpt-4.1-mini", instructions=INSTRUCTIONS, input=_user("a bottle"), text=_fmt()
    )
    assert raw.headers["x-stand-in"] == "true"
    resp = raw.parse()
    assert resp.object == "response"
    assert resp.status == "completed"
    assert resp.model == "gpt-4.1-mini"  # echoed
    data = json.loads(resp.output_text)
    jsonschema.validate(data, SCHEMA)
    assert data["steps"][0]["text"].startswith("[stand-in]")
    assert 2 <= len(data["steps"]) <= 3
    assert resp.usage is not None
    assert resp.usage.total_tokens == resp.usage.input_tokens + resp.usage.output_tokens > 0


def test_model_is_echoed(client: openai.OpenAI) -> None:
    resp = client.responses.create(model="my-custom-model", input="hello")
    assert resp.model == "my-custom-model"


def test_enum_matches_user_text_only(client: openai.OpenAI) -> None:
    # Instructions and the system message name every category; only the user's words count.
    data = json.loads(_classify(client, "유리 말고 종이팩인데 어떻게 버려요?").output_text)
    # "종이팩" (3 chars, the last segment of "재활용폐기물/종이팩") beats "유리" (2 chars).
    assert data["major"] == "재활용폐기물/종이팩"
    assert set(data["tags"]) <= set(TAGS)

    data = json.loads(_classify(client, "깨진 유리병, 라벨있음").output_text)
    assert data["major"] == "유리"
    assert data["tags"][0] == "라벨있음"
    assert len(set(data["tags"])) == len(data["tags"])


def test_enum_without_match_is_hash_chosen_and_deterministic(client: openai.OpenAI) -> None:
    first = _classify(client, "what is this thing", "https://img.example/a.jpg").output_text
    again = _classify(client, "what is this thing", "https://img.example/a.jpg").output_text
    assert first == again
    # Different user content spreads over the enum (the image URL counts too).
    majors = {
        json.loads(_classify(client, "what is this", f"https://img.example/{i}.jpg").output_text)[
            "major"
        ]
        for i in range(12)
    }
    assert len(majors) >= 2


def test_responses_parse_with_pydantic_model(client: openai.OpenAI) -> None:
    class Step(pydantic.BaseModel):
        order: int
        text: str

    class Answer(pydantic.BaseModel):
        category: str
        steps: list[Step]
        confidence: float | None

    parsed = client.responses.parse(
        model="gpt-4.1-mini", input=[{"role": "user", "content": "a can"}], text_format=Answer
    )
    assert isinstance(parsed.output_parsed, Answer)
    assert parsed.output_parsed.category.startswith("[stand-in]")


def test_plain_text_without_schema(client: openai.OpenAI) -> None:
    resp = client.responses.create(model="gpt-4.1-mini", input="hello")
    assert "stand-in" in resp.output_text
    chat = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}]
    )
    assert "stand-in" in (chat.choices[0].message.content or "")


def test_chat_completions_json_schema(client: openai.OpenAI) -> None:
    chat = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "system", "content": INSTRUCTIONS},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "플라스틱 컵"},
                    {"type": "image_url", "image_url": {"url": "https://img.example/cup.jpg"}},
                ],
            },
        ],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "classification", "schema": SCHEMA, "strict": True},
        },
    )
    assert chat.object == "chat.completion"
    assert chat.model == "gpt-4o-mini"
    msg = chat.choices[0].message
    assert msg.refusal is None
    data = json.loads(msg.content or "")
    jsonschema.validate(data, SCHEMA)
    assert data["major"] == "플라스틱"


def test_models_healthz_and_404(server: StandInServer, client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == list(server.config.models)
    status, headers, body = _get(server.root_url + "/healthz")
    assert status == 200 and body["test_double"] is True and headers["X-Stand-In"] == "true"
    status, headers, body = _get(server.url + "/nope", {"Authorization": "Bearer x"})
    assert status == 404 and "message" in body["error"] and headers["X-Stand-In"] == "true"


def test_missing_authorization_is_401_and_never_echoed(server: StandInServer) -> None:
    status, headers, body = _get(server.url + "/models")
    assert status == 401 and body["error"]["type"] == "invalid_request_error"
    assert headers["X-Stand-In"] == "true"
    status, _, body = _get(server.url + "/models", {"Authorization": "Basic hunter2-secret"})
    assert status == 401 and "hunter2" not in json.dumps(body)


def test_unknown_marker_is_a_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="unknown stand-in marker"):
        client.responses.create(model="m", input="x [[standin:bogus]]")


# -- faults ----------------------------------------------------------------------------------


def test_fault_429(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        _classify(client, "bottle [[standin:429]]")
    err = info.value
    assert err.status_code == 429
    assert err.response.headers["retry-after"] == "1"
    assert err.response.headers["retry-after-ms"] == "1000"
    assert err.response.headers["x-stand-in"] == "true"
    assert err.code == "rate_limit_exceeded" and err.type


@pytest.mark.parametrize("code", [500, 503])
def test_fault_5xx(client: openai.OpenAI, code: int) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        _classify(client, f"bottle [[standin:{code}]]")
    assert info.value.status_code == code
    assert isinstance(info.value.body, dict) and "message" in info.value.body


def test_fault_reset_is_a_connection_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIConnectionError) as info:
        _classify(client, "bottle [[standin:reset]]")
    assert not isinstance(info.value, openai.APITimeoutError)
    # The client recovers on the next request.
    json.loads(_classify(client, "bottle").output_text)


def test_fault_timeout(client: openai.OpenAI) -> None:
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        _classify(client, "bottle [[standin:timeout]]", timeout=0.3)
    assert time.monotonic() - started < 3


def test_fault_malformed(client: openai.OpenAI) -> None:
    resp = _classify(client, "bottle [[standin:malformed]]")
    with pytest.raises(json.JSONDecodeError):
        json.loads(resp.output_text)


def test_fault_refusal(client: openai.OpenAI) -> None:
    resp = _classify(client, "bottle [[standin:refusal]]")
    content = resp.output[0].content[0]  # type: ignore[union-attr]
    assert content.type == "refusal" and content.refusal
    assert resp.output_text == ""
    chat = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x [[standin:refusal]]"}]
    )
    assert chat.choices[0].message.refusal and chat.choices[0].message.content is None


def test_fault_schema_violation(client: openai.OpenAI) -> None:
    data = json.loads(_classify(client, "bottle [[standin:schema]]").output_text)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, SCHEMA)


def test_fail_first_n_then_succeed(client: openai.OpenAI) -> None:
    text = "a glass jar [[standin:429x2]]"
    for _ in range(2):
        with pytest.raises(openai.RateLimitError):
            _classify(client, text)
    ok = _classify(client, text).output_text
    # Markers are not part of the answer: same as asking without one.
    assert ok == _classify(client, "a glass jar").output_text
    for _ in range(1):
        with pytest.raises(openai.InternalServerError):
            _classify(client, "a can [[standin:503x1]]")
    json.loads(_classify(client, "a can [[standin:503x1]]").output_text)


def test_sdk_retries_succeed_through_x_marker() -> None:
    with (
        StandInServer(StandInConfig(retry_after=0.05)) as srv,
        openai.OpenAI(base_url=srv.url, api_key="sk-test", max_retries=2) as c,
    ):
        resp = c.responses.create(model="m", input="hi [[standin:429x2]]", text=_fmt())
        jsonschema.validate(json.loads(resp.output_text), SCHEMA)
        stats = srv.stats()
        assert stats["faults"]["429"] == 2 and stats["requests"]["responses"] == 3


def test_random_faults_are_seeded() -> None:
    def outcomes(seed: int) -> list[str]:
        cfg = StandInConfig(fault_rate=0.5, faults=("429", "500"), seed=seed)
        out = []
        with (
            StandInServer(cfg) as srv,
            openai.OpenAI(base_url=srv.url, api_key="k", max_retries=0) as c,
        ):
            for _ in range(12):
                try:
                    c.responses.create(model="m", input="hello")
                    out.append("ok")
                except openai.APIStatusError as err:
                    out.append(str(err.status_code))
        return out

    first = outcomes(7)
    assert first == outcomes(7)
    assert {"ok", "429", "500"} <= set(first)


# -- latency, concurrency, stats -------------------------------------------------------------


def test_latency_knob_and_marker() -> None:
    with (
        StandInServer(StandInConfig(latency=0.2)) as srv,
        openai.OpenAI(base_url=srv.url, api_key="k", max_retries=0) as c,
    ):
        started = time.monotonic()
        c.responses.create(model="m", input="hello")
        assert time.monotonic() - started >= 0.2
        started = time.monotonic()
        c.responses.create(model="m", input="hello [[standin:latency=0.35]]")
        assert time.monotonic() - started >= 0.35


def test_concurrent_requests_overlap() -> None:
    with (
        StandInServer(StandInConfig(latency=0.3)) as srv,
        openai.OpenAI(base_url=srv.url, api_key="k", max_retries=0) as c,
    ):
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=50) as pool:
            texts = list(
                pool.map(
                    lambda i: (
                        c.responses.create(model="m", input=f"item {i}", text=_fmt()).output_text
                    ),
                    range(50),
                )
            )
        elapsed = time.monotonic() - started
    assert elapsed < 3, elapsed
    for t in texts:
        jsonschema.validate(json.loads(t), SCHEMA)


def test_600_concurrent_connections() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2000:
        if hard != resource.RLIM_INFINITY and hard < 2000:
            pytest.skip("not enough file descriptors for 600 connections")
        resource.setrlimit(resource.RLIMIT_NOFILE, (2000, hard))

    async def hammer(url: str) -> list[int]:
        conn = aiohttp.TCPConnector(limit=0)
        body = {"model": "m", "input": "hello", "text": _fmt()}
        async with aiohttp.ClientSession(connector=conn) as session:

            async def one() -> int:
                async with session.post(
                    url + "/responses", json=body, headers={"Authorization": "Bearer k"}
                ) as r:
                    await r.read()
                    return r.status

            return await asyncio.gather(*(one() for _ in range(600)))

    with StandInServer(StandInConfig(latency=0.5)) as srv:
        started = time.monotonic()
        statuses = asyncio.run(hammer(srv.url))
        elapsed = time.monotonic() - started
        assert srv.stats()["requests"]["responses"] == 600
    assert statuses == [200] * 600
    assert elapsed < 8, elapsed


def test_stats_and_reset() -> None:
    with StandInServer() as srv, openai.OpenAI(base_url=srv.url, api_key="k", max_retries=0) as c:
        c.responses.create(model="m", input="hi")
        c.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.RateLimitError):
            c.responses.create(model="m", input="hi [[standin:429]]")
        c.responses.create(model="m", input="hi [[standin:refusal]]")
        status, _, stats = _get(srv.root_url + "/_standin/stats")
        assert status == 200
        assert stats["requests"]["responses"] == 3
        assert stats["requests"]["chat.completions"] == 1
        assert stats["faults"]["429"] == 1 and stats["faults"]["refusal"] == 1
        assert stats["faults_total"] == 2 and stats["total"] == 4
        assert set(stats["faults"]) == set(FAULT_KINDS)
        status, body = _post(srv.root_url + "/_standin/reset")
        assert status == 200 and body["total"] == 0
        assert srv.stats()["total"] == 0 and srv.stats()["faults_total"] == 0


# -- ways to run -----------------------------------------------------------------------------


def test_serve_in_current_loop() -> None:
    async def main() -> dict[str, Any]:
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        stop = asyncio.Event()
        task = asyncio.create_task(serve(StandInConfig(), on_ready=ready.set_result, stop=stop))
        url = await ready
        async with openai.AsyncOpenAI(base_url=url, api_key="k", max_retries=0) as c:
            resp = await c.responses.create(model="m", input="유리", text=_fmt())
        stop.set()
        await task
        return dict(json.loads(resp.output_text))

    assert asyncio.run(main())["major"] == "유리"


def test_cli_prints_url_and_stops_on_sigterm() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "waste_pipeline.standin", "--port", "0", "--latency", "0"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()))  # type: ignore[union-attr]
        reader.start()
        reader.join(20)
        assert line and line[0].startswith("stand-in listening on http://127.0.0.1:")
        assert "NOT from a model" in line[0]
        url = line[0].split()[3]
        assert url.endswith("/v1")
        status, _, body = _get(url.removesuffix("/v1") + "/healthz")
        assert status == 200 and body["status"] == "ok"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- schema_fill directly --------------------------------------------------------------------


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "maxLength": 5},
        {"type": "string", "minLength": 30},
        {"type": "integer", "minimum": 5, "maximum": 7},
        {"type": "integer", "exclusiveMinimum": 10},
        {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        {"type": ["string", "null"]},
        {"type": "array", "items": {"type": "integer"}, "minItems": 5},
        {"type": "array", "items": {"type": "string"}, "maxItems": 1},
        {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 4},
        {"type": "array", "items": {"enum": ["a", "b", "c"]}, "uniqueItems": True},
        {"const": "fixed"},
        {
            "oneOf": [{"type": "null"}, {"$ref": "#/definitions/X"}],
            "definitions": {"X": {"type": "boolean"}},
        },
        {
            "allOf": [{"$ref": "#/$defs/A"}],
            "$defs": {
                "A": {
                    "type": "object",
                    "properties": {"a": {"type": "string", "format": "date-time"}},
                    "required": ["a"],
                }
            },
        },
        {
            "$ref": "#/$defs/Node",
            "$defs": {
                "Node": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "child": {"anyOf": [{"$ref": "#/$defs/Node"}, {"type": "null"}]},
                    },
                    "required": ["name", "child"],
                    "additionalProperties": False,
                }
            },
        },
        SCHEMA,
    ],
)
def test_fill_is_valid_and_deterministic(schema: dict[str, Any]) -> None:
    value = fill(schema, user_text="some text")
    jsonschema.validate(value, schema)
    assert fill(schema, user_text="some text") == value


def test_violate_breaks_the_schema() -> None:
    for schema in (SCHEMA, {"type": "string"}, {"type": "array", "items": {"type": "string"}}):
        value = fill(schema, user_text="x")
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(violate(schema, value), schema)
