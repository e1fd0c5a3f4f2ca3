"""Hostile and broken input, through the API and the CLI (issue 7, item 2).

Every case gets a clear 4xx problem with a stable type (CLI: exit status 1 and the error's
code), a ``failed`` row when a scan was created (the request passed validation: the problem
then carries the ``scan_id``), no row when it was refused before (the client's ``scan_id`` stays
unknown), and leaves the service healthy (``/healthz`` after each case, a good scan at the end).

Property-based tests (hypothesis) cover the validators: image URLs (``ImageInput``), scan ids,
user-text cleaning, the JSON request model, the URL address policy, and the API as a whole
(random requests never get a 5xx).
"""

from __future__ import annotations

import base64
import io
import ipaddress
import json
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import psycopg
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tests.helpers import TEST_API_KEY, jpeg_data_url, make_jpeg
from tests.imageserver import JPEG, ImageServer, make_image, patch_png_size
from tests.test_api import LiveServer, api_settings, assert_problem, raw_request
from waste_pipeline.api import create_app
from waste_pipeline.api.schemas import ScanCreate, clean_user_text
from waste_pipeline.cli import clean_text as cli_clean_text
from waste_pipeline.cli import main
from waste_pipeline.errors import ImageSourceForbiddenError, InvalidInputError
from waste_pipeline.imaging import check_url
from waste_pipeline.models import MAX_IMAGES, MAX_USER_TEXT, ImageInput, ScanRequest
from waste_pipeline.models import validate_scan_id as model_validate_scan_id

IMAGE_MAX_BYTES = 150_000  # the image server's /big.bin (200 kB) is over it
BOMB = patch_png_size(make_image("PNG", (8, 8)), 60_000, 60_000)
BOMB_URL = "data:image/png;base64," + base64.b64encode(BOMB).decode()
TRUNCATED = JPEG[: len(JPEG) // 2]
HTML = b"<!doctype html><html><body>not an image</body></html>"
SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"></svg>'
HOSTNAME = socket.gethostname()


def _resolves_to_non_public(name: str) -> bool:
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(name, 80)}
    except OSError:
        return False
    return bool(addresses) and all(
        not ipaddress.ip_address(a.split("%")[0]).is_global for a in addresses
    )


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images() -> Iterator[ImageServer]:
    server = ImageServer(slow_seconds=1.0).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api(
    postgres_url: str,
    standin: str,
    redis_url: str,
    images: ImageServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LiveServer]:
    settings_ = api_settings(
        postgres_url,
        standin,
        tmp_path_factory.mktemp("bad-input-home"),
        celery_broker_url=redis_url,
        image_allowed_hosts=[images.host],
        image_max_bytes=IMAGE_MAX_BYTES,
    )
    with LiveServer(create_app(settings_)) as server:
        yield server


@pytest.fixture(scope="module")
def client(api: LiveServer) -> Iterator[httpx2.Client]:
    with api.client() as c:
        yield c


# --- the API cases -----------------------------------------------------------------------------

Request = Callable[[str, ImageServer], dict[str, Any]]


@dataclass(frozen=True)
class Case:
    """One bad request: how to send it, the problem it must get, and what row it leaves."""

    name: str
    request: Request
    status: int
    code: str
    row: str  # "failed": a scan was created and failed; "none": refused before any scan


def body(**fields: Any) -> Request:
    """A JSON request with these fields plus the case's scan id."""
    return lambda sid, _img: {"json": {**fields, "scan_id": sid}}


def url(value: str | Callable[[ImageServer], str], **extra: Any) -> Request:
    """A JSON request for one image URL (a string, or built from the image server)."""

    def make(sid: str, img: ImageServer) -> dict[str, Any]:
        shown = value(img) if callable(value) else value
        return {"json": {"image_url": shown, "scan_id": sid, **extra}}

    return make


def raw(content: bytes, content_type: str) -> Request:
    return lambda _sid, _img: {"content": content, "headers": {"content-type": content_type}}


def upload(data: bytes, name: str = "photo.jpg", **fields: str) -> Request:
    return lambda sid, _img: {
        "files": {"file": (name, data, "image/jpeg")},
        "data": {"scan_id": sid, **fields},
    }


FORBIDDEN = "image_source_forbidden"
INVALID = "invalid_input"
UNSUPPORTED = "image_type_unsupported"
TOO_LARGE = "image_too_large"

CASES = [
    # not an http(s) URL at all
    Case("non_url_string", url("not a url"), 422, INVALID, "failed"),
    Case("file_scheme", url("file:///etc/passwd"), 422, INVALID, "failed"),
    Case("ftp_scheme", url("ftp://example.com/a.jpg"), 422, INVALID, "failed"),
    Case("javascript_scheme", url("javascript:alert(1)"), 422, INVALID, "failed"),
    Case("control_chars_in_url", url("http://exa\x01mple.com/a.jpg"), 422, INVALID, "failed"),
    Case("header_injection_in_url", url("http://example.com/a\r\nHost: x"), 422, INVALID,
         "failed"),
    # addresses we must never fetch
    Case("loopback_ipv4", url("http://127.0.0.1/a.jpg"), 422, FORBIDDEN, "failed"),
    Case("loopback_ipv6", url("http://[::1]:8080/a.jpg"), 422, FORBIDDEN, "failed"),
    Case("private_10", url("http://10.1.2.3/a.jpg"), 422, FORBIDDEN, "failed"),
    Case("private_192_168", url("http://192.168.0.10/a.jpg"), 422, FORBIDDEN, "failed"),
    Case("link_local_ipv6", url("http://[fe80::1]/a.jpg"), 422, FORBIDDEN, "failed"),
    Case("metadata_ip", url("http://169.254.169.254/latest/meta-data/"), 422, FORBIDDEN,
         "failed"),
    Case("metadata_name", url("http://metadata.google.internal/computeMetadata/v1/"), 422,
         FORBIDDEN, "failed"),
    Case("decimal_loopback", url("http://2130706433/a.jpg"), 422, FORBIDDEN, "failed"),
    Case("ipv4_mapped_loopback", url("http://[::ffff:127.0.0.1]/a.jpg"), 422, FORBIDDEN,
         "failed"),
    Case("userinfo_in_url", url("http://user:pass@example.com/a.jpg"), 422, FORBIDDEN,
         "failed"),
    # DNS names that lead to loopback
    Case("localhost", url(lambda img: f"http://localhost:{img.port}/photo.jpg"), 422,
         FORBIDDEN, "failed"),
    Case("localhost_upper_trailing_dot", url(lambda img: f"http://LOCALHOST.:{img.port}/"),
         422, FORBIDDEN, "failed"),
    Case("subdomain_of_localhost", url("http://app.localhost/photo.jpg"), 422, FORBIDDEN,
         "failed"),
    Case("host_name_resolving_to_loopback",
         url(lambda img: f"http://{HOSTNAME}:{img.port}/photo.jpg"), 422, FORBIDDEN, "failed"),
    # redirects that lead to them (the first hop is the allowed test server)
    Case("redirect_to_localhost", url(lambda img: img.url("/to-localhost")), 422, FORBIDDEN,
         "failed"),
    Case("redirect_to_metadata", url(lambda img: img.url("/to-metadata")), 422, FORBIDDEN,
         "failed"),
    Case("redirect_to_file", url(lambda img: img.url("/to-file")), 422, FORBIDDEN, "failed"),
    # bodies that are not (usable) images
    Case("html_served_as_image", url(lambda img: img.url("/page.html")), 415, UNSUPPORTED,
         "failed"),
    Case("svg_served_as_image", url(lambda img: img.url("/drawing.svg")), 415, UNSUPPORTED,
         "failed"),
    Case("truncated_jpeg", url(lambda img: img.url("/truncated.jpg")), 415, UNSUPPORTED,
         "failed"),
    Case("zero_byte_body", url(lambda img: img.url("/empty")), 422, "image_fetch_failed",
         "failed"),
    Case("oversized_body", url(lambda img: img.url("/big.bin")), 413, TOO_LARGE, "failed"),
    Case("oversized_stream_without_length", url(lambda img: img.url("/big-stream")), 413,
         TOO_LARGE, "failed"),
    Case("decompression_bomb", url(BOMB_URL), 413, TOO_LARGE, "failed"),
    Case("data_url_not_base64", url("data:image/jpeg;base64,!!!not*base64!!!"), 422, INVALID,
         "failed"),
    Case("data_url_of_html", url("data:image/jpeg;base64," + base64.b64encode(HTML).decode()),
         415, UNSUPPORTED, "failed"),
    # request shape and limits (refused before any scan exists)
    Case("user_text_100k", url("https://example.com/a.jpg", user_text="가" * 100_000), 422,
         INVALID, "none"),
    Case("too_many_images", body(images=[jpeg_data_url(8, 8)] * (MAX_IMAGES + 1)), 422,
         INVALID, "none"),
    Case("no_image", body(user_text="hello"), 422, INVALID, "none"),
    Case("both_image_fields", body(image_url=jpeg_data_url(8, 8), images=[jpeg_data_url(8, 8)]),
         422, INVALID, "none"),
    Case("empty_images_list", body(images=[]), 422, INVALID, "none"),
    Case("wrong_type_image_url", body(image_url=123), 422, INVALID, "none"),
    Case("wrong_type_images", body(images="https://example.com/a.jpg"), 422, INVALID, "none"),
    Case("wrong_type_user_text", body(image_url=jpeg_data_url(8, 8), user_text=["a"]), 422,
         INVALID, "none"),
    Case("wrong_type_mode", body(image_url=jpeg_data_url(8, 8), mode=True), 422, INVALID,
         "none"),
    Case("null_image_url", body(image_url=None, images=None), 422, INVALID, "none"),
    Case("unknown_field", body(image=jpeg_data_url(8, 8)), 422, INVALID, "none"),
    Case("bad_language", body(image_url=jpeg_data_url(8, 8), language="fr"), 422, INVALID,
         "none"),
    Case("bad_mode", body(image_url=jpeg_data_url(8, 8), mode="later"), 422, INVALID, "none"),
    Case("json_array_body", raw(b"[]", "application/json"), 422, INVALID, "none"),
    Case("invalid_json", raw(b'{"image_url": ', "application/json"), 422, INVALID, "none"),
    Case("zero_byte_json_body", raw(b"", "application/json"), 422, INVALID, "none"),
    Case("wrong_content_type", raw(b'{"image_url": "x"}', "text/plain"), 415,
         "unsupported_media_type", "none"),
    Case("form_urlencoded", raw(b"image_url=x", "application/x-www-form-urlencoded"), 415,
         "unsupported_media_type", "none"),
    Case("malformed_multipart", raw(b"--x\r\nnope", "multipart/form-data; boundary=x"), 422,
         INVALID, "none"),
    # uploads
    Case("multipart_without_file",
         lambda sid, _img: {"files": {"user_text": (None, "hi")}, "data": {"scan_id": sid}},
         422, INVALID, "none"),
    Case("multipart_file_as_text_field",
         lambda sid, _img: {"data": {"file": "not a file", "scan_id": sid},
                            "files": {"x": (None, "y")}},
         422, INVALID, "none"),
    Case("upload_html", upload(HTML, "photo.jpg"), 415, UNSUPPORTED, "none"),
    Case("upload_svg", upload(SVG, "photo.svg"), 415, UNSUPPORTED, "none"),
    Case("upload_zero_bytes", upload(b""), 422, INVALID, "none"),
    Case("upload_bad_language", upload(JPEG, language="xx"), 422, INVALID, "none"),
    Case("upload_truncated_jpeg", upload(TRUNCATED), 415, UNSUPPORTED, "failed"),
    Case("upload_decompression_bomb", upload(BOMB, "bomb.png"), 413, TOO_LARGE, "failed"),
    # queued mode: refused before anything is queued, the row says why
    Case("queued_file_scheme", url("file:///etc/passwd", mode="queued"), 422, INVALID,
         "failed"),
    Case("queued_loopback", url("http://127.0.0.1:6379/", mode="queued"), 422, FORBIDDEN,
         "failed"),
    Case("queued_metadata_name", url("http://instance-data/latest", mode="queued"), 422,
         FORBIDDEN, "failed"),
    Case("queued_user_text_100k",
         url("https://example.com/a.jpg", mode="queued", user_text="x" * 100_000), 422,
         INVALID, "none"),
]


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 25
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_request(case: Case, client: httpx2.Client, images: ImageServer,
                     postgres_url: str) -> None:
    if case.name == "host_name_resolving_to_loopback" and not _resolves_to_non_public(HOSTNAME):
        pytest.skip(f"{HOSTNAME!r} does not resolve to a non-public address here")
    scan_id = f"bad-{case.name[:40]}-{uuid.uuid4().hex[:8]}"
    response = client.post("/v1/scans", **case.request(scan_id, images))
    problem = assert_problem(response, case.status, case.code)
    stored = client.get(f"/v1/scans/{scan_id}")
    if case.row == "failed":
        assert problem["scan_id"] == scan_id
        assert stored.status_code == 200, stored.text
        record = stored.json()
        assert record["status"] == "failed"
        assert record["error"]["code"] == case.code
        assert record["error"]["message"] == problem["detail"]
    else:
        assert "scan_id" not in problem
        assert_problem(stored, 404, "scan_not_found")
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    "scan_id",
    ["has space", "x" * 65, "-dash-first", "../../etc/passwd", "1;DROP TABLE scans;--",
     "ab\x00cd", "é-accent", ""],
)
def test_malformed_scan_id_in_the_body(client: httpx2.Client, scan_id: str) -> None:
    response = client.post("/v1/scans", json={"image_url": jpeg_data_url(8, 8), "scan_id": scan_id})
    body_ = assert_problem(response, 422, INVALID)
    assert body_["errors"][0]["loc"] == "scan_id"


@pytest.mark.parametrize(
    "path",
    ["1'%20OR%20'1'%3D'1", "x%3BDROP%20TABLE%20scans", "%27", "a%0Ab", "%E2%80%AE", "x" * 65],
)
def test_malformed_scan_id_in_the_path(client: httpx2.Client, path: str) -> None:
    assert_problem(client.get(f"/v1/scans/{path}"), 422, INVALID)
    assert_problem(client.get(f"/v1/scans/{path}/events"), 422, INVALID)


def test_sql_looking_text_is_just_text(client: httpx2.Client, postgres_url: str) -> None:
    text = "'); DROP TABLE scans; -- \" OR 1=1; SELECT pg_sleep(5);"
    response = client.post("/v1/scans", json={"image_url": jpeg_data_url(), "user_text": text})
    assert response.status_code == 200, response.text
    stored = client.get(f"/v1/scans/{response.json()['scan_id']}").json()
    assert stored["inputs"]["user_text"] == text
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT count(*) FROM scans").fetchone()[0] > 0  # type: ignore[index]


def test_control_characters_in_user_text_are_removed(client: httpx2.Client) -> None:
    text = "병\x00뚜껑\x1b[31m\x7f 라벨\ttab\nnewline\u202e"
    response = client.post("/v1/scans", json={"image_url": jpeg_data_url(), "user_text": text})
    assert response.status_code == 200, response.text
    stored = client.get(f"/v1/scans/{response.json()['scan_id']}").json()
    assert stored["inputs"]["user_text"] == "병뚜껑[31m 라벨\ttab\nnewline\u202e"


def test_control_characters_in_a_failing_request_are_stored_safely(
    client: httpx2.Client,
) -> None:
    # A NUL would break the jsonb insert of the failure row if it reached the database.
    response = client.post(
        "/v1/scans", json={"image_url": "file:///etc/passwd", "user_text": "a\x00b"}
    )
    body_ = assert_problem(response, 422, INVALID)
    assert client.get(f"/v1/scans/{body_['scan_id']}").json()["status"] == "failed"


def test_request_body_over_the_limit(api: LiveServer) -> None:
    head = (
        "POST /v1/scans HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {13 * 1024 * 1024}\r\n\r\n"
    )
    status, _headers, data, sent = raw_request(api.port, head)
    assert status == 413 and sent == 0
    assert json.loads(data)["type"].endswith("/request_too_large")


def test_the_service_is_healthy_after_all_of_it(client: httpx2.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    good = client.post("/v1/scans", json={"image_url": jpeg_data_url(), "user_text": "캔"})
    assert good.status_code == 200 and good.json()["status"] == "done"
    upload_ = client.post("/v1/scans", files={"file": ("ok.jpg", make_jpeg(), "image/jpeg")})
    assert upload_.status_code == 200


# --- the CLI cases -----------------------------------------------------------------------------


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, postgres_url: str, standin: str, tmp_path: Path,
            images: ImageServer) -> None:
    for name in ("CELERY_BROKER_URL", "WASTE_PIPELINE_EMBEDDED", "WASTE_PIPELINE_STORE_RESULTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WASTE_PIPELINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WASTE_PIPELINE_DATABASE_URL", postgres_url)
    monkeypatch.setenv("OPENAI_BASE_URL", standin)
    monkeypatch.setenv("OPENAI_API_KEY", TEST_API_KEY)
    monkeypatch.setenv("WASTE_PIPELINE_MODEL_MAX_RETRIES", "0")
    monkeypatch.setenv("WASTE_PIPELINE_IMAGE_TIMEOUT", "3")
    monkeypatch.setenv("WASTE_PIPELINE_IMAGE_MAX_BYTES", str(IMAGE_MAX_BYTES))
    monkeypatch.setenv("WASTE_PIPELINE_IMAGE_ALLOWED_HOSTS", json.dumps([images.host]))


def _file(tmp: Path, name: str, data: bytes) -> str:
    path = tmp / name
    path.write_bytes(data)
    return str(path)


CLI_CASES: list[tuple[str, Callable[[Path, ImageServer], list[str]], str]] = [
    ("file_scheme", lambda t, i: ["file:///etc/passwd"], INVALID),
    ("ftp_scheme", lambda t, i: ["ftp://example.com/a.jpg"], INVALID),
    ("loopback", lambda t, i: ["http://127.0.0.1/a.jpg"], FORBIDDEN),
    ("metadata_ip", lambda t, i: ["http://169.254.169.254/latest/meta-data/"], FORBIDDEN),
    ("localhost", lambda t, i: [f"http://localhost:{i.port}/photo.jpg"], FORBIDDEN),
    ("redirect_to_metadata", lambda t, i: [i.url("/to-metadata")], FORBIDDEN),
    ("html_served", lambda t, i: [i.url("/page.html")], UNSUPPORTED),
    ("html_file", lambda t, i: [_file(t, "page.jpg", HTML)], UNSUPPORTED),
    ("svg_file", lambda t, i: [_file(t, "x.svg.png", SVG)], UNSUPPORTED),
    ("truncated_jpeg_file", lambda t, i: [_file(t, "cut.jpg", TRUNCATED)], UNSUPPORTED),
    ("zero_byte_file", lambda t, i: [_file(t, "empty.jpg", b"")], UNSUPPORTED),
    ("oversized_file", lambda t, i: [_file(t, "big.jpg", JPEG[:3] + bytes(200_000))],
     TOO_LARGE),
    ("decompression_bomb_file", lambda t, i: [_file(t, "bomb.png", BOMB)], TOO_LARGE),
    ("user_text_100k", lambda t, i: [_file(t, "ok.jpg", JPEG), "--text", "가" * 100_000],
     INVALID),
]


@pytest.mark.parametrize(("name", "argv", "code"), CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_bad_input_through_the_cli(
    name: str,
    argv: Callable[[Path, ImageServer], list[str]],
    code: str,
    cli_env: None,
    tmp_path: Path,
    images: ImageServer,
    client: httpx2.Client,
) -> None:
    out, err = io.StringIO(), io.StringIO()
    status = main(["scan", "--json", "-q", *argv(tmp_path, images)], stdout=out, stderr=err)
    assert status == 1, err.getvalue()
    (line,) = [json.loads(x) for x in out.getvalue().splitlines()]
    assert line["status"] == "failed"
    assert line["error"]["code"] == code, line
    assert line["type"].endswith("/" + code)
    stored = client.get(f"/v1/scans/{line['scan_id']}").json()  # same database as the API
    assert stored["status"] == "failed" and stored["error"]["code"] == code
    # and readable without --json
    out2 = io.StringIO()
    assert main(["scan", "-q", *argv(tmp_path, images)], stdout=out2, stderr=io.StringIO()) == 1
    assert out2.getvalue().startswith("failed ") and f" {code}: " in out2.getvalue()


def test_cli_control_characters_in_text_are_removed(cli_env: None, tmp_path: Path) -> None:
    out = io.StringIO()
    status = main(
        ["scan", "--json", "-q", _file(tmp_path, "ok.jpg", JPEG), "--text", "캔\x1b[2J\x07!"],
        stdout=out,
        stderr=io.StringIO(),
    )
    assert status == 0
    assert json.loads(out.getvalue())["inputs"]["user_text"] == "캔[2J!"


def test_cli_text_that_is_not_utf8(cli_env: None, tmp_path: Path) -> None:
    # A non-UTF-8 argument reaches Python as a lone surrogate (surrogateescape): it must be
    # dropped, not sent to PostgreSQL (which refuses it in jsonb).
    out = io.StringIO()
    status = main(
        ["scan", "--json", "-q", _file(tmp_path, "ok.jpg", JPEG), "--text", "ab\udcffcd"],
        stdout=out,
        stderr=io.StringIO(),
    )
    assert status == 0, out.getvalue()
    assert json.loads(out.getvalue())["inputs"]["user_text"] == "abcd"


def test_cli_input_that_is_neither_file_nor_url(cli_env: None) -> None:
    out = io.StringIO()
    assert main(["scan", "--json", "-q", "not a url"], stdout=out, stderr=io.StringIO()) == 1
    line = json.loads(out.getvalue())
    assert line["error"]["code"] == "input_unreadable" and line["scan_id"] is None


# --- properties of the validators ----------------------------------------------------------------

_SCAN_ID_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_C0 = {chr(c) for c in range(0x20)} - {"\t", "\n", "\r"}


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=80), st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,70}",
                                                     fullmatch=True)))
def test_scan_id_validation(value: str) -> None:
    ok = 1 <= len(value) <= 64 and set(value) <= _SCAN_ID_CHARS and value[0] not in "_-"
    try:
        model_validate_scan_id(value)
    except ValueError:
        assert not ok
    else:
        assert ok
    try:
        ScanCreate.model_validate({"image_url": "data:,", "scan_id": value})
    except ValidationError:
        assert not ok
    else:
        assert ok


_URLS = st.one_of(
    st.text(max_size=60),
    st.builds(lambda scheme, rest: scheme + rest,
              st.sampled_from(["http://", "HTTPS://", "data:", "file://", "ftp://", "gopher://",
                               " http://", "javascript:", "hTtP://"]),
              st.text(max_size=40)),
)


@settings(max_examples=400, deadline=None)
@given(_URLS)
def test_image_url_validation(value: str) -> None:
    try:
        image = ImageInput(url=value)
    except ValidationError:
        return
    low = value[:16].lower()
    assert low.startswith(("http://", "https://", "data:"))
    assert not (set(value[:4096]) & (_C0 | {"\x7f"}))
    assert not any(c.isspace() and c != " " for c in value[:4096])
    assert image.describe()["kind"] in ("url", "data_url")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_user_text_cleaning(value: str) -> None:
    cleaned = clean_user_text(value)
    assert clean_user_text(cleaned) == cleaned  # idempotent
    assert len(cleaned) <= len(value)
    assert not (set(cleaned) & (_C0 | {"\x7f"}))
    assert not any(0xD800 <= ord(c) <= 0xDFFF for c in cleaned)
    cleaned.encode("utf-8")  # storable: no lone surrogates
    assert cli_clean_text(value) == cleaned  # the CLI applies the same rule
    # the pipeline's own cleaning (ScanRequest) agrees on the C0 controls
    if len(value) <= MAX_USER_TEXT:
        stored = ScanRequest(images=["data:,"], user_text=value).user_text
        assert not (set(stored) & (_C0 | {"\x7f"}))


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)
_BODIES = st.fixed_dictionaries(
    {},
    optional={
        "image_url": _JSON | st.just(jpeg_data_url(8, 8)),
        "images": _JSON | st.lists(st.just("data:,"), max_size=7),
        "user_text": _JSON | st.text(max_size=50),
        "language": _JSON | st.sampled_from(["ko", "en", "fr"]),
        "mode": _JSON | st.sampled_from(["inline", "queued"]),
        "scan_id": _JSON | st.text(max_size=10),
    },
)


@settings(max_examples=300, deadline=None)
@given(_BODIES)
def test_request_model_accepts_only_well_formed_bodies(data: dict[str, Any]) -> None:
    try:
        parsed = ScanCreate.model_validate_json(json.dumps(data))
    except ValidationError:
        return
    images_ = parsed.image_list()
    assert 1 <= len(images_) <= MAX_IMAGES and all(isinstance(x, str) and x for x in images_)
    assert len(parsed.user_text) <= MAX_USER_TEXT
    assert parsed.user_text == clean_user_text(parsed.user_text)
    assert parsed.mode in ("inline", "queued") and parsed.language in (None, "ko", "en")
    if parsed.scan_id is not None:
        model_validate_scan_id(parsed.scan_id)


@settings(max_examples=300, deadline=None)
@given(st.ip_addresses())
def test_only_public_addresses_pass_the_url_check(ip: Any) -> None:
    host = f"[{ip}]" if ip.version == 6 else str(ip)
    try:
        check_url(f"http://{host}/a.jpg")
    except (ImageSourceForbiddenError, InvalidInputError):
        return
    assert ip.is_global and not ip.is_multicast


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(_BODIES)
def test_random_requests_never_get_a_server_error(client: httpx2.Client,
                                                  data: dict[str, Any]) -> None:
    image = data.get("image_url")
    assume(not (isinstance(image, str) and image.lower().startswith(("http://", "https://"))))
    data.pop("mode", None)  # queued mode would need a worker; inline covers the same parsing
    response = client.post("/v1/scans", json=data)
    assert response.status_code in (200, 413, 415, 422), response.text
    if response.status_code != 200:
        assert response.headers["content-type"].startswith("application/problem+json")
