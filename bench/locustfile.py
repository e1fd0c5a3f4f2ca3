"""The Locust scenario of ``python -m bench.load``: users that scan and wait for the answer.

Each user, in a loop: ``POST /v1/scans`` with ``mode=queued`` (a small JPEG as a data URL),
then ``GET /v1/scans/{id}`` after ``BENCH_LOAD_FIRST_POLL`` seconds (no scan can be done
sooner than its two model calls) and every ``BENCH_LOAD_POLL`` seconds after that, until it is
``done`` or
``failed`` (or ``BENCH_LOAD_SCAN_TIMEOUT`` passes), then waits ``BENCH_LOAD_WAIT_MIN`` to
``BENCH_LOAD_WAIT_MAX`` seconds (reading the answer) before the next scan.

The end-to-end time of every scan (submit to the poll that saw the final status) is reported
to Locust as a request of type ``SCAN`` (a failed or unfinished scan as a failure) and, one
JSON line per scan, appended to the file named by ``BENCH_LOAD_RECORDS``.

Run by ``bench/load.py`` through the ``locust`` command (headless); not meant to be imported
elsewhere, since importing locust monkey-patches the process with gevent.
"""

from __future__ import annotations

import base64
import io
import json
import os
import time
from typing import Any

import gevent
from locust import HttpUser, between, events, task

POLL = float(os.environ.get("BENCH_LOAD_POLL", "0.1"))
FIRST_POLL = float(os.environ.get("BENCH_LOAD_FIRST_POLL", "0.3"))
SCAN_TIMEOUT = float(os.environ.get("BENCH_LOAD_SCAN_TIMEOUT", "60"))
WAIT_MIN = float(os.environ.get("BENCH_LOAD_WAIT_MIN", "1"))
WAIT_MAX = float(os.environ.get("BENCH_LOAD_WAIT_MAX", "2"))
RECORDS = os.environ.get("BENCH_LOAD_RECORDS", "")
USER_TEXT = "라벨은 뗐어요"


def _image() -> str:
    from PIL import Image

    img = Image.effect_mandelbrot((320, 240), (-2.0, -1.2, 0.8, 1.2), 60).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


IMAGE = _image()


def _record(row: dict[str, Any]) -> None:
    if RECORDS:
        with open(RECORDS, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")


class ScanUser(HttpUser):
    """Submits one queued scan at a time and polls it to the end."""

    wait_time = between(WAIT_MIN, WAIT_MAX)

    @task
    def scan(self) -> None:
        """One scan, end to end."""
        start = time.perf_counter()
        body = {"image_url": IMAGE, "user_text": USER_TEXT, "mode": "queued"}
        with self.client.post(
            "/v1/scans", json=body, name="POST /v1/scans", catch_response=True
        ) as response:
            if response.status_code != 202:
                response.failure(f"HTTP {response.status_code}")
                self._finish(start, None, "rejected", f"POST HTTP {response.status_code}", 0, 1)
                return
            scan_id = str(response.json()["scan_id"])
        polls = http_failures = 0
        status, error = "pending", None
        while True:
            gevent.sleep(FIRST_POLL if polls == 0 else POLL)
            polls += 1
            with self.client.get(
                f"/v1/scans/{scan_id}", name="GET /v1/scans/{id}", catch_response=True
            ) as poll:
                if poll.status_code != 200:
                    poll.failure(f"HTTP {poll.status_code}")
                    http_failures += 1
                    if time.perf_counter() - start > SCAN_TIMEOUT:
                        status, error = "unfinished", f"GET HTTP {poll.status_code}"
                        break
                    continue
                data = poll.json()
                status = str(data.get("status"))
            if status in ("done", "failed"):
                if status == "failed":
                    err = data.get("error") or {}
                    error = f"{err.get('code')}: {str(err.get('message'))[:120]}"
                break
            if time.perf_counter() - start > SCAN_TIMEOUT:
                status, error = "unfinished", f"not finished after {SCAN_TIMEOUT:g} s"
                break
        self._finish(start, scan_id, status, error, polls, http_failures)

    def _finish(
        self,
        start: float,
        scan_id: str | None,
        status: str,
        error: str | None,
        polls: int,
        http_failures: int,
    ) -> None:
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        events.request.fire(  # type: ignore[no-untyped-call]
            request_type="SCAN",
            name="end-to-end",
            response_time=elapsed_ms,
            response_length=0,
            exception=None if status == "done" else RuntimeError(error or status),
            context={},
        )
        _record(
            {
                "scan_id": scan_id,
                "status": status,
                "e2e_ms": elapsed_ms,
                "polls": polls,
                "requests": 1 + polls,
                "http_failures": http_failures,
                "error": error,
                "t": time.time(),
            }
        )
