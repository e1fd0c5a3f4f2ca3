# mypy: disable-error-code="untyped-decorator"
"""THE NAIVE REPRODUCTION — do not use: a fresh asyncio event loop per task.

This module reproduces, on purpose, what the team this project is for did first when it reused
its async pipeline under ``celery -P gevent``: every task creates a new event loop, builds the
async clients on it and runs the scan with ``loop.run_until_complete``::

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    result = loop.run_until_complete(scan_with_fresh_async_clients(...))
    loop.close()

Under a gevent worker this fails most tasks with ``RuntimeError('Cannot run the event loop
while another loop is running')``: asyncio remembers the running loop per OS *thread*, every
greenlet shares that thread, and as soon as one task's loop parks in the (monkey-patched)
``select`` the hub runs another greenlet, whose ``run_until_complete`` finds the first loop
still "running". Their load test lost 98 % of the scans this way.

It exists so the test suite, the benchmark and the demo can show that the harness catches the
bug (``tests/test_celery.py::test_naive_event_loop_per_task_fails_under_gevent``). The task
``scan.run_naive`` is routed to the queue ``scan.naive``, which a worker consumes only when
started with ``-Q scan.naive`` or with ``WASTE_PIPELINE_NAIVE=1``. Every failure is still
recorded in the ``scans`` row (``failed``, with the RuntimeError's message), through the
process's correct twin, so the failures can be counted.

The right way is ``tasks/scan.py``: the sync twin under gevent, one long-lived loop per prefork
process (``waste_pipeline.runtime.run_async``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from tasks.app import app, celery_settings
from tasks.scan import ScanTask, TaskCrashedError, _inputs, _summary
from tasks.worker import pipeline_twin, worker_settings
from waste_pipeline.errors import WastePipelineError
from waste_pipeline.models import ScanResult

__all__ = ["NaiveEventLoopError", "run_naive"]

log = logging.getLogger("tasks.naive")


class NaiveEventLoopError(TaskCrashedError):
    """How a naive task's failure is stored: the RuntimeError (or other error) it died of."""

    code = "naive_event_loop"


async def _scan_with_fresh_clients(
    scan_id: str, images: list[str], user_text: str, language: str | None
) -> ScanResult:
    # As the original did: async clients are bound to the loop that creates them, so a loop
    # per task means a pipeline (HTTP client, OpenAI client, database pool) per task too.
    from waste_pipeline import AsyncScanPipeline

    settings = worker_settings().model_copy(update={"db_pool_min": 1, "db_pool_max": 1})
    async with AsyncScanPipeline(settings) as pipeline:
        return await pipeline.scan(images, user_text, scan_id, language=language)


@app.task(
    bind=True,
    shared=False,
    base=ScanTask,
    name="scan.run_naive",
    max_retries=0,
    soft_time_limit=celery_settings.run_soft_time_limit,
    time_limit=celery_settings.run_time_limit,
)
def run_naive(
    self: ScanTask,
    scan_id: str,
    images: list[str],
    user_text: str = "",
    language: str | None = None,
) -> dict[str, Any]:
    """The whole scan on a NEW event loop per task — the reproduction of the original bug."""
    self.log_execution(scan_id)
    twin = pipeline_twin()
    loop = asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        result = loop.run_until_complete(
            _scan_with_fresh_clients(scan_id, images, user_text, language)
        )
    except WastePipelineError as exc:  # the pipeline stored it already
        return self.failed(scan_id, exc, twin)
    except Exception as exc:  # e.g. RuntimeError: Cannot run the event loop while another ...
        error = NaiveEventLoopError(f"{type(exc).__name__}: {exc}"[:500])
        try:
            twin.record_failure(scan_id, _inputs(images, user_text, language), error, final=True)
        except Exception:
            log.exception("could not record the failure of naive scan %s", scan_id)
        log.warning("scan.run_naive scan=%s failed: %s", scan_id, error.message)
        self.finished(scan_id)
        return _summary(scan_id, "failed", twin=twin, error=error.to_dict())
    finally:
        try:
            loop.close()
        except Exception:  # "Cannot close a running event loop": leave it to the GC
            log.debug("could not close the naive loop", exc_info=True)
    self.finished(scan_id)
    return _summary(scan_id, result.status, twin=twin, rules_key=result.rules_key)
