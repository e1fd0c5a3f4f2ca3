"""The Celery application and its configuration, read from the environment.

``celery -A tasks worker -P gevent -c 100`` and ``celery -A tasks worker -P prefork -c 2`` run
this app unchanged; ``tasks.worker`` picks the twin from the pool and sizes the broker's
connection pools to the concurrency at worker start. Every setting is explained in
``docs/celery.md``.

Broker and result backend come from :class:`waste_pipeline.settings.Settings`
(``CELERY_BROKER_URL``, ``CELERY_RESULT_BACKEND``; Redis on loopback by default). The task
knobs (retries, time limits, visibility timeout) come from :class:`CelerySettings`
(``WASTE_PIPELINE_CELERY_*``).
"""

from __future__ import annotations

from typing import Any, Final

from celery import Celery
from kombu import Queue  # type: ignore[attr-defined]
from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from waste_pipeline import runtime
from waste_pipeline.settings import Settings

__all__ = [
    "DEFAULT_BROKER_URL",
    "NAIVE_QUEUE",
    "QUEUES",
    "ROUTES",
    "CelerySettings",
    "app",
    "celery_config",
    "celery_settings",
    "create_app",
    "prefetch_multiplier",
]

DEFAULT_BROKER_URL: Final = "redis://127.0.0.1:6379/0"
"""Broker and result backend when ``CELERY_BROKER_URL`` / ``CELERY_RESULT_BACKEND`` are unset."""

QUEUES: Final = ("scan.run", "scan.vision", "scan.rule", "scan.answer")
"""The queues a worker consumes by default: the whole scan, and one per chain stage."""

NAIVE_QUEUE: Final = "scan.naive"
"""The naive reproduction's queue: consumed only with ``WASTE_PIPELINE_NAIVE=1`` or ``-Q``."""

ROUTES: Final = {
    "scan.run": {"queue": "scan.run"},
    "scan.vision": {"queue": "scan.vision"},
    "scan.rule": {"queue": "scan.rule"},
    "scan.answer": {"queue": "scan.answer"},
    "scan.run_naive": {"queue": NAIVE_QUEUE},
}


class CelerySettings(BaseSettings):
    """Task knobs of the Celery app (environment: ``WASTE_PIPELINE_CELERY_*``)."""

    model_config = SettingsConfigDict(
        env_prefix="WASTE_PIPELINE_CELERY_", extra="ignore", populate_by_name=True
    )

    pool: str | None = Field(
        default=None,
        description="worker_pool in the config. NOT a way to choose gevent: a worker whose "
        "pool is gevent without '-P gevent' on the command line is unpatched and refuses to "
        "start (see docs/celery.md)",
    )
    max_retries: int = Field(default=5, ge=0, description="retries of a transient error")
    retry_backoff: float = Field(default=1.0, gt=0, description="first retry delay, seconds")
    retry_backoff_max: float = Field(default=60.0, gt=0, description="longest retry delay")
    retry_jitter: bool = Field(default=True, description="randomise each delay (50-100 %)")
    run_soft_time_limit: float = Field(default=240.0, gt=0, description="scan.run, seconds")
    run_time_limit: float = Field(default=300.0, gt=0, description="scan.run hard limit")
    stage_soft_time_limit: float = Field(default=150.0, gt=0, description="each chain stage")
    stage_time_limit: float = Field(default=180.0, gt=0, description="chain stage hard limit")
    visibility_timeout: float = Field(
        default=900.0,
        gt=0,
        description="Redis: an unacknowledged message is redelivered after this many seconds",
    )
    restore_interval: float | None = Field(
        default=None,
        gt=0,
        description="seconds between sweeps for unacknowledged messages to redeliver "
        "(default: min(10, visibility_timeout / 3))",
    )
    lost_after: float | None = Field(
        default=None,
        gt=0,
        description="a queued scan not finished (nor started again) this many seconds after "
        "its last sign of life is requeued from the scan ledger (default: visibility timeout "
        "+ 60 s)",
    )
    broker_max_connections: int | None = Field(
        default=None,
        ge=1,
        description="Redis connections per broker pool; default: the worker's concurrency + 20",
    )
    greenlet_prefetch_multiplier: int = Field(
        default=1,
        ge=1,
        description="prefetch multiplier of gevent/eventlet workers. 1 (default): with it "
        "Celery's gevent consumer refills its slots only every ~2 s, so a -c 10 worker reaches "
        "~20 % of its bound (85 % with 4, bench/results/throughput-shipped-defaults.md); but "
        "with 4, a Redis restart made some scans complete twice in the fault suite, so 4 is "
        "opt-in until that is understood",
    )
    naive: bool = Field(
        default=False,
        validation_alias=AliasChoices("WASTE_PIPELINE_NAIVE", "naive"),
        description="also consume the naive reproduction's queue (scan.naive)",
    )

    @model_validator(mode="after")
    def _check_limits(self) -> CelerySettings:
        for soft, hard, what in (
            (self.run_soft_time_limit, self.run_time_limit, "run"),
            (self.stage_soft_time_limit, self.stage_time_limit, "stage"),
        ):
            if soft >= hard:
                raise ValueError(
                    f"WASTE_PIPELINE_CELERY_{what.upper()}_SOFT_TIME_LIMIT ({soft:g}) must be "
                    f"below the hard limit ({hard:g})"
                )
        longest = max(self.run_time_limit, self.stage_time_limit) + self.retry_backoff_max
        if self.visibility_timeout <= longest:
            # A message whose task is still running (or waiting for its retry countdown) would
            # be handed to a second worker: the same scan would run twice at once.
            raise ValueError(
                f"WASTE_PIPELINE_CELERY_VISIBILITY_TIMEOUT ({self.visibility_timeout:g} s) must "
                f"exceed the longest hard time limit plus the longest retry delay "
                f"({longest:g} s)"
            )
        if self.lost_after is not None and self.lost_after <= self.visibility_timeout:
            # The ledger must leave the broker's own redelivery the first chance, or a scan
            # redelivered by the broker would also be requeued by the ledger.
            raise ValueError(
                "WASTE_PIPELINE_CELERY_LOST_AFTER must exceed the visibility timeout"
            )
        if self.retry_backoff > self.retry_backoff_max:
            raise ValueError("retry_backoff must not exceed retry_backoff_max")
        return self

    @property
    def lost_timeout(self) -> float:
        """Seconds without a sign of life after which the ledger requeues a scan."""
        if self.lost_after is not None:
            return self.lost_after
        return self.visibility_timeout + 60.0

    @property
    def sweep_interval(self) -> float:
        """Seconds between the worker's sweeps for messages to redeliver."""
        if self.restore_interval is not None:
            return self.restore_interval
        return max(1.0, min(10.0, self.visibility_timeout / 3))


def prefetch_multiplier(tuning: CelerySettings | None = None) -> int:
    """``greenlet_prefetch_multiplier`` in a gevent/eventlet-patched process, else 1.

    Decided here, at import, because ``celery worker`` fills its ``--prefetch-multiplier``
    option from this setting before any worker signal runs (``-P gevent`` has patched the
    process by then). See :attr:`CelerySettings.greenlet_prefetch_multiplier` for the trade-off.
    """
    tuning = tuning or CelerySettings()
    if runtime.gevent_patched() or runtime.eventlet_patched():
        return tuning.greenlet_prefetch_multiplier
    return 1


def celery_config(
    settings: Settings | None = None, tuning: CelerySettings | None = None
) -> dict[str, Any]:
    """The Celery configuration (a dict of lowercase settings) for these settings."""
    settings = settings or Settings()
    tuning = tuning or CelerySettings()
    broker = settings.celery_broker_url or DEFAULT_BROKER_URL
    backend = settings.celery_result_backend or DEFAULT_BROKER_URL
    names = [*QUEUES, NAIVE_QUEUE] if tuning.naive else list(QUEUES)
    queues = [Queue(name, routing_key=name) for name in names]  # type: ignore[no-untyped-call]
    transport: dict[str, Any] = {
        "visibility_timeout": int(tuning.visibility_timeout),
        "unacked_restore_interval": int(tuning.sweep_interval),
        "unacked_restore_throttle": 1,
        "socket_timeout": 30,
        "socket_connect_timeout": 10,
        "socket_keepalive": True,
        "retry_on_timeout": True,
    }
    if tuning.broker_max_connections is not None:
        transport["max_connections"] = tuning.broker_max_connections
    config: dict[str, Any] = {
        "broker_url": broker,
        "result_backend": backend,
        # JSON only: no pickle anywhere.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # At-least-once: ack after the task body, requeue if the worker process dies.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": prefetch_multiplier(tuning),
        # False: Celery's gevent pool reports a cancelled greenlet as a success, so cancelled
        # tasks were acknowledged when the broker came back (tests/test_faults.py).
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # Limits (per task in tasks/scan.py; these are the defaults of any other task).
        "task_soft_time_limit": tuning.run_soft_time_limit,
        "task_time_limit": tuning.run_time_limit,
        # Queues: one for the whole scan, one per chain stage; routed by task name.
        "task_queues": queues,
        "task_default_queue": "scan.run",
        "task_routes": dict(ROUTES),
        "task_create_missing_queues": True,
        # Broker connection: retry at startup and after a loss.
        "broker_connection_retry_on_startup": True,
        "broker_connection_retry": True,
        "broker_connection_max_retries": 100,
        "broker_connection_timeout": 10.0,
        "broker_channel_error_retry": True,
        "broker_transport_options": transport,
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": 5,
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 3.0,
        },
        # Result backend: small JSON summaries; the scans table is the record.
        "result_expires": 86_400,
        "result_backend_always_retry": True,
        "result_backend_max_retries": 10,
        # Reconnecting to the result store (also done when a scan is submitted): give up after
        # ~4 s instead of Celery's ~20 s, so a submit with Redis down fails fast.
        "result_backend_transport_options": {
            "retry_policy": {
                "max_retries": 5,
                "interval_start": 0,
                "interval_step": 0.5,
                "interval_max": 1.0,
            }
        },
        "redis_socket_timeout": 30.0,
        "redis_socket_connect_timeout": 10.0,
        "redis_retry_on_timeout": True,
        "redis_socket_keepalive": True,
        "worker_send_task_events": False,
        "enable_utc": True,
    }
    # Our own key: how long the scan ledger waits for a sign of life (tasks.worker.ScanLedger).
    config["waste_pipeline_lost_after"] = tuning.lost_timeout
    if tuning.pool:
        config["worker_pool"] = tuning.pool
    return config


def create_app(
    settings: Settings | None = None,
    tuning: CelerySettings | None = None,
    *,
    set_as_current: bool = True,
) -> Celery:
    """A Celery app with :func:`celery_config` (the module-level :data:`app` is the one).

    A second app (e.g. a client pointing at another broker) can submit scans by task name with
    :func:`tasks.submit_scan`'s ``app=`` argument; only :data:`app` registers the tasks.
    """
    celery = Celery("tasks", set_as_current=set_as_current)
    celery.conf.update(celery_config(settings, tuning))
    return celery


celery_settings = CelerySettings()
"""The task knobs this process was started with."""

app = create_app(tuning=celery_settings)
"""The Celery application: ``celery -A tasks worker ...``."""
