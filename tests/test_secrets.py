"""No secret in any log or response (issue 7, item 3).

A run with a known fake API key (``tests.helpers.TEST_API_KEY``), a database role with a
password (created in the test PostgreSQL; the URL carries it) and a broker URL with a password:
good scans, failing scans, every kind of bad request, readiness, OpenAPI, events. Everything
is captured — every response (headers and body), every log record at DEBUG, the process's
stdout/stderr, and the output of real ``waste-pipeline serve`` / ``scan`` processes — and the
test fails if any secret appears, in clear or percent-encoded.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import httpx2
import psycopg
import pytest
from psycopg import sql

from tests.helpers import TEST_API_KEY, jpeg_data_url, make_jpeg
from tests.imageserver import closed_port
from tests.test_api import LiveServer, api_settings
from waste_pipeline.api import create_app

SCRIPT = str(Path(sys.executable).with_name("waste-pipeline"))
DB_PASSWORD = "wpPw-73c1/x@9Zq"  # '/' and '@' so the URL must percent-encode it
BROKER_PASSWORD = "brk-Pw-5d2e8a"
ROLE = "wp_secret_user"
DATABASE = "wp_secrets"


def secrets_in(text: str) -> list[str]:
    """Which secrets (or recognisable parts of them) appear in ``text``."""
    needles = {
        "api key": TEST_API_KEY,
        "api key tail": TEST_API_KEY[-12:],
        "db password": DB_PASSWORD,
        "db password (encoded)": quote(DB_PASSWORD, safe=""),
        "db password head": DB_PASSWORD[:9],
        "broker password": BROKER_PASSWORD,
    }
    return [name for name, value in needles.items() if value in text]


@pytest.fixture(scope="module")
def secret_dsn(postgres_url: str) -> str:
    """A database owned by a role with a password; its URL holds the password."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,)).fetchone()
        verb = "ALTER" if exists else "CREATE"
        conn.execute(
            sql.SQL(verb + " ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(ROLE), sql.Literal(DB_PASSWORD)
            )
        )
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone():
            pass
        else:
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(DATABASE), sql.Identifier(ROLE)
                )
            )
    parts = urlsplit(postgres_url)
    netloc = f"{ROLE}:{quote(DB_PASSWORD, safe='')}@{parts.hostname}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, f"/{DATABASE}", "", ""))


@pytest.fixture(scope="module")
def broker_url() -> str:
    """A Redis URL with a password, on a port where nothing listens (publishes fail)."""
    return f"redis://:{BROKER_PASSWORD}@127.0.0.1:{closed_port()}/0"


def exercise(c: httpx2.Client) -> list[str]:
    """Good and bad requests of every kind; returns every response, headers and body."""
    seen: list[str] = []

    def keep(response: httpx2.Response) -> httpx2.Response:
        seen.append(f"{response.status_code} {dict(response.headers)}\n{response.text}")
        return response

    good = keep(c.post("/v1/scans", json={"image_url": jpeg_data_url(), "user_text": "캔"}))
    assert good.status_code == 200, good.text
    scan_id = good.json()["scan_id"]
    keep(c.get(f"/v1/scans/{scan_id}"))
    with c.stream("GET", f"/v1/scans/{scan_id}/events") as stream:
        seen.append(stream.read().decode())
    keep(c.post("/v1/scans", files={"file": ("a.jpg", make_jpeg(), "image/jpeg")}))
    for text in ("[[standin:500]]", "[[standin:429]]", "[[standin:refusal]]",
                 "[[standin:schema]]", "[[standin:malformed]]"):
        failed = keep(c.post("/v1/scans", json={"image_url": jpeg_data_url(), "user_text": text}))
        assert failed.status_code >= 400
        with c.stream("GET", f"/v1/scans/{failed.json()['scan_id']}/events") as stream:
            seen.append(stream.read().decode())
    for image in ("file:///etc/passwd", "http://127.0.0.1/a.jpg", "http://localhost/",
                  "http://user:hunter2@example.com/a.jpg", "not a url"):
        keep(c.post("/v1/scans", json={"image_url": image}))
    keep(c.post("/v1/scans", json={"image_url": jpeg_data_url(), "mode": "queued"}))
    keep(c.post("/v1/scans", json={"image_url": 5}))
    keep(c.post("/v1/scans", content=b"{", headers={"content-type": "application/json"}))
    keep(c.post("/v1/scans", content=b"x", headers={"content-type": "text/plain"}))
    keep(c.post("/v1/scans", files={"file": ("x.jpg", b"<html>", "image/jpeg")}))
    keep(c.get("/v1/scans/unknown-scan"))
    keep(c.get("/v1/scans/bad%20id"))
    keep(c.get("/nowhere"))
    keep(c.delete("/v1/scans/x"))
    keep(c.get("/healthz"))
    keep(c.get("/readyz"))
    keep(c.get("/openapi.json"))
    keep(c.get("/docs"))
    return seen


def test_no_secret_in_responses_or_logs_in_process(
    secret_dsn: str,
    broker_url: str,
    standin: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("openai", "httpx2", "httpcore2", "asyncpg", "uvicorn", "waste_pipeline",
                 "celery", "kombu"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    settings = api_settings(secret_dsn, standin, tmp_path, celery_broker_url=broker_url)
    assert settings.dsn() == secret_dsn and DB_PASSWORD not in secret_dsn  # it is encoded
    with LiveServer(create_app(settings), log_level="trace") as server, server.client() as c:
        seen = exercise(c)
        # the role really works: its own database holds the rows
        assert c.get("/readyz").json()["checks"]["database"]["ok"] is True
    out, err = capfd.readouterr()
    logs = "\n".join(
        f"{r.name} {r.levelname} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records
    )
    assert len(caplog.records) > 20  # DEBUG really was captured
    assert any(r.name.startswith("openai") for r in caplog.records)
    for what, text in (("responses", "\n".join(seen)), ("logs", logs), ("stdout", out),
                       ("stderr", err)):
        assert secrets_in(text) == [], f"secret in {what}"


def _serve(env: dict[str, str], port: int, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [SCRIPT, "-vv", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "debug", *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _stop(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
    try:
        output, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate(timeout=10)
    return output


@pytest.fixture
def secret_env(secret_dsn: str, broker_url: str, standin: str, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OPENAI_", "CELERY_", "WASTE_PIPELINE_"))}
    env.update(
        OPENAI_API_KEY=TEST_API_KEY,
        OPENAI_BASE_URL=standin,
        WASTE_PIPELINE_DATABASE_URL=secret_dsn,
        CELERY_BROKER_URL=broker_url,
        WASTE_PIPELINE_MODEL_MAX_RETRIES="0",
        WASTE_PIPELINE_HOME=str(tmp_path / "home"),
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.mark.timeout(90)
def test_no_secret_from_a_real_server_process(secret_env: dict[str, str]) -> None:
    port = closed_port()
    proc = _serve(secret_env, port)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx2.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            assert proc.poll() is None, _stop(proc)
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        with httpx2.Client(base_url=base, timeout=30) as c:
            seen = exercise(c)
    finally:
        output = _stop(proc)
    assert "OPENAI_API_KEY is not set" not in output  # a key is set: no stand-in announced
    assert "DEBUG" in output  # -vv really logged at DEBUG
    assert secrets_in("\n".join(seen)) == []
    assert secrets_in(output) == []


def _wait(proc: subprocess.Popen[str], seconds: float) -> int | None:
    try:
        return proc.wait(seconds)
    except subprocess.TimeoutExpired:
        return None


@pytest.mark.timeout(60)
def test_no_secret_when_the_database_is_unreachable(secret_env: dict[str, str]) -> None:
    parts = urlsplit(secret_env["WASTE_PIPELINE_DATABASE_URL"])
    credentials = parts.netloc.rsplit("@", 1)[0]
    dead = urlunsplit((parts.scheme, f"{credentials}@127.0.0.1:{closed_port()}", parts.path,
                       "", ""))
    proc = _serve({**secret_env, "WASTE_PIPELINE_DATABASE_URL": dead}, closed_port())
    status = _wait(proc, 30)
    output = _stop(proc)
    assert status not in (None, 0), output
    assert "database_unavailable" in output.lower() or "cannot connect" in output.lower()
    assert secrets_in(output) == []


@pytest.mark.timeout(60)
def test_no_secret_from_the_cli(secret_env: dict[str, str], tmp_path: Path) -> None:
    photo = tmp_path / "a.jpg"
    photo.write_bytes(make_jpeg())
    proc = subprocess.run(
        [SCRIPT, "-vv", "scan", "--json", str(photo), "file:///etc/passwd",
         "http://u:hunter2@example.com/a.jpg", "--text", "[[standin:500]]"],
        env=secret_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    assert [x["status"] for x in lines] == ["failed"] * 3
    assert "DEBUG" in proc.stderr
    assert secrets_in(proc.stdout) == [] and secrets_in(proc.stderr) == []
    ok = subprocess.run(
        [SCRIPT, "scan", "--json", str(photo), "--text", f"ok {uuid.uuid4().hex}"],
        env=secret_env, capture_output=True, text=True, timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert secrets_in(ok.stdout + ok.stderr) == []
