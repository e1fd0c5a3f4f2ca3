# mypy: disable-error-code="untyped-decorator"
"""The scan tasks, and the helpers that submit a scan.

Tasks (JSON arguments only, all keyed by the scan id):

* ``scan.run(scan_id, images, user_text, language)`` — the whole scan in one task (queue
  ``scan.run``);
* ``scan.vision(payload)`` → ``scan.rule(payload)`` → ``scan.answer(payload)`` — the same scan
  as a chain, one queue per stage, each stage passing a small JSON payload to the next
  (scan id, inputs, classification, rules key, usage, timings; the images go to vision only).

Every task returns a small JSON summary ``{"scan_id", "status", ...}``; the ``scans`` row in
PostgreSQL is the record of every outcome (``pending`` → ``running`` → ``done`` | ``failed``,
with the error and the number of attempts).

Failures: a transient error (:class:`~waste_pipeline.errors.TransientError`: 429, 5xx,
timeouts, database unavailable) is stored on the row with status ``pending`` and the task
retries with exponential backoff and jitter, up to ``WASTE_PIPELINE_CELERY_MAX_RETRIES``; the
last attempt stores ``failed``. A permanent error is stored ``failed`` at once and the task
*returns* a ``failed`` summary (logged as a warning, no traceback, no retry): the failure is an
outcome of the scan, not a crash of the worker. Only an unexpected exception (a bug) is stored
``failed`` and re-raised, so it shows up as a task failure.

Redelivery (a worker killed with ``acks_late``) is safe: ``begin()`` returns the stored result
of a scan that already ended ``done`` and the task returns without doing the work again; a
scan that was cut short runs again on the same row.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, NoReturn

from celery import Celery, Task, chain
from celery.canvas import Signature
from celery.exceptions import SoftTimeLimitExceeded

from tasks.app import app, celery_settings
from tasks.worker import PipelineTwin, ScanLedger, ledger_for, pipeline_twin
from waste_pipeline.errors import (
    DatabaseUnavailableError,
    ModelTimeoutError,
    PermanentError,
    TransientError,
    WastePipelineError,
)
from waste_pipeline.models import (
    Classification,
    ScanRequest,
    ScanResult,
    TokenUsage,
    new_scan_id,
    validate_scan_id,
)

if TYPE_CHECKING:
    from waste_pipeline import AsyncScanPipeline, ScanPipeline

DB_OUTAGE_MAX_RETRIES = 10_000
"""Retries allowed while the database is down (with the backoff cap: days, not minutes)."""

__all__ = [
    "BrokerUnavailableError",
    "ScanTask",
    "TaskCrashedError",
    "answer",
    "backoff_delay",
    "rule",
    "run",
    "scan_signature",
    "submit_scan",
    "submit_scan_async",
    "vision",
]

log = logging.getLogger("tasks.scan")

Mode = Literal["run", "chain", "naive"]


class TaskCrashedError(PermanentError):
    """A task failed with an unexpected exception (a bug); stored as the scan's reason."""

    code = "internal_error"


class BrokerUnavailableError(TransientError):
    """The scan could not be queued: the broker refused or could not be reached."""

    code = "broker_unavailable"


def backoff_delay(
    retries: int,
    retry_after: float | None = None,
    *,
    base: float | None = None,
    cap: float | None = None,
    jitter: bool | None = None,
) -> float:
    """Seconds before retry number ``retries + 1``: ``base * 2**retries``, capped, jittered.

    Jitter draws the delay uniformly between 50 % and 100 % of the exponential value, so
    scans that failed together do not come back together. A server's ``retry_after`` is a
    floor (never above the cap).
    """
    base = celery_settings.retry_backoff if base is None else base
    cap = celery_settings.retry_backoff_max if cap is None else cap
    jitter = celery_settings.retry_jitter if jitter is None else jitter
    delay = min(cap, base * (2 ** max(0, retries)))
    if jitter:
        delay *= random.uniform(0.5, 1.0)
    if retry_after:
        delay = max(delay, min(cap, retry_after))
    return float(round(delay, 3))


def _inputs(images: Sequence[str], user_text: str, language: str | None) -> dict[str, Any]:
    """The row's ``inputs`` for a scan whose request may not even validate."""
    try:
        request = ScanRequest.model_validate(
            {"images": list(images), "user_text": user_text, "language": language or "ko"}
        )
        return request.describe()
    except Exception:
        return {"user_text": user_text[:200]}


def _summary(
    scan_id: str,
    status: str,
    *,
    twin: PipelineTwin,
    rules_key: str | None = None,
    error: dict[str, Any] | None = None,
    skipped: bool = False,
) -> dict[str, Any]:
    return {
        "scan_id": scan_id,
        "status": status,
        "rules_key": rules_key,
        "error": error,
        "skipped": skipped,
        "twin": twin.twin,
    }


def _done_summary(
    task: ScanTask, result: ScanResult, twin: PipelineTwin, *, skipped: bool
) -> dict[str, Any]:
    task.finished(result.scan_id)
    return _summary(
        result.scan_id, result.status, twin=twin, rules_key=result.rules_key, skipped=skipped
    )


class ScanTask(Task):  # type: ignore[misc]
    """Base of the scan tasks: execution log, attempt bookkeeping, retry and failure policy."""

    abstract = True
    acks_late = True
    reject_on_worker_lost = True
    max_retries = celery_settings.max_retries

    def ledger(self) -> ScanLedger | None:
        """The scan ledger on this app's broker (None when the broker is not Redis)."""
        try:
            return ledger_for(self.app)
        except Exception:
            log.warning("scan ledger unavailable", exc_info=True)
            return None

    def alive(self, scan_id: str, delay: float = 0.0) -> None:
        """Tell the ledger the scan is being worked on (or will be, after ``delay`` s)."""
        ledger = self.ledger()
        if ledger is not None:
            ledger.touch(scan_id, delay)

    def finished(self, scan_id: str) -> None:
        """Tell the ledger the scan reached its final status."""
        ledger = self.ledger()
        if ledger is not None:
            ledger.remove(scan_id)

    def log_execution(self, scan_id: str) -> None:
        """One INFO line per execution of a task body (counted by the tests); a sign of life."""
        self.alive(scan_id)
        request = self.request
        info = request.delivery_info or {}
        log.info(
            "execute %s scan=%s task=%s retries=%d redelivered=%s",
            self.name,
            scan_id,
            request.id,
            request.retries,
            bool(info.get("redelivered")),
        )

    def final_attempt(self) -> bool:
        """True when no retry may follow this attempt."""
        return int(self.request.retries) >= int(self.max_retries or 0)

    def retry_later(self, exc: WastePipelineError) -> NoReturn:
        """Schedule the next attempt with backoff (raises celery's Retry).

        A database outage never ends a scan: nothing could be stored, so the scan retries
        (backoff capped at ``retry_backoff_max``) for as long as the database is down.
        """
        retry_after = getattr(exc, "retry_after", None)
        countdown = backoff_delay(int(self.request.retries), retry_after)
        if exc.scan_id:
            self.alive(exc.scan_id, countdown)
        log.info(
            "%s scan=%s transient %s, retry %d/%d in %.2f s",
            self.name,
            exc.scan_id,
            exc.code,
            int(self.request.retries) + 1,
            self.max_retries,
            countdown,
        )
        limit = DB_OUTAGE_MAX_RETRIES if isinstance(exc, DatabaseUnavailableError) else None
        raise self.retry(exc=exc, countdown=countdown, max_retries=limit or self.max_retries)

    def failed(self, scan_id: str, exc: WastePipelineError, twin: PipelineTwin) -> dict[str, Any]:
        """The summary of a scan that ended ``failed`` (already stored)."""
        log.warning("%s scan=%s failed: %s (%s)", self.name, scan_id, exc.code, exc.message)
        self.finished(scan_id)
        return _summary(scan_id, "failed", twin=twin, error=exc.to_dict())

    def fail_or_retry(
        self,
        twin: PipelineTwin,
        scan_id: str,
        inputs: dict[str, Any],
        exc: WastePipelineError,
        *,
        record: bool = True,
    ) -> dict[str, Any]:
        """Store ``exc`` on the row, then retry (transient, attempts left) or return ``failed``.

        When the database is unavailable (the error itself, or while storing it) the scan is
        never ended: its outcome could not be stored, so it retries until it can be.
        """
        db_down = isinstance(exc, DatabaseUnavailableError)
        final = (self.final_attempt() or not exc.transient) and not db_down
        exc.scan_id = scan_id
        if record and not db_down:
            try:
                twin.record_failure(scan_id, inputs, exc, final=final)
            except DatabaseUnavailableError as store_exc:
                store_exc.scan_id = scan_id
                self.retry_later(store_exc)
        if not final:
            self.retry_later(exc)
        return self.failed(scan_id, exc, twin)

    def hard_timeout(
        self, twin: PipelineTwin, scan_id: str, inputs: dict[str, Any], exc: BaseException
    ) -> None:
        """Under gevent the hard limit is a ``gevent.Timeout`` raised in the task: store it."""
        if _is_hard_timeout(exc):
            log.error("%s scan=%s hit the hard time limit", self.name, scan_id, exc_info=True)
            self.crashed(twin, scan_id, inputs, exc)

    def crashed(
        self, twin: PipelineTwin, scan_id: str, inputs: dict[str, Any], exc: BaseException
    ) -> None:
        """Store an unexpected exception as the scan's failure (best effort); caller re-raises."""
        error = TaskCrashedError(f"{self.name} crashed: {type(exc).__name__}: {exc}"[:500])
        try:
            twin.record_failure(scan_id, inputs, error, final=True)
        except Exception:
            # Not stored: keep the scan in the ledger so its sweeper requeues it later.
            log.exception("could not record the crash of scan %s", scan_id)
            return
        self.finished(scan_id)


def _timed_out(task: ScanTask) -> ModelTimeoutError:
    return ModelTimeoutError(f"{task.name} exceeded its soft time limit")


def _is_hard_timeout(exc: BaseException) -> bool:
    # The gevent pool enforces the hard time limit with gevent.Timeout (a BaseException).
    return type(exc).__module__.startswith("gevent") and type(exc).__name__ == "Timeout"


# --- the whole scan -----------------------------------------------------------------------------


@app.task(
    bind=True,
    shared=False,
    base=ScanTask,
    name="scan.run",
    soft_time_limit=celery_settings.run_soft_time_limit,
    time_limit=celery_settings.run_time_limit,
)
def run(
    self: ScanTask,
    scan_id: str,
    images: list[str],
    user_text: str = "",
    language: str | None = None,
) -> dict[str, Any]:
    """The whole scan (vision → rules → answer → store) in one task."""
    self.log_execution(scan_id)
    twin = pipeline_twin()
    try:
        result = twin.scan(
            images, user_text, scan_id, language=language, final_attempt=self.final_attempt()
        )
    except WastePipelineError as exc:
        # scan() stored it: 'pending' when transient and not final, else 'failed'.
        return self.fail_or_retry(twin, scan_id, {}, exc, record=False)
    except SoftTimeLimitExceeded:
        inputs = _inputs(images, user_text, language)
        return self.fail_or_retry(twin, scan_id, inputs, _timed_out(self))
    except Exception as exc:
        self.crashed(twin, scan_id, _inputs(images, user_text, language), exc)
        raise
    except BaseException as exc:
        self.hard_timeout(twin, scan_id, _inputs(images, user_text, language), exc)
        raise
    # A redelivery of a scan that already ended done gets the stored result (replayed).
    return _done_summary(self, result, twin, skipped=result.replayed)


# --- the chain: vision -> rule -> answer --------------------------------------------------------


def _passthrough(payload: dict[str, Any]) -> bool:
    """True when an earlier stage ended the scan (done already, or failed)."""
    return payload.get("status") != "running"


@app.task(
    bind=True,
    shared=False,
    base=ScanTask,
    name="scan.vision",
    soft_time_limit=celery_settings.stage_soft_time_limit,
    time_limit=celery_settings.stage_time_limit,
)
def vision(self: ScanTask, payload: dict[str, Any]) -> dict[str, Any]:
    """Stage 1: validate, mark running, classify the images; pass the classification on."""
    scan_id = str(payload["scan_id"])
    self.log_execution(scan_id)
    twin = pipeline_twin()
    try:
        validate_scan_id(scan_id)
    except ValueError as exc:  # nothing to store it under
        error = {"code": "invalid_input", "message": str(exc)}
        return _summary(scan_id, "failed", twin=twin, error=error)
    images = list(payload.get("images") or [])
    user_text = str(payload.get("user_text") or "")
    inputs = _inputs(images, user_text, payload.get("language"))
    try:
        request = twin.request(images, user_text, language=payload.get("language"))
        inputs = request.describe()
        stored = twin.begin(scan_id, inputs)
        if stored is not None:
            return _done_summary(self, stored, twin, skipped=True)
        stage = twin.classify(request)
        twin.record_classification(scan_id, stage.value)
    except WastePipelineError as exc:
        return self.fail_or_retry(twin, scan_id, inputs, exc)
    except SoftTimeLimitExceeded:
        return self.fail_or_retry(twin, scan_id, inputs, _timed_out(self))
    except Exception as exc:
        self.crashed(twin, scan_id, inputs, exc)
        raise
    except BaseException as exc:
        self.hard_timeout(twin, scan_id, inputs, exc)
        raise
    return {
        "scan_id": scan_id,
        "status": "running",
        "inputs": inputs,
        "user_text": request.user_text,
        "language": request.language,
        "classification": stage.value.model_dump(mode="json"),
        "usage": stage.usage.model_dump(mode="json"),
        "timings_ms": dict(stage.timings_ms),
        "models": {"vision": stage.model or ""},
    }


@app.task(
    bind=True,
    shared=False,
    base=ScanTask,
    name="scan.rule",
    soft_time_limit=celery_settings.stage_soft_time_limit,
    time_limit=celery_settings.stage_time_limit,
)
def rule(self: ScanTask, payload: dict[str, Any]) -> dict[str, Any]:
    """Stage 2: look the classification up in the rule pack; pass the rules key on."""
    if _passthrough(payload):
        return payload
    scan_id = str(payload["scan_id"])
    self.log_execution(scan_id)
    twin = pipeline_twin()
    inputs = dict(payload.get("inputs") or {})
    try:
        classification = Classification.model_validate(payload["classification"])
        stage = twin.lookup_rules(classification)
        twin.record_rules(scan_id, stage.value.key)
    except WastePipelineError as exc:
        return self.fail_or_retry(twin, scan_id, inputs, exc)
    except SoftTimeLimitExceeded:
        return self.fail_or_retry(twin, scan_id, inputs, _timed_out(self))
    except Exception as exc:
        self.crashed(twin, scan_id, inputs, exc)
        raise
    except BaseException as exc:
        self.hard_timeout(twin, scan_id, inputs, exc)
        raise
    return {
        **payload,
        "rules_key": stage.value.key,
        "rules_matched": stage.value.matched,
        "timings_ms": {**payload.get("timings_ms", {}), **stage.timings_ms},
    }


@app.task(
    bind=True,
    shared=False,
    base=ScanTask,
    name="scan.answer",
    soft_time_limit=celery_settings.stage_soft_time_limit,
    time_limit=celery_settings.stage_time_limit,
)
def answer(self: ScanTask, payload: dict[str, Any]) -> dict[str, Any]:
    """Stage 3 and 4: write the answer and store the finished scan."""
    if _passthrough(payload):
        return payload
    scan_id = str(payload["scan_id"])
    self.log_execution(scan_id)
    twin = pipeline_twin()
    inputs = dict(payload.get("inputs") or {})
    try:
        # A retry (or a redelivery) of this stage: skip a scan that is already done.
        stored = twin.begin(scan_id, inputs) if self.request.retries else twin.get(scan_id)
        if stored is not None and stored.status == "done":
            return _done_summary(self, stored, twin, skipped=True)
        classification = Classification.model_validate(payload["classification"])
        # The rules lookup is local and deterministic: redo it rather than ship the rules.
        lookup = twin.lookup_rules(classification).value
        if lookup.key != payload.get("rules_key"):
            log.warning("scan=%s rules key changed between stages: %s -> %s", scan_id,
                        payload.get("rules_key"), lookup.key)
        stage = twin.answer(
            classification,
            lookup,
            user_text=str(payload.get("user_text") or ""),
            language=payload.get("language"),
        )
        result = ScanResult(
            scan_id=scan_id,
            status="done",
            inputs=inputs,
            classification=classification,
            rules=lookup,
            rules_key=lookup.key,
            answer=stage.value,
            timings_ms={**payload.get("timings_ms", {}), **stage.timings_ms},
            models={"vision": str(payload.get("models", {}).get("vision", "")),
                    "answer": stage.model or ""},
            usage=TokenUsage.model_validate(payload.get("usage") or {}).add(stage.usage),
            attempts=1,
        )
        twin.store(result)
    except WastePipelineError as exc:
        return self.fail_or_retry(twin, scan_id, inputs, exc)
    except SoftTimeLimitExceeded:
        return self.fail_or_retry(twin, scan_id, inputs, _timed_out(self))
    except Exception as exc:
        self.crashed(twin, scan_id, inputs, exc)
        raise
    except BaseException as exc:
        self.hard_timeout(twin, scan_id, inputs, exc)
        raise
    return _done_summary(self, result, twin, skipped=False)


# --- submitting ---------------------------------------------------------------------------------


def scan_signature(
    scan_id: str,
    images: list[str],
    user_text: str = "",
    *,
    language: str | None = None,
    mode: Mode = "run",
    app: Celery | None = None,
) -> Signature:
    """The Celery signature that runs a scan: ``scan.run``, the stage chain, or the naive task.

    Tasks are addressed by name, so any app with this configuration (another broker, a client
    process that does not import the tasks) can send them; queues follow ``task_routes``.
    ``scan.run`` and the chain's last stage use the scan id as their task id.
    """
    celery = app or _default_app()
    # No time limits in the message: a message's limits override the worker's, and the worker
    # (WASTE_PIPELINE_CELERY_*_TIME_LIMIT, checked against its visibility timeout) decides.
    limits: dict[str, Any] = {"time_limit": None, "soft_time_limit": None}
    if mode == "run":
        return celery.signature(
            "scan.run", args=(scan_id, images, user_text, language), task_id=scan_id, **limits
        )
    if mode == "naive":
        return celery.signature(
            "scan.run_naive", args=(scan_id, images, user_text, language), task_id=scan_id,
            **limits,
        )
    if mode == "chain":
        payload = {
            "scan_id": scan_id,
            "images": images,
            "user_text": user_text,
            "language": language,
        }
        return chain(
            celery.signature(
                "scan.vision", args=(payload,), task_id=f"{scan_id}.vision", **limits
            ),
            celery.signature("scan.rule", task_id=f"{scan_id}.rule", **limits),
            celery.signature("scan.answer", task_id=scan_id, **limits),
        )
    raise ValueError(f"unknown mode {mode!r}: use 'run', 'chain' or 'naive'")


def _default_app() -> Celery:
    return app


def _publish(
    signature: Signature,
    app: Celery | None,
    scan_id: str,
    mode: Mode,
    images: list[str],
    user_text: str,
    language: str | None,
) -> None:
    """Write the scan into the ledger, then publish its message."""
    ledger = ledger_for(app or _default_app())
    if ledger is not None:
        request = {"mode": mode, "images": images, "user_text": user_text, "language": language}
        ledger.add(scan_id, request)
    try:
        signature.apply_async()
    except BaseException:
        if ledger is not None:  # the caller is told it failed: never requeue it behind its back
            ledger.remove(scan_id)
        raise


def _prepare(
    images: str | Sequence[str], scan_id: str | None
) -> tuple[list[str], str]:
    image_list = [images] if isinstance(images, str) else list(images)
    if scan_id is None:
        scan_id = new_scan_id()
    else:
        validate_scan_id(scan_id)
    return image_list, scan_id


def submit_scan(
    images: str | Sequence[str],
    user_text: str = "",
    *,
    language: str | None = None,
    scan_id: str | None = None,
    mode: Mode = "run",
    pipeline: ScanPipeline | None = None,
    app: Celery | None = None,
) -> str:
    """Queue a scan and return its id; the ``scans`` row is ``pending`` before it is queued.

    ``images``: one URL (``http(s)://`` or ``data:``) or a list of them. ``mode``: ``"run"``
    (one ``scan.run`` task), ``"chain"`` (vision → rule → answer) or ``"naive"`` (the naive
    reproduction, ``tasks/naive.py``). Bad inputs raise
    :class:`~waste_pipeline.errors.InvalidInputError` and queue nothing. The row is written
    through ``pipeline`` (a sync :class:`~waste_pipeline.ScanPipeline`), or through this
    process's own pipeline on the right twin (``tasks.worker.pipeline_twin``). From asyncio
    code use :func:`submit_scan_async`. If the broker refuses the message, the row is stored
    ``failed`` with ``broker_unavailable`` and :class:`BrokerUnavailableError` is raised.
    """
    image_list, scan_id = _prepare(images, scan_id)
    signature = scan_signature(
        scan_id, image_list, user_text, language=language, mode=mode, app=app
    )
    if pipeline is not None:
        inputs = pipeline.request(image_list, user_text, language=language).describe()
        pipeline.record_pending(scan_id, inputs)
        try:
            _publish(signature, app, scan_id, mode, image_list, user_text, language)
        except Exception as exc:
            error = BrokerUnavailableError(f"could not queue the scan ({type(exc).__name__})")
            pipeline.record_failure(scan_id, inputs, error, final=True)
            raise error from exc
        return scan_id
    twin = pipeline_twin()
    inputs = twin.request(image_list, user_text, language=language).describe()
    twin.record_pending(scan_id, inputs)
    try:
        _publish(signature, app, scan_id, mode, image_list, user_text, language)
    except Exception as exc:
        error = BrokerUnavailableError(f"could not queue the scan ({type(exc).__name__})")
        twin.record_failure(scan_id, inputs, error, final=True)
        raise error from exc
    return scan_id


async def submit_scan_async(
    pipeline: AsyncScanPipeline,
    images: str | Sequence[str],
    user_text: str = "",
    *,
    language: str | None = None,
    scan_id: str | None = None,
    mode: Mode = "run",
    app: Celery | None = None,
) -> str:
    """:func:`submit_scan` for asyncio code (the API): the row through ``pipeline``.

    The broker publish (kombu is synchronous) runs in a worker thread so the event loop keeps
    serving.
    """
    image_list, scan_id = _prepare(images, scan_id)
    signature = scan_signature(
        scan_id, image_list, user_text, language=language, mode=mode, app=app
    )
    inputs = pipeline.request(image_list, user_text, language=language).describe()
    await pipeline.record_pending(scan_id, inputs)
    try:
        await asyncio.to_thread(
            _publish, signature, app, scan_id, mode, image_list, user_text, language
        )
    except Exception as exc:
        error = BrokerUnavailableError(f"could not queue the scan ({type(exc).__name__})")
        await pipeline.record_failure(scan_id, inputs, error, final=True)
        raise error from exc
    return scan_id
