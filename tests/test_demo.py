"""The README's first command, end to end: `waste-pipeline demo` (what `nox -s demo` runs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_runs_every_door_and_replays_the_failure(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CELERY_", "OPENAI_", "WASTE_PIPELINE_", "PYTEST_"))}
    env["WASTE_PIPELINE_HOME"] = str(tmp_path / "home")  # its own embedded servers
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "src")])
    report_path = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "waste_pipeline.cli", "demo", "--users", "100", "--seconds", "6",
         "--report", str(report_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "stand-in (a test double" in proc.stderr  # announced plainly
    report = json.loads(report_path.read_text())

    doors = {d["door"]: d for d in report["doors"]}
    assert len(doors) == 4
    assert all(d["status"] == "done" for d in doors.values()), doors
    assert {d["twin"] for d in doors.values()} == {"sync", "async"}

    naive, twin = report["replays"]
    assert "naive" in naive["worker"] and "twin" in twin["worker"]
    assert naive["submitted"] > 50 and naive["failure_rate"] > 0.5, naive
    assert "Cannot run the event loop" in " ".join(naive["errors"])
    assert twin["submitted"] > 50 and twin["failure_rate"] == 0.0, twin

    # the table a person reads, and nothing left running
    assert "failure rate" in proc.stdout and "every process it started is stopped" in proc.stdout
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", leftovers.stdout
