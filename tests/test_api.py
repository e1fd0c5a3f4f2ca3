"""The HTTP API against the real app: uvicorn on 127.0.0.1, a real PostgreSQL, the stand-in.

Covers every endpoint, the upload and body limits, the concurrency limit, problem responses,
the SSE stream (stage events in order, live and after the fact), readiness failures, queued
mode with a real gevent Celery worker, and the OpenAPI document.

:class:`LiveServer` and :func:`api_settings` are shared with ``test_bad_input.py`` and
``test_secrets.py``.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import uvicorn

from tests.helpers import TEST_API_KEY, jpeg_data_url, make_jpeg
from tests.imageserver import ImageServer, closed_port
from waste_pipeline.api import ApiLimits, create_app
from waste_pipeline.api.app import SubmitScan
from waste_pipeline.settings import Settings

PROBLEM = "application/problem+json"
TYPE = "https://waste-pipeline.dev/problems/"


# --- shared helpers ----------------------------------------------------------------------------


class LiveServer:
    """A FastAPI app served by uvicorn in a thread on 127.0.0.1 (lifespan on)."""

    def __init__(self, app: Any, *, log_level: str = "warning") -> None:
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            log_level=log_level,
            lifespan="on",
            timeout_graceful_shutdown=3,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="api-under-test", daemon=True)
        self.url = ""

    def start(self, timeout: float = 30.0) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the API server did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def client(self, **kwargs: Any) -> httpx2.Client:
        return httpx2.Client(base_url=self.url, timeout=kwargs.pop("timeout", 30.0), **kwargs)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def api_settings(
    postgres_url: str, standin: str, home: Path, **overrides: Any
) -> Settings:
    """Settings of an API under test: fake key, real database, stand-in, no SDK retries."""
    values: dict[str, Any] = {
        "openai_api_key": TEST_API_KEY,
        "openai_base_url": standin,
        "database_url": postgres_url,
        "model_max_retries": 0,
        "model_timeout": 5.0,
        "image_timeout": 3.0,
        "home": home,
    }
    values.update(overrides)
    return Settings(**values)


def assert_problem(response: httpx2.Response, status: int, code: str) -> dict[str, Any]:
    """The response is a problem of this status and type; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM), response.headers
    body = response.json()
    assert body["type"] == TYPE + code, body
    assert body["status"] == status
    assert body["title"] and isinstance(body["detail"], str) and body["detail"]
    assert "Traceback" not in response.text
    return body


def read_events(response: httpx2.Response) -> list[tuple[str, dict[str, Any], float]]:
    """Parse an SSE stream: (event, data, arrival time) per event, until the stream ends."""
    events: list[tuple[str, dict[str, Any], float]] = []
    name, data = "message", ""
    for line in response.iter_lines():
        if line == "":
            if data:
                events.append((name, json.loads(data), time.monotonic()))
            name, data = "message", ""
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()
    return events


def raw_request(
    port: int,
    head: str,
    chunks: Iterable[bytes] = (),
    *,
    chunked: bool = False,
    timeout: float = 10.0,
) -> tuple[int, dict[str, str], bytes, int]:
    """Send a request over a raw socket, stopping as soon as the server answers.

    Returns (status, headers, body, body bytes sent before the answer came).
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sent = 0
    try:
        sock.sendall(head.encode("latin-1"))
        try:
            for chunk in chunks:
                readable, _, _ = select.select([sock], [], [], 0)
                if readable:
                    break
                frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" if chunked else chunk
                sock.sendall(frame)
                sent += len(chunk)
                time.sleep(0.001)
            else:
                if chunked:
                    sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = b""
        while b"\r\n\r\n" not in data:
            part = sock.recv(65536)
            if not part:
                break
            data += part
        header_blob, _, body = data.partition(b"\r\n\r\n")
        lines = header_blob.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            part = sock.recv(65536)
            if not part:
                break
            body += part
        return status, headers, body, sent
    finally:
        sock.close()


def wait_for_status(
    client: httpx2.Client, scan_id: str, statuses: set[str], timeout: float = 30.0
) -> dict[str, Any]:
    """Poll ``GET /v1/scans/{id}`` until its status is one of ``statuses``."""
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = client.get(f"/v1/scans/{scan_id}")
        if response.status_code == 200:
            body = response.json()
            if body["status"] in statuses:
                return body
        time.sleep(0.05)
    raise AssertionError(f"scan {scan_id} did not reach {statuses}: {body}")


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images() -> Iterator[ImageServer]:
    server = ImageServer(slow_seconds=2.0).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("api-home")


@pytest.fixture(scope="module")
def api(
    postgres_url: str, standin: str, redis_url: str, images: ImageServer, home: Path
) -> Iterator[LiveServer]:
    """The API with default limits (broker: the session's Redis, no worker)."""
    settings = api_settings(
        postgres_url,
        standin,
        home,
        celery_broker_url=redis_url,
        image_allowed_hosts=[images.host],
    )
    with LiveServer(create_app(settings)) as server:
        yield server


@pytest.fixture(scope="module")
def client(api: LiveServer) -> Iterator[httpx2.Client]:
    with api.client() as c:
        yield c


class FakeQueue:
    """A submit helper that records the row ``pending`` and queues nothing."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def __call__(
        self, pipeline: Any, images: list[str], user_text: str, *, scan_id: str, language: str
    ) -> str:
        inputs = pipeline.request(images, user_text, language=language).describe()
        await pipeline.record_pending(scan_id, inputs)
        self.calls.append(
            {"images": images, "user_text": user_text, "scan_id": scan_id, "language": language}
        )
        return scan_id


@pytest.fixture(scope="module")
def fake_queue() -> FakeQueue:
    return FakeQueue()


@pytest.fixture(scope="module")
def tight(
    postgres_url: str, standin: str, home: Path, fake_queue: FakeQueue
) -> Iterator[LiveServer]:
    """The API with small limits: 64 KiB bodies, 50 kB images, 1 inline scan, 1 s streams."""
    settings = api_settings(postgres_url, standin, home, image_max_bytes=50_000)
    limits = ApiLimits(
        max_body_bytes=64 * 1024,
        max_inline_scans=1,
        retry_after_seconds=3,
        events_max_seconds=1.0,
        events_poll_interval=0.05,
    )
    submit: SubmitScan = fake_queue
    with LiveServer(create_app(settings, limits=limits, submit=submit)) as server:
        yield server


# --- health ------------------------------------------------------------------------------------


def test_healthz(client: httpx2.Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_checks_database_broker_and_model(client: httpx2.Client) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready"
    assert set(body["checks"]) == {"database", "broker", "model"}
    assert all(check["ok"] for check in body["checks"].values()), body
    assert body["checks"]["model"]["detail"] == "GET /models: HTTP 200"


def test_readyz_reports_each_failing_dependency(
    postgres_url: str, standin: str, home: Path
) -> None:
    dead = closed_port()
    settings = api_settings(
        postgres_url,
        f"http://127.0.0.1:{dead}/v1",
        home,
        celery_broker_url=f"redis://127.0.0.1:{dead}/0",
    )
    with LiveServer(create_app(settings, limits=ApiLimits(readiness_timeout=1.0))) as server:
        with server.client() as c:
            response = c.get("/readyz")
            assert c.get("/healthz").status_code == 200
    body = assert_problem(response, 503, "not_ready")
    checks = body["checks"]
    assert checks["database"]["ok"] is True
    assert checks["broker"]["ok"] is False and checks["model"]["ok"] is False
    assert "broker" in body["detail"] and "model" in body["detail"]


# --- POST /v1/scans inline ---------------------------------------------------------------------


def test_inline_scan_by_data_url_is_stored(client: httpx2.Client) -> None:
    response = client.post(
        "/v1/scans", json={"image_url": jpeg_data_url(), "user_text": "투명 페트병, 라벨 뗐어요"}
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    result = response.json()
    assert result["status"] == "done"
    assert result["classification"]["major"] and result["answer"]["disposal_steps"]
    assert result["rules_key"]
    assert result["inputs"]["user_text"] == "투명 페트병, 라벨 뗐어요"
    stored = client.get(f"/v1/scans/{result['scan_id']}")
    assert stored.status_code == 200
    assert stored.json()["status"] == "done"
    assert stored.json()["answer"] == result["answer"]
    assert stored.json()["created_at"]


def test_inline_scan_by_http_url_and_several_images(
    client: httpx2.Client, images: ImageServer
) -> None:
    response = client.post(
        "/v1/scans",
        json={
            "images": [images.url("/photo.jpg"), images.url("/photo.png"), jpeg_data_url(200, 100)],
            "language": "en",
        },
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert [i["kind"] for i in result["inputs"]["images"]] == ["url", "url", "data_url"]
    assert result["inputs"]["language"] == "en"


def test_multipart_upload(client: httpx2.Client) -> None:
    response = client.post(
        "/v1/scans",
        files={"file": ("bottle.jpg", make_jpeg(320, 240), "image/jpeg")},
        data={"user_text": "캔이에요", "language": "ko"},
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["inputs"]["images"] == [
        {"kind": "bytes", "size": len(make_jpeg(320, 240)), "filename": "bottle.jpg"}
    ]
    assert result["inputs"]["user_text"] == "캔이에요"


def test_multipart_several_files(client: httpx2.Client) -> None:
    response = client.post(
        "/v1/scans",
        files=[
            ("file", ("a.jpg", make_jpeg(100, 100), "image/jpeg")),
            ("file", ("b.jpg", make_jpeg(120, 80), "application/octet-stream")),
        ],
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["inputs"]["images"]) == 2


def test_client_scan_id_is_idempotent(client: httpx2.Client) -> None:
    scan_id = f"client-{uuid.uuid4().hex[:12]}"
    body = {"image_url": jpeg_data_url(), "scan_id": scan_id}
    first = client.post("/v1/scans", json=body)
    again = client.post("/v1/scans", json=body)
    assert first.status_code == again.status_code == 200
    assert first.json()["scan_id"] == again.json()["scan_id"] == scan_id
    assert again.json()["answer"] == first.json()["answer"]
    assert client.get(f"/v1/scans/{scan_id}").json()["attempts"] == 1


@pytest.mark.parametrize(
    ("marker", "status", "code", "retry_after"),
    [
        ("[[standin:500]]", 503, "model_unavailable", True),
        ("[[standin:429]]", 503, "model_rate_limited", True),
        ("[[standin:refusal]]", 422, "content_refused", False),
        ("[[standin:schema]]", 502, "model_output_invalid", False),
    ],
)
def test_inline_failure_is_a_problem_with_the_scan_id(
    client: httpx2.Client, marker: str, status: int, code: str, retry_after: bool
) -> None:
    response = client.post("/v1/scans", json={"image_url": jpeg_data_url(), "user_text": marker})
    body = assert_problem(response, status, code)
    assert ("retry-after" in response.headers) is retry_after
    if retry_after:
        assert int(response.headers["retry-after"]) >= 1 and body["retry_after"] >= 1
    stored = client.get(f"/v1/scans/{body['scan_id']}").json()
    assert stored["status"] == "failed"
    assert stored["error"]["code"] == code


# --- GET /v1/scans/{id} ------------------------------------------------------------------------


def test_unknown_scan_is_404(client: httpx2.Client) -> None:
    body = assert_problem(client.get("/v1/scans/no-such-scan"), 404, "scan_not_found")
    assert "no-such-scan" in body["detail"]


@pytest.mark.parametrize("bad", ["has%20space", "x" * 65, "-leading-dash", "semi%3Bcolon", "%00"])
def test_malformed_scan_id_is_422(client: httpx2.Client, bad: str) -> None:
    body = assert_problem(client.get(f"/v1/scans/{bad}"), 422, "invalid_input")
    assert body["errors"][0]["loc"] == "path.scan_id"
    assert_problem(client.get(f"/v1/scans/{bad}/events"), 422, "invalid_input")


# --- HTTP-level problems -----------------------------------------------------------------------


def test_unknown_route_and_wrong_method_are_problems(client: httpx2.Client) -> None:
    assert_problem(client.get("/v2/nothing"), 404, "not_found")
    response = client.delete("/v1/scans/abc")
    assert_problem(response, 405, "method_not_allowed")
    assert "GET" in response.headers.get("allow", "")
    assert_problem(client.put("/healthz"), 405, "method_not_allowed")


def test_wrong_content_type_is_415(client: httpx2.Client) -> None:
    response = client.post(
        "/v1/scans", content=b"image_url=x", headers={"content-type": "text/plain"}
    )
    assert_problem(response, 415, "unsupported_media_type")
    assert_problem(client.post("/v1/scans", content=b"{}"), 415, "unsupported_media_type")


def test_validation_errors_are_problems_without_the_input(client: httpx2.Client) -> None:
    secret_looking = "A" * 3000
    response = client.post("/v1/scans", json={"image_url": "https://example.com/a.jpg",
                                              "user_text": secret_looking})
    body = assert_problem(response, 422, "invalid_input")
    assert body["errors"][0]["loc"] == "user_text"
    assert secret_looking not in response.text


# --- limits ------------------------------------------------------------------------------------


def test_body_over_the_limit_is_refused_by_content_length(tight: LiveServer) -> None:
    head = (
        "POST /v1/scans HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {100 * 1024 * 1024}\r\n\r\n"
    )
    status, headers, body, sent = raw_request(tight.port, head)
    assert status == 413 and sent == 0
    assert headers["content-type"].startswith(PROBLEM)
    assert json.loads(body)["type"] == TYPE + "request_too_large"


def test_streamed_body_over_the_limit_is_refused_while_streaming(tight: LiveServer) -> None:
    head = (
        "POST /v1/scans HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    chunks = (b"x" * 16384 for _ in range(2000))  # 32 MiB if the server never stopped us
    status, _headers, body, sent = raw_request(tight.port, head, chunks, chunked=True)
    assert status == 413
    assert json.loads(body)["type"] == TYPE + "request_too_large"
    assert sent < 4 * 1024 * 1024  # refused long before the end


def test_multipart_body_over_the_limit(tight: LiveServer) -> None:
    with tight.client() as c:
        big = b"\xff\xd8\xff" + bytes(100_000)
        response = c.post("/v1/scans", files={"file": ("big.jpg", big)})
        assert_problem(response, 413, "request_too_large")
        assert c.get("/healthz").status_code == 200


def test_upload_over_the_image_limit(tight: LiveServer) -> None:
    with tight.client() as c:
        response = c.post("/v1/scans", files={"file": ("big.jpg", b"\xff\xd8\xff" + bytes(55_000))})
    body = assert_problem(response, 413, "image_too_large")
    assert "scan_id" not in body  # refused before any scan existed


def test_too_many_images(client: httpx2.Client) -> None:
    response = client.post("/v1/scans", json={"images": [jpeg_data_url(8, 8)] * 5})
    assert_problem(response, 422, "invalid_input")
    files = [("file", (f"{i}.jpg", make_jpeg(8, 8), "image/jpeg")) for i in range(5)]
    body = assert_problem(client.post("/v1/scans", files=files), 422, "invalid_input")
    assert "too many images" in body["detail"]


def test_concurrent_inline_scans_are_bounded(tight: LiveServer) -> None:
    slow: dict[str, httpx2.Response] = {}

    def run_slow() -> None:
        with tight.client() as c:
            slow["r"] = c.post(
                "/v1/scans",
                json={"image_url": jpeg_data_url(), "user_text": "[[standin:latency=0.6]]"},
            )

    thread = threading.Thread(target=run_slow)
    thread.start()
    try:
        time.sleep(0.25)
        with tight.client() as c:
            busy = c.post("/v1/scans", json={"image_url": jpeg_data_url()})
            body = assert_problem(busy, 503, "server_busy")
            assert busy.headers["retry-after"] == "3" and body["retry_after"] == 3
            assert c.get("/healthz").status_code == 200
    finally:
        thread.join(30)
    assert slow["r"].status_code == 200
    with tight.client() as c:  # the slot is free again
        assert c.post("/v1/scans", json={"image_url": jpeg_data_url()}).status_code == 200


# --- events ------------------------------------------------------------------------------------


def test_events_of_a_finished_scan_come_in_stage_order(client: httpx2.Client) -> None:
    done = client.post("/v1/scans", json={"image_url": jpeg_data_url(), "user_text": "병"}).json()
    with client.stream("GET", f"/v1/scans/{done['scan_id']}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = read_events(response)
    assert [e[0] for e in events] == ["vision", "rule", "answer", "done"]
    by_name = {name: data for name, data, _ in events}
    assert by_name["vision"]["classification"] == done["classification"]
    assert by_name["rule"]["rules_key"] == done["rules_key"]
    assert by_name["answer"]["answer"] == done["answer"]
    assert by_name["done"]["status"] == "done" and by_name["done"]["scan_id"] == done["scan_id"]


def test_events_follow_a_running_scan_live(client: httpx2.Client, api: LiveServer) -> None:
    scan_id = f"live-{uuid.uuid4().hex[:10]}"
    finished: dict[str, Any] = {}

    def run_inline() -> None:
        with api.client() as c:
            response = c.post(
                "/v1/scans",
                json={
                    "image_url": jpeg_data_url(),
                    "user_text": "[[standin:latency=0.5]] 유리병",
                    "scan_id": scan_id,
                },
            )
            finished["at"] = time.monotonic()
            finished["response"] = response

    thread = threading.Thread(target=run_inline)
    thread.start()
    try:
        wait_for_status(client, scan_id, {"running", "pending", "done"}, timeout=10)
        with client.stream("GET", f"/v1/scans/{scan_id}/events") as response:
            events = read_events(response)
    finally:
        thread.join(30)
    assert finished["response"].status_code == 200
    assert [e[0] for e in events] == ["vision", "rule", "answer", "done"]
    vision_at = events[0][2]
    assert vision_at < finished["at"], "the vision event came only after the scan ended"
    assert events[-1][1]["answer"] == finished["response"].json()["answer"]


def test_events_of_a_failed_scan_end_with_failed(client: httpx2.Client) -> None:
    response = client.post(
        "/v1/scans", json={"image_url": jpeg_data_url(), "user_text": "[[standin:refusal]]"}
    )
    scan_id = assert_problem(response, 422, "content_refused")["scan_id"]
    with client.stream("GET", f"/v1/scans/{scan_id}/events") as stream:
        events = read_events(stream)
    assert [e[0] for e in events] == ["failed"]
    data = events[0][1]
    assert data["type"] == TYPE + "content_refused"
    assert data["error"]["code"] == "content_refused"


def test_events_resume_after_last_event_id(client: httpx2.Client) -> None:
    done = client.post("/v1/scans", json={"image_url": jpeg_data_url()}).json()
    with client.stream(
        "GET", f"/v1/scans/{done['scan_id']}/events", headers={"Last-Event-ID": "2"}
    ) as response:
        events = read_events(response)
    assert [e[0] for e in events] == ["answer", "done"]


def test_events_of_an_unknown_scan_are_404(client: httpx2.Client) -> None:
    assert_problem(client.get("/v1/scans/never-seen/events"), 404, "scan_not_found")


def test_events_stream_stops_at_its_maximum_duration(
    tight: LiveServer, fake_queue: FakeQueue
) -> None:
    with tight.client() as c:
        accepted = c.post("/v1/scans", json={"image_url": jpeg_data_url(), "mode": "queued"})
        assert accepted.status_code == 202
        scan_id = accepted.json()["scan_id"]
        start = time.monotonic()
        with c.stream("GET", f"/v1/scans/{scan_id}/events") as response:
            events = read_events(response)
        took = time.monotonic() - start
    assert [e[0] for e in events] == ["timeout"]
    assert events[0][1]["status"] == "pending"
    assert 0.9 <= took < 5


# --- queued ------------------------------------------------------------------------------------


def test_queued_answers_202_with_location_and_a_pending_row(
    tight: LiveServer, fake_queue: FakeQueue
) -> None:
    scan_id = f"q-{uuid.uuid4().hex[:10]}"
    with tight.client() as c:
        response = c.post(
            "/v1/scans",
            files={"file": ("p.png", make_jpeg(50, 50), "image/png")},
            data={"mode": "queued", "scan_id": scan_id, "user_text": "hi", "language": "en"},
        )
        assert response.status_code == 202, response.text
        assert response.headers["location"] == f"/v1/scans/{scan_id}"
        assert response.json() == {
            "scan_id": scan_id,
            "status": "pending",
            "location": f"/v1/scans/{scan_id}",
            "events": f"/v1/scans/{scan_id}/events",
        }
        row = c.get(response.headers["location"]).json()
    assert row["status"] == "pending"
    call = next(x for x in fake_queue.calls if x["scan_id"] == scan_id)
    assert call["images"][0].startswith("data:image/jpeg;base64,")  # uploads travel as data URLs
    assert call["language"] == "en" and call["user_text"] == "hi"


def test_queued_with_a_bad_url_fails_at_once(tight: LiveServer, fake_queue: FakeQueue) -> None:
    before = len(fake_queue.calls)
    with tight.client() as c:
        response = c.post(
            "/v1/scans", json={"image_url": "http://169.254.169.254/latest", "mode": "queued"}
        )
        body = assert_problem(response, 422, "image_source_forbidden")
        row = c.get(f"/v1/scans/{body['scan_id']}").json()
    assert row["status"] == "failed" and row["error"]["code"] == "image_source_forbidden"
    assert len(fake_queue.calls) == before


def test_queued_with_the_broker_down_is_503_and_a_failed_row(
    postgres_url: str, standin: str, home: Path
) -> None:
    settings = api_settings(
        postgres_url, standin, home, celery_broker_url=f"redis://127.0.0.1:{closed_port()}/0"
    )
    with LiveServer(create_app(settings)) as server, server.client() as c:
        start = time.monotonic()
        response = c.post("/v1/scans", json={"image_url": jpeg_data_url(), "mode": "queued"})
        took = time.monotonic() - start
        body = assert_problem(response, 503, "broker_unavailable")
        assert response.headers["retry-after"]
        row = c.get(f"/v1/scans/{body['scan_id']}").json()
    assert row["status"] == "failed" and row["error"]["code"] == "broker_unavailable"
    assert took < 10


@pytest.mark.timeout(120)
def test_queued_scan_runs_on_a_real_gevent_worker(
    postgres_url: str, standin: str, redis_url: str, home: Path, tmp_path: Path
) -> None:
    from tests.celery_harness import celery_stack

    with celery_stack(
        redis_url=redis_url, postgres_url=postgres_url, standin_url=standin, tmp_path=tmp_path
    ) as stack:
        stack.worker("-P", "gevent", "-c", "10")
        settings = api_settings(
            postgres_url,
            standin,
            home,
            celery_broker_url=stack.broker_url,
            celery_result_backend=stack.broker_url,
        )
        with LiveServer(create_app(settings)) as server, server.client() as c:
            by_json = c.post(
                "/v1/scans",
                json={"image_url": jpeg_data_url(), "user_text": "종이컵", "mode": "queued"},
            )
            by_upload = c.post(
                "/v1/scans",
                files={"file": ("cup.jpg", make_jpeg(200, 200), "image/jpeg")},
                data={"mode": "queued"},
            )
            assert by_json.status_code == by_upload.status_code == 202, by_json.text
            for accepted in (by_json, by_upload):
                location = accepted.headers["location"]
                with c.stream("GET", f"{location}/events") as response:
                    events = read_events(response)
                assert [e[0] for e in events] == ["vision", "rule", "answer", "done"], events
                row = c.get(location).json()
                assert row["status"] == "done" and row["answer"]["disposal_steps"]
                assert row["attempts"] == 1


# --- OpenAPI -----------------------------------------------------------------------------------


def test_openapi_is_complete_with_examples(client: httpx2.Client) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    paths = spec["paths"]
    assert set(paths) >= {
        "/v1/scans",
        "/v1/scans/{scan_id}",
        "/v1/scans/{scan_id}/events",
        "/healthz",
        "/readyz",
    }
    create = paths["/v1/scans"]["post"]
    content = create["requestBody"]["content"]
    assert set(content) == {"application/json", "multipart/form-data"}
    assert content["application/json"]["examples"]
    assert "202" in create["responses"] and "422" in create["responses"]
    assert create["responses"]["413"]["content"][PROBLEM]["examples"]
    for path, ops in paths.items():
        for method, op in ops.items():
            for status, resp in op["responses"].items():
                for media, body in resp.get("content", {}).items():
                    has_example = "example" in body or "examples" in body
                    has_ref = "$ref" in json.dumps(body.get("schema", {}))
                    assert has_example or has_ref, (path, method, status, media)
    schemas = spec["components"]["schemas"]
    assert {"ScanCreate", "Problem", "ScanResult", "ScanAccepted", "Readiness"} <= set(schemas)
    assert "HTTPValidationError" not in json.dumps(paths)
    assert client.get("/docs").status_code == 200


def test_every_problem_type_is_documented() -> None:
    from waste_pipeline.api.problems import PROBLEM_TYPES

    doc = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text(encoding="utf-8")
    missing = [code for code in PROBLEM_TYPES if f"`{code}`" not in doc]
    assert missing == []
