"""The benchmarks run (tiny sizes) and write their reports; no timing is asserted.

``python -m bench --quick`` starts everything the real run starts (stand-in, image server,
embedded PostgreSQL and Redis, Celery workers of every pool) with tiny sizes;
``python -m bench.load --quick`` runs the Locust scenario with 5 users for a few seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CELERY_", "OPENAI_", "WASTE_PIPELINE_", "PYTEST_"))
    }
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "src")])
    return env


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quick_bench_writes_the_report(tmp_path: Path) -> None:
    """``python -m bench --quick`` finishes and writes the Markdown table, JSON and chart."""
    proc = _run("bench", "--quick", "--out", str(tmp_path), timeout=850)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = (tmp_path / "latest.md").read_text()
    assert "## CPU overhead per scan" in report
    assert "## Worker throughput" in report
    assert "## Memory" in report
    assert "Intel" in report or "CPU" in report
    png = (tmp_path / "throughput.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    results = json.loads((tmp_path / "latest.json").read_text())
    assert {"sync/bare", "async/bare", "sync/handwritten"} <= set(results["overhead"]["ratios"])
    assert {r["pool"] for r in results["throughput"]["rows"]} >= {"gevent", "threads", "prefork"}
    assert all(r["done"] > 0 for r in results["throughput"]["rows"])
    assert results["memory"]["ratio"] > 0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quick_load_scenario_runs(tmp_path: Path) -> None:
    """``python -m bench.load --quick`` runs both workers and writes ``load.md``."""
    proc = _run("bench.load", "--quick", "--out", str(tmp_path), timeout=550)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((tmp_path / "load.json").read_text())
    twin, naive = results["rows"]
    assert twin["scans"] > 0 and twin["done"] > 0
    assert naive["scans"] > 0
    assert "| twin" in (tmp_path / "load.md").read_text()


def test_only_one_part_can_be_chosen() -> None:
    """``--only`` accepts the three parts and nothing else."""
    from bench.__main__ import build_parser

    parser = build_parser()
    assert parser.parse_args(["--only", "overhead", "--only", "memory"]).only == [
        "overhead",
        "memory",
    ]
    with pytest.raises(SystemExit):
        parser.parse_args(["--only", "everything"])


def test_handwritten_baseline_sends_the_pipelines_requests() -> None:
    """The hand-written code and the bare SDK calls send what the pipeline sends."""
    from bench.handwritten import HandwrittenScanner
    from bench.overhead import USER_TEXT, _bare_requests, _prepared_image
    from waste_pipeline import prompting, schemas
    from waste_pipeline.rules.pack import load_pack

    pack = load_pack("default")
    prepared = _prepared_image(64, 48)
    scanner = HandwrittenScanner(base_url="http://127.0.0.1:9/v1", api_key="sk-test")
    try:
        vision = scanner.vision_request(prepared.data_url, USER_TEXT)
        assert vision["instructions"] == prompting.vision_instructions(pack, "ko")
        assert vision["input"][0]["content"] == prompting.vision_content([prepared], USER_TEXT)
        assert vision["text"]["format"]["schema"] == schemas.vision_schema(pack)
        category = pack.categories()[0]
        major, middle = pack.split_category(category)
        output = {"minor": "x", "tags": [], "confidence": 0.5, "description": "d"}
        classification = scanner.classification(output, major, middle)
        from waste_pipeline.models import Classification

        model = Classification.model_validate(classification)
        assert classification == model.model_dump(mode="json")
        answer = scanner.answer_request(classification, category, USER_TEXT)
        expected = prompting.answer_content(model, pack.lookup(major, middle), USER_TEXT)
        assert answer["input"][0]["content"] == expected
        assert answer["text"]["format"]["schema"] == schemas.answer_schema()
    finally:
        scanner.close()
    bare_vision, bare_answer = _bare_requests(prepared)
    assert bare_vision == {**vision, "model": bare_vision["model"]}
    assert bare_answer["instructions"] == answer["instructions"]
    assert bare_answer["text"] == answer["text"]


def test_report_renders_missing_values() -> None:
    """Tables show ``-`` for missing or NaN figures instead of failing."""
    from bench.report import fmt, table

    assert fmt(float("nan")) == "-"
    assert fmt(None) == "-"
    assert fmt(1.234) == "1.23"
    assert table(["a", "b"], [(1, None)]).splitlines()[-1] == "| 1 | - |"
