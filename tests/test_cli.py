"""The ``waste-pipeline`` command line and the embedded-defaults stack (``stack.py``).

Most tests call :func:`waste_pipeline.cli.main` in-process with the environment pointing at
the session's PostgreSQL and the stand-in; a few run the installed entry point as a real
process, and one runs with nothing configured (embedded PostgreSQL + stand-in, announced).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx2
import psycopg
import pytest

from tests.helpers import TEST_API_KEY, jpeg_data_url, make_jpeg
from waste_pipeline.cli import main
from waste_pipeline.settings import Settings
from waste_pipeline.stack import STANDIN_NOTICE, EmbeddedStack, describe_url

SCRIPT = str(Path(sys.executable).with_name("waste-pipeline"))
CONFIG_VARS = (
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "WASTE_PIPELINE_DATABASE_URL",
    "CELERY_BROKER_URL",
    "CELERY_RESULT_BACKEND",
    "WASTE_PIPELINE_EMBEDDED",
    "WASTE_PIPELINE_HOME",
    "WASTE_PIPELINE_STORE_RESULTS",
)


def run_cli(*args: str) -> tuple[int, str, str]:
    """Run the CLI in-process; (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = main(list(args), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def row(postgres_url: str, scan_id: str) -> dict[str, Any] | None:
    with psycopg.connect(postgres_url) as conn:
        found = conn.execute(
            "SELECT status, error FROM scans WHERE id = %s", (scan_id,)
        ).fetchone()
    return {"status": found[0], "error": found[1]} if found else None


@pytest.fixture
def bare_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No configuration at all (a fresh home in tmp_path)."""
    for name in CONFIG_VARS:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("WASTE_PIPELINE_HOME", str(home))
    return home


@pytest.fixture
def cli_env(bare_env: Path, monkeypatch: pytest.MonkeyPatch, postgres_url: str, standin: str
            ) -> dict[str, str]:
    """Everything configured: the session's database, the stand-in, the fake key."""
    env = {
        "WASTE_PIPELINE_DATABASE_URL": postgres_url,
        "OPENAI_BASE_URL": standin,
        "OPENAI_API_KEY": TEST_API_KEY,
        "WASTE_PIPELINE_MODEL_MAX_RETRIES": "0",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(make_jpeg(200, 150))
    (folder / "b.PNG").write_bytes(make_jpeg(120, 90))  # a JPEG named .PNG: content decides
    (folder / "notes.txt").write_text("not a photo")
    (folder / ".hidden.jpg").write_bytes(make_jpeg(10, 10))
    return folder


# --- scan --------------------------------------------------------------------------------------


def test_scan_one_file_readable(cli_env: dict[str, str], photos: Path, postgres_url: str) -> None:
    code, out, err = run_cli("scan", str(photos / "a.jpg"), "--text", "유리병이에요")
    assert code == 0, err
    assert out.startswith("done  ")
    assert "rules:" in out and "1. " in out
    scan_id = out.split("scan ", 1)[1].split()[0]
    stored = row(postgres_url, scan_id)
    assert stored is not None and stored["status"] == "done"
    assert STANDIN_NOTICE not in err  # OPENAI_BASE_URL is set: no stand-in was started
    assert "│" in err and "done" in err  # the summary table


def test_scan_folder_and_urls_as_json_lines(
    cli_env: dict[str, str], photos: Path, postgres_url: str
) -> None:
    code, out, err = run_cli("scan", str(photos), jpeg_data_url(64, 64), "--json", "-q")
    assert code == 0, err
    lines = json_lines(out)
    assert [Path(x["input"]).name for x in lines[:2]] == ["a.jpg", "b.PNG"]
    assert lines[2]["input"].startswith("data:image/jpeg;base64,")
    assert all(x["status"] == "done" for x in lines)
    assert err == ""  # -q: no progress, no summary
    for x in lines:
        assert row(postgres_url, x["scan_id"])["status"] == "done"  # type: ignore[index]


def test_a_failed_scan_makes_the_exit_status_1(
    cli_env: dict[str, str], photos: Path, tmp_path: Path, postgres_url: str
) -> None:
    fake = tmp_path / "fake.jpg"
    fake.write_bytes(b"<!doctype html><html></html>")
    code, out, err = run_cli("scan", str(photos / "a.jpg"), str(fake), "--json")
    assert code == 1
    good, bad = json_lines(out)
    assert good["status"] == "done"
    assert bad["status"] == "failed"
    assert bad["error"]["code"] == "image_type_unsupported"
    assert bad["type"] == "https://waste-pipeline.dev/problems/image_type_unsupported"
    assert row(postgres_url, bad["scan_id"])["status"] == "failed"  # type: ignore[index]
    assert "failures: image_type_unsupported ×1" in err


def test_readable_failure_names_the_code_and_the_scan(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    code, out, _ = run_cli("scan", "file:///etc/passwd")
    assert code == 1
    assert out.startswith("failed file:///etc/passwd  invalid_input:")
    assert "(scan " in out


def test_scans_run_concurrently_with_a_bound(cli_env: dict[str, str], photos: Path) -> None:
    files = [str(photos / "a.jpg")] * 4
    # Each scan makes two model calls of 0.4 s: 4 scans in sequence would take >= 3.2 s.
    start = time.monotonic()
    code, out, err = run_cli(
        "scan", *files, "--text", "[[standin:latency=0.4]]", "--concurrency", "4", "--json", "-q"
    )
    took = time.monotonic() - start
    assert code == 0, err
    assert len(json_lines(out)) == 4
    assert took < 2.4, f"4 scans took {took:.2f} s: not concurrent"


def test_no_store_needs_no_database(bare_env: Path, standin: str, photos: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", standin)
    code, out, err = run_cli("scan", str(photos / "a.jpg"), "--no-store", "--json")
    assert code == 0, err
    assert json_lines(out)[0]["status"] == "done"
    assert "PostgreSQL" not in err
    assert not (bare_env / "postgres").exists()


def test_missing_input_and_empty_folder(cli_env: dict[str, str], tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, _ = run_cli("scan", str(tmp_path / "nope.jpg"), str(empty), "--json", "-q")
    assert code == 1
    missing, nothing = json_lines(out)
    assert missing["error"]["code"] == "input_unreadable" and missing["scan_id"] is None
    assert "no such file" in missing["error"]["message"]
    assert nothing["error"]["message"] == "no image files in this folder"


def test_usage_errors_exit_2(cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("scan")[0] == 2
    assert run_cli("scan", "x.jpg", "--language", "fr")[0] == 2
    assert run_cli("scan", "x.jpg", "--concurrency", "0")[0] == 2
    assert run_cli("frobnicate")[0] == 2
    assert run_cli()[0] == 2
    assert "invalid choice" in capsys.readouterr().err


# --- db, demo, stand-in --------------------------------------------------------------------------


def test_db_init_is_safe_twice(cli_env: dict[str, str]) -> None:
    for _ in range(2):
        code, out, err = run_cli("db", "init")
        assert code == 0, err
        assert out.startswith("database schema ready (postgresql://127.0.0.1:")


def test_db_init_reports_an_unreachable_database(
    bare_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.imageserver import closed_port

    monkeypatch.setenv(
        "WASTE_PIPELINE_DATABASE_URL", f"postgresql://u:pw-hidden-99@127.0.0.1:{closed_port()}/x"
    )
    code, out, err = run_cli("db", "init")
    assert code == 3
    assert "database_unavailable" in err
    assert "pw-hidden-99" not in out + err


def test_stand_in_delegates_to_its_own_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stand-in", "--help"]) == 0
    assert "NOT from a model" in capsys.readouterr().out
    assert main(["stand-in", "--fault-rate", "7"]) == 2


# --- embedded defaults ---------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_scan_with_nothing_configured_uses_embedded_postgres_and_the_stand_in(
    bare_env: Path, photos: Path
) -> None:
    code, out, err = run_cli("scan", str(photos / "a.jpg"), "--json")
    assert code == 0, err
    assert STANDIN_NOTICE in err.splitlines()
    assert "WASTE_PIPELINE_DATABASE_URL is not set: using the embedded PostgreSQL in" in err
    result = json_lines(out)[0]
    assert result["status"] == "done"
    assert result["answer"]["answer"].startswith("[stand-in]")
    # It stopped the PostgreSQL it started; the data stays in the home.
    from waste_pipeline.embedded import EmbeddedPostgres

    assert not EmbeddedPostgres(bare_env / "postgres").is_running()
    assert (bare_env / "postgres" / "pgdata").is_dir()


def test_stack_fills_only_what_is_missing(postgres_url: str, standin: str, tmp_path: Path) -> None:
    said: list[str] = []
    full = Settings(
        openai_api_key=TEST_API_KEY,
        database_url=postgres_url,
        celery_broker_url="redis://127.0.0.1:1/0",
        home=tmp_path,
    )
    with EmbeddedStack(full, announce=said.append) as stack:
        assert stack.settings == full
        assert stack.started == [] and said == []
        env = stack.env()
    assert env["OPENAI_API_KEY"] == TEST_API_KEY
    assert env["WASTE_PIPELINE_DATABASE_URL"] == postgres_url
    assert "OPENAI_BASE_URL" not in env


def test_stack_starts_and_stops_the_stand_in(postgres_url: str, tmp_path: Path) -> None:
    said: list[str] = []
    base = Settings(database_url=postgres_url, home=tmp_path)
    embedded = EmbeddedStack(base, need_broker=False, announce=said.append)
    with embedded as stack:
        url = stack.settings.openai_base_url
        assert url and url == stack.standin_url and stack.started == ["stand-in"]
        assert said == [STANDIN_NOTICE]
        assert httpx2.get(f"{url}/models", headers={"Authorization": "Bearer x"}).status_code == 200
    with pytest.raises(httpx2.TransportError):
        httpx2.get(f"{url}/models", timeout=1.0)


def test_stack_stand_in_as_a_process(tmp_path: Path) -> None:
    base = Settings(home=tmp_path, store_results=False)
    with EmbeddedStack(
        base, need_broker=False, standin="process", announce=lambda _: None
    ) as stack:
        url = stack.settings.openai_base_url
        assert url
        assert httpx2.get(f"{url}/models", headers={"Authorization": "Bearer x"}).status_code == 200
    with pytest.raises(httpx2.TransportError):
        httpx2.get(f"{url}/models", timeout=1.0)


def test_stack_can_be_turned_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WASTE_PIPELINE_EMBEDDED", "0")
    base = Settings(home=tmp_path)
    with EmbeddedStack(base, announce=lambda _: pytest.fail("announced")) as stack:
        assert stack.settings.dsn() is None and stack.settings.openai_base_url is None


def test_describe_url_hides_credentials() -> None:
    assert describe_url("postgresql://u:secret@db:5432/x") == "postgresql://db:5432/x"
    assert describe_url("redis://:pw@127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert describe_url(None) == "(not set)"


# --- the installed entry point -------------------------------------------------------------------


def test_entry_point_runs_as_a_process(cli_env: dict[str, str], photos: Path) -> None:
    env = {**os.environ, **cli_env}
    proc = subprocess.run(
        [SCRIPT, "scan", str(photos / "a.jpg"), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json_lines(proc.stdout)[0]["status"] == "done"
    proc = subprocess.run([SCRIPT, "--help"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0
    for command in ("scan", "serve", "stand-in", "db", "demo"):
        assert command in proc.stdout


def _wait_http(url: str, proc: subprocess.Popen[str], timeout: float = 60.0) -> httpx2.Response:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return httpx2.get(url, timeout=5)
        except httpx2.TransportError:
            if proc.poll() is not None:
                raise AssertionError(f"exited {proc.returncode}: {proc.communicate()[0]}") from None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _interrupt(proc: subprocess.Popen[str]) -> str:
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
    try:
        return proc.communicate(timeout=30)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.communicate(timeout=10)[0]


@pytest.mark.timeout(120)
def test_serve_with_nothing_configured(bare_env: Path, tmp_path: Path) -> None:
    from tests.imageserver import closed_port
    from waste_pipeline.embedded import EmbeddedPostgres, EmbeddedRedis

    port = closed_port()
    env = {k: v for k, v in os.environ.items() if k not in CONFIG_VARS}
    env["WASTE_PIPELINE_HOME"] = str(bare_env)
    proc = subprocess.Popen(
        [SCRIPT, "serve", "--port", str(port), "--log-level", "warning"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    try:
        ready = _wait_http(f"http://127.0.0.1:{port}/readyz", proc)
        assert ready.status_code == 200, ready.text
        scan = httpx2.post(
            f"http://127.0.0.1:{port}/v1/scans", json={"image_url": jpeg_data_url()}, timeout=30
        )
        assert scan.status_code == 200 and scan.json()["status"] == "done"
    finally:
        output = _interrupt(proc)
    assert proc.returncode == 0, output
    assert STANDIN_NOTICE in output
    assert "using the embedded PostgreSQL" in output and "using the embedded Redis" in output
    # It stopped the servers it started.
    assert not EmbeddedPostgres(bare_env / "postgres").is_running()
    assert not EmbeddedRedis(bare_env / "redis").is_running()


@pytest.mark.timeout(60)
def test_uvicorn_serves_the_module_level_app(cli_env: dict[str, str]) -> None:
    from tests.imageserver import closed_port

    port = closed_port()
    env = {**os.environ, **cli_env, "CELERY_BROKER_URL": "redis://127.0.0.1:1/0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "waste_pipeline.api:app", "--port", str(port),
         "--log-level", "warning"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    try:
        assert _wait_http(f"http://127.0.0.1:{port}/healthz", proc).json() == {"status": "ok"}
        scan = httpx2.post(
            f"http://127.0.0.1:{port}/v1/scans", json={"image_url": jpeg_data_url()}, timeout=30
        )
        assert scan.status_code == 200, scan.text
    finally:
        output = _interrupt(proc)
    assert "not set" not in output  # everything was configured: no embedded default
