"""Server-Sent Events of one scan: ``vision``, ``rule``, ``answer``, then ``done`` or ``failed``.

The stream follows the scan's row in PostgreSQL (status, classification, rules key, answer), so
it works the same for a scan running in this process, in another API process or in a Celery
worker, and for a scan that has already ended (every event is then sent at once, in order).

Each event has a fixed id (``vision`` 1, ``rule`` 2, ``answer`` 3, ``done``/``failed`` 4), so a
client that reconnects with ``Last-Event-ID`` gets only what it missed. The stream ends by
itself after the last event, or after the configured maximum duration with an event ``timeout``
(the scan goes on; reconnect to keep following it). While nothing happens a comment line
(``: keep-alive``) is sent every 15 s so proxies do not close the connection.

A ``rule`` event is sent when the rules key is stored, or, for a miss (no rules for the
category), together with the answer when the scan ends ``done``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from .._async.pipeline import AsyncScanPipeline
from ..errors import DatabaseUnavailableError
from ..models import ScanResult
from .problems import Redactor, problem_type_url

__all__ = ["EVENT_IDS", "format_event", "scan_events"]

EVENT_IDS: dict[str, int] = {"vision": 1, "rule": 2, "answer": 3, "done": 4, "failed": 4}
"""The id of each event: fixed, so ``Last-Event-ID`` resumes exactly."""

KEEPALIVE_SECONDS = 15.0
_MAX_POLL_INTERVAL = 1.0


def format_event(event: str, data: Any, event_id: int | None = None) -> bytes:
    """One SSE message: ``id``, ``event`` and a one-line JSON ``data`` field."""
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str)
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {payload}\n\n".encode()


def _stage_events(result: ScanResult, sent: set[str]) -> list[tuple[str, dict[str, Any]]]:
    """The events a row justifies that were not sent yet, in stage order."""
    out: list[tuple[str, dict[str, Any]]] = []
    sid = result.scan_id
    terminal = result.status in ("done", "failed")
    if "vision" not in sent and result.classification is not None:
        out.append(
            ("vision", {"scan_id": sid, "classification": result.classification.model_dump()})
        )
    rule_known = result.rules_key is not None or result.status == "done"
    if "rule" not in sent and rule_known and (result.classification is not None or terminal):
        data: dict[str, Any] = {"scan_id": sid, "rules_key": result.rules_key}
        if result.rules is not None:
            data["matched"] = result.rules.matched
            data["rules"] = result.rules.rules.model_dump() if result.rules.rules else None
        out.append(("rule", data))
    if "answer" not in sent and result.answer is not None and result.status == "done":
        out.append(("answer", {"scan_id": sid, "answer": result.answer.model_dump()}))
    if result.status == "done":
        out.append(("done", result.model_dump(mode="json")))
    elif result.status == "failed":
        error = result.error.model_dump(mode="json") if result.error else None
        code = result.error.code if result.error else "error"
        out.append(
            (
                "failed",
                {
                    "scan_id": sid,
                    "status": "failed",
                    "type": problem_type_url(code),
                    "error": error,
                },
            )
        )
    return out


async def scan_events(
    pipeline: AsyncScanPipeline,
    scan_id: str,
    *,
    poll_interval: float = 0.1,
    max_seconds: float = 300.0,
    last_event_id: int = 0,
    redactor: Redactor | None = None,
    disconnected: Callable[[], Awaitable[bool]] | None = None,
) -> AsyncIterator[bytes]:
    """Follow the scan's row and yield SSE messages until it ends or ``max_seconds`` pass.

    The poll interval starts at ``poll_interval`` and grows (up to 1 s) while the row does not
    change, so a long queue wait costs few queries. ``disconnected`` (the request's
    ``is_disconnected``) is asked before every poll: a client that went away stops the polling.
    """
    clean = redactor or Redactor()
    sent: set[str] = {name for name, n in EVENT_IDS.items() if n <= last_event_id}
    started = last_emit = time.monotonic()
    interval = poll_interval
    last_seen: tuple[Any, ...] | None = None
    while True:
        if disconnected is not None and await disconnected():
            return
        try:
            result = await pipeline.get(scan_id)
        except DatabaseUnavailableError as exc:
            yield format_event(
                "error",
                {
                    "scan_id": scan_id,
                    "type": problem_type_url(exc.code),
                    "detail": clean(exc.message),
                },
            )
            return
        if result is None:
            yield format_event(
                "error",
                {
                    "scan_id": scan_id,
                    "type": problem_type_url("scan_not_found"),
                    "detail": "the scan's record is gone",
                },
            )
            return
        for name, data in _stage_events(result, sent):
            sent.add(name)
            last_emit = time.monotonic()
            yield format_event(name, clean.clean(data), EVENT_IDS[name])
            if name in ("done", "failed"):
                return
        now = time.monotonic()
        if now - started >= max_seconds:
            yield format_event(
                "timeout",
                {
                    "scan_id": scan_id,
                    "status": result.status,
                    "detail": f"the scan did not end within {max_seconds:g} s of following it; "
                    "reconnect (with Last-Event-ID) to keep following it",
                },
            )
            return
        if now - last_emit >= KEEPALIVE_SECONDS:
            last_emit = now
            yield b": keep-alive\n\n"
        seen = (result.status, result.classification is not None, result.rules_key)
        interval = poll_interval if seen != last_seen else min(interval * 1.5, _MAX_POLL_INTERVAL)
        last_seen = seen
        await asyncio.sleep(min(interval, max(0.0, max_seconds - (now - started))))
