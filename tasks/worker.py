# mypy: disable-error-code="untyped-decorator"
"""Worker hooks and the per-process pipeline.

Signal hooks (connected when ``tasks`` is imported, i.e. by ``celery -A tasks``):

* ``celeryd_init`` (worker main process, before the pool and the broker connection exist):
  record the pool (:func:`waste_pipeline.runtime.set_worker_pool`); refuse an unpatched
  gevent/eventlet pool (exit status 3 with a clear message instead of a hang); size the broker
  and result-backend connection pools to the concurrency.
* ``worker_ready`` (main process, logging set up): log the pool, twin and the broker
  channel's real pool size; start the periodic :class:`WorkerSweeper` (unacknowledged
  messages of dead workers back to their queue; lost scans requeued from the
  :class:`ScanLedger`).
* ``worker_process_init`` (each prefork child, after fork): start the child's one long-lived
  event loop.
* ``worker_process_shutdown`` / ``worker_shutdown``: close the pipeline's clients and stop the
  loop.

Clients (HTTP, OpenAI, the database pool) are never created at import time nor per task: the
first task of a process opens one pipeline (:func:`pipeline_twin`) and every later task of that
process reuses it. Under gevent one sync :class:`~waste_pipeline.ScanPipeline` is shared by
every greenlet (its pools are greenlet-safe); under prefork each child opens one
:class:`~waste_pipeline.AsyncScanPipeline` on its event loop.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Final, cast

from celery import signals

from waste_pipeline import runtime
from waste_pipeline.models import Classification, RulesLookup, ScanResult, StageResult
from waste_pipeline.settings import Settings

if TYPE_CHECKING:
    from waste_pipeline import AsyncScanPipeline, ScanPipeline
    from waste_pipeline.errors import WastePipelineError
    from waste_pipeline.models import Answer, ScanError, ScanRequest

__all__ = [
    "GREENLET_DUMP_HEADER",
    "LEDGER_KEY",
    "LEDGER_PAYLOADS_KEY",
    "REFUSAL_EXIT_STATUS",
    "PipelineTwin",
    "ScanLedger",
    "WorkerSweeper",
    "close_clients",
    "configure_worker",
    "connection_pool_size",
    "install_greenlet_dump",
    "ledger_for",
    "pipeline_twin",
    "worker_settings",
]

log = logging.getLogger(__name__)

REFUSAL_EXIT_STATUS: Final = 3
"""Exit status of a worker that refuses to start (unpatched gevent/eventlet pool)."""

_POOL_HEADROOM: Final = 20
"""Connections beyond the concurrency: the consumer, mingle/gossip, retries, chain publishes."""


# --- worker start: pool, refusal, connection pools ----------------------------------------------


def connection_pool_size(concurrency: int, configured: int | None = None) -> int:
    """Redis connections a worker of this concurrency needs in each pool.

    With ``acks_late`` every task acknowledges its message from its own greenlet/thread through
    the broker channel's Redis connection pool; when the pool is smaller than the number of
    tasks finishing at once, redis-py raises "Too many connections", the ack is lost and the
    message is delivered again: the task body runs twice. kombu's default is 10.
    """
    needed = max(10, concurrency + _POOL_HEADROOM)
    return max(needed, configured or 0)


def _concurrency(options: dict[str, Any], conf: Any) -> int:
    value = options.get("concurrency") or conf.worker_concurrency
    try:
        return max(1, int(value))
    except (TypeError, ValueError):  # None or "auto": Celery uses the CPU count
        return os.cpu_count() or 1


def configure_worker(options: dict[str, Any], conf: Any) -> str | None:
    """What ``celeryd_init`` does; returns the pool alias. Raises SystemExit to refuse."""
    pool = runtime.set_worker_pool(
        options.get("pool") or options.get("pool_cls") or conf.worker_pool or "prefork"
    )
    problem = runtime.unpatched_pool_problem(pool)
    if problem is not None:
        print(f"waste-pipeline worker: {problem}", file=sys.stderr, flush=True)
        raise SystemExit(REFUSAL_EXIT_STATUS)
    concurrency = _concurrency(options, conf)
    transport = dict(conf.broker_transport_options or {})
    size = connection_pool_size(concurrency, transport.get("max_connections"))
    transport["max_connections"] = size
    conf.broker_transport_options = transport
    conf.broker_pool_limit = max(size, conf.broker_pool_limit or 0)
    conf.redis_max_connections = max(size, conf.redis_max_connections or 0)
    return pool


@signals.celeryd_init.connect
def _on_celeryd_init(sender: Any = None, conf: Any = None, options: Any = None, **_: Any) -> None:
    configure_worker(dict(options or {}), conf)
    # One INFO line per HTTP request from the HTTP client is noise at this scale.
    for name in ("httpx2", "httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger(name).level))


# --- the scan ledger: scans queued but not finished -------------------------------------------

LEDGER_KEY: Final = "waste_pipeline:ledger"
"""Redis sorted set: scan id -> the time after which the scan is presumed lost."""
LEDGER_PAYLOADS_KEY: Final = "waste_pipeline:ledger:payloads"
"""Redis hash: scan id -> what it takes to queue the scan again (JSON)."""
LEDGER_LOCK_KEY: Final = "waste_pipeline:ledger:lock"


class ScanLedger:
    """Scans that were queued and have not reached ``done`` or ``failed``, kept in Redis.

    Why: kombu's Redis transport takes a message off its queue with BRPOP *before* it records
    it as unacknowledged, so a worker killed in between loses that message for good; ``acks_late``
    and the visibility timeout cannot bring it back, and the scan would stay ``pending`` forever.
    The ledger closes that gap: :func:`tasks.submit_scan` writes the scan's request here before
    publishing it, every task execution pushes the scan's deadline forward (a sign of life), a
    scan's final outcome removes it, and every worker's sweep (:class:`WorkerSweeper`) queues
    again, with the same scan id, the scans whose deadline passed. A scan that finished in the
    meantime costs one no-op task (``begin()`` returns the stored result).

    The deadline is ``lost_after`` seconds (``WASTE_PIPELINE_CELERY_LOST_AFTER``, more than the
    visibility timeout) after the last sign of life: the broker's own redelivery of an
    unacknowledged message always comes first. Ledger errors never fail a scan: the ledger is a
    safety net.
    """

    def __init__(self, url: str, lost_after: float) -> None:
        import redis

        self.url = url
        self.lost_after = lost_after
        self.client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)

    def add(self, scan_id: str, request: dict[str, Any]) -> None:
        """Record a scan about to be queued (raises when Redis is unreachable)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(LEDGER_PAYLOADS_KEY, scan_id, json.dumps(request))
        pipe.zadd(LEDGER_KEY, {scan_id: time.time() + self.lost_after})
        pipe.execute()

    def touch(self, scan_id: str, delay: float = 0.0) -> None:
        """A sign of life: the scan runs (or will, after ``delay`` seconds)."""
        try:
            self.client.zadd(LEDGER_KEY, {scan_id: time.time() + delay + self.lost_after},
                             xx=True)
        except Exception:
            log.warning("scan ledger: could not touch %s", scan_id, exc_info=True)

    def remove(self, scan_id: str) -> None:
        """The scan reached its final status."""
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.zrem(LEDGER_KEY, scan_id)
            pipe.hdel(LEDGER_PAYLOADS_KEY, scan_id)
            pipe.execute()
        except Exception:
            log.warning("scan ledger: could not remove %s", scan_id, exc_info=True)

    def pending(self) -> int:
        """How many scans the ledger holds."""
        return int(self.client.zcard(LEDGER_KEY))

    def requeue_overdue(self, app: Any, *, limit: int = 200, lock_for: float = 30.0) -> list[str]:
        """Queue again the scans whose deadline passed; returns their ids.

        One worker at a time (a short Redis lock), at most ``limit`` scans per call.
        """
        if not self.client.set(LEDGER_LOCK_KEY, os.getpid(), nx=True, ex=max(1, int(lock_for))):
            return []
        try:
            now = time.time()
            raw_ids = self.client.zrangebyscore(LEDGER_KEY, "-inf", now, start=0, num=limit)
            if not raw_ids:
                return []
            ids = [i.decode() if isinstance(i, bytes) else str(i) for i in raw_ids]
            payloads = self.client.hmget(LEDGER_PAYLOADS_KEY, ids)
            from tasks.scan import scan_signature

            requeued = []
            for scan_id, raw in zip(ids, payloads, strict=True):
                if raw is None:  # removed meanwhile (or half-written): nothing to requeue
                    self.client.zrem(LEDGER_KEY, scan_id)
                    continue
                request = json.loads(raw)
                self.touch(scan_id)
                scan_signature(
                    scan_id,
                    list(request.get("images") or []),
                    str(request.get("user_text") or ""),
                    language=request.get("language"),
                    mode=request.get("mode", "run"),
                    app=app,
                ).apply_async()
                requeued.append(scan_id)
                log.warning(
                    "scan ledger: requeued scan %s (no sign of life for %.0f s: its message "
                    "was lost)", scan_id, self.lost_after
                )
            return requeued
        finally:
            self.client.delete(LEDGER_LOCK_KEY)

    def close(self) -> None:
        """Close the Redis connections."""
        self.client.close()


def ledger_for(app: Any) -> ScanLedger | None:
    """This process's ledger on ``app``'s broker (None when the broker is not Redis)."""
    url = str(app.conf.broker_url or "")
    if not url.startswith(("redis://", "rediss://")):
        return None
    clients = _clients
    ledger = clients.ledgers.get(url)
    if ledger is None:
        lost_after = app.conf.get("waste_pipeline_lost_after")
        if not lost_after:
            from tasks.app import celery_settings

            lost_after = celery_settings.lost_timeout
        ledger = clients.ledgers.setdefault(url, ScanLedger(url, float(lost_after)))
    return ledger


class WorkerSweeper:
    """The worker's periodic sweep: unacknowledged messages, then the scan ledger.

    1. Messages unacknowledged for longer than the visibility timeout go back to their queue.
       kombu's Redis transport does this itself only in the event-loop consumer (prefork,
       solo). The consumer of gevent, eventlet and threads workers drains events
       synchronously, and there (kombu 5.7) an idle BRPOP's empty reply raises ``Empty`` before
       the sweep is reached: the messages of a worker killed with ``kill -9`` would stay
       unacknowledged for ever. We run the same ``restore_visible`` on the worker's timer.
    2. :meth:`ScanLedger.requeue_overdue`: scans whose message was lost outright.
    """

    def __init__(self, app: Any, *, restore: bool) -> None:
        self.app = app
        self.restore = restore
        self._connection: Any = None

    def __call__(self) -> None:
        """One sweep (errors are logged, never raised: the next sweep tries again)."""
        if self.restore:
            try:
                if self._connection is None:
                    self._connection = self.app.connection_for_write()
                channel = self._connection.default_channel
                restore = getattr(getattr(channel, "qos", None), "restore_visible", None)
                if restore is not None:
                    restore(num=channel.unacked_restore_limit, interval=1)
            except Exception:
                log.debug("unacked sweep failed; retrying at the next one", exc_info=True)
                self.close()
        try:
            ledger = ledger_for(self.app)
            if ledger is not None:
                ledger.requeue_overdue(self.app)
        except Exception:
            log.warning("scan ledger sweep failed; retrying at the next one", exc_info=True)

    def close(self) -> None:
        """Release the sweeper's connection."""
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.release()
            except Exception:
                log.debug("closing the sweeper's connection failed", exc_info=True)


GREENLET_DUMP_HEADER: Final = "waste-pipeline worker: greenlet dump (SIGUSR2)"


def _dump_greenlets() -> None:
    from gevent.util import format_run_info

    log.warning("%s\n%s", GREENLET_DUMP_HEADER, "\n".join(format_run_info()))


def install_greenlet_dump() -> bool:
    """Under gevent: ``kill -USR2 <worker pid>`` logs the stack of every greenlet.

    A stuck scan is a greenlet parked somewhere; this says where, without stopping the worker.
    The handler runs in its own greenlet (``gevent.signal_handler``), not inside the one it
    interrupted. Returns False (and installs nothing) outside gevent.
    """
    if not runtime.gevent_patched():
        return False
    import signal

    import gevent

    gevent.signal_handler(signal.SIGUSR2, _dump_greenlets)
    return True


@signals.worker_ready.connect
def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    # Logging is set up by now (it is not at celeryd_init): say what was decided, and read the
    # pool size back from the consumer's own broker channel, as kombu applied it.
    try:
        channel_max = sender.connection.default_channel.max_connections
    except Exception:  # another transport: it has no such pool
        channel_max = None
    if str(sender.app.conf.broker_url or "").startswith(("redis://", "rediss://")):
        from tasks.app import celery_settings

        sweeper = WorkerSweeper(sender.app, restore=getattr(sender, "hub", None) is None)
        sender.timer.call_repeatedly(celery_settings.sweep_interval, sweeper)
    install_greenlet_dump()
    log.info(
        "waste-pipeline worker ready: pool=%s twin=%s concurrency=%s "
        "broker channel max_connections=%s",
        runtime.detect_pool(),
        "sync" if runtime.use_sync_twin() else "async",
        getattr(getattr(sender, "controller", None), "concurrency", "?"),
        channel_max,
    )


@signals.worker_process_init.connect
def _on_worker_process_init(**_: Any) -> None:
    # A prefork child, just forked: nothing of the parent's clients is reused (none exist:
    # they are created lazily), and the child gets its own long-lived loop now.
    _forget_clients()
    if not runtime.use_sync_twin():
        runtime.start_event_loop()


@signals.worker_process_shutdown.connect
def _on_worker_process_shutdown(**_: Any) -> None:
    close_clients()


@signals.worker_shutdown.connect
def _on_worker_shutdown(**_: Any) -> None:
    close_clients()


# --- the per-process pipeline -------------------------------------------------------------------


class _Clients:
    """This process's settings and pipelines (reset in a forked child)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.settings: Settings | None = None
        self.sync: ScanPipeline | None = None
        self.async_: AsyncScanPipeline | None = None
        self.ledgers: dict[str, ScanLedger] = {}


_clients = _Clients()


def _forget_clients() -> None:
    global _clients
    _clients = _Clients()


os.register_at_fork(after_in_child=_forget_clients)


def worker_settings() -> Settings:
    """This process's :class:`Settings` (read from the environment once)."""
    clients = _clients
    if clients.settings is None:
        clients.settings = Settings()
    return clients.settings


def _sync_pipeline() -> ScanPipeline:
    clients = _clients
    if clients.sync is None:
        with clients.lock:
            if clients.sync is None:
                from waste_pipeline import ScanPipeline

                pipeline = ScanPipeline(worker_settings())
                try:
                    pipeline.open()
                except BaseException:
                    pipeline.close()
                    raise
                clients.sync = pipeline
    return clients.sync


async def _async_pipeline() -> AsyncScanPipeline:
    # Runs on the process's event loop thread only, so no lock is needed beyond the GIL:
    # the check and the assignment happen without an await in between.
    clients = _clients
    if clients.async_ is None:
        from waste_pipeline import AsyncScanPipeline

        pipeline = AsyncScanPipeline(worker_settings())
        clients.async_ = pipeline
        try:
            await pipeline.open()
        except BaseException:
            clients.async_ = None
            await pipeline.aclose()
            raise
    return clients.async_


def close_clients() -> None:
    """Close this process's pipeline (both twins) and ledger, and stop its event loop."""
    clients = _clients
    ledgers, clients.ledgers = clients.ledgers, {}
    for ledger in ledgers.values():
        try:
            ledger.close()
        except Exception:
            log.debug("closing the scan ledger failed", exc_info=True)
    sync, clients.sync = clients.sync, None
    if sync is not None:
        try:
            sync.close()
        except Exception:  # shutting down: log, never mask the shutdown
            log.warning("closing the sync pipeline failed", exc_info=True)
    async_, clients.async_ = clients.async_, None
    if async_ is not None and clients.pid == os.getpid():
        try:
            runtime.run_async(async_.aclose(), timeout=10.0)
        except Exception:
            log.warning("closing the async pipeline failed", exc_info=True)
    if not runtime.gevent_patched() and not runtime.eventlet_patched():
        runtime.stop_event_loop()


class PipelineTwin:
    """The pipeline's stages on the twin this process must use, behind one sync interface.

    ``sync=True``: calls go straight to the process's shared :class:`ScanPipeline` (gevent,
    eventlet, threads). ``sync=False``: each call runs the :class:`AsyncScanPipeline` method on
    the process's long-lived event loop via :func:`waste_pipeline.runtime.run_async` (prefork,
    solo). Tasks use this and never decide by themselves.
    """

    def __init__(self, sync: bool) -> None:
        self.sync = sync

    @property
    def twin(self) -> str:
        """``"sync"`` or ``"async"``."""
        return "sync" if self.sync else "async"

    def _call(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        if self.sync:
            return getattr(_sync_pipeline(), name)(*args, **kwargs)

        async def call() -> Any:
            pipeline = await _async_pipeline()
            return await getattr(pipeline, name)(*args, **kwargs)

        return runtime.run_async(call())

    def _plain(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """A method that is sync on both twins (no I/O): call it on this thread."""
        if self.sync:
            return getattr(_sync_pipeline(), name)(*args, **kwargs)

        async def get() -> AsyncScanPipeline:
            return await _async_pipeline()

        return getattr(runtime.run_async(get()), name)(*args, **kwargs)

    # stages and records (the pipeline's API, see waste_pipeline._async.pipeline)

    def request(self, images: list[str], user_text: str, *, language: str | None) -> ScanRequest:
        """Validate raw inputs (InvalidInputError when bad)."""
        return cast("ScanRequest", self._plain("request", images, user_text, language=language))

    def scan(
        self,
        images: list[str],
        user_text: str,
        scan_id: str,
        *,
        language: str | None,
        final_attempt: bool,
    ) -> ScanResult:
        """The whole scan, stored; see :meth:`AsyncScanPipeline.scan`."""
        return cast(
            ScanResult,
            self._call(
                "scan",
                images,
                user_text,
                scan_id,
                language=language,
                final_attempt=final_attempt,
            ),
        )

    def begin(self, scan_id: str, inputs: dict[str, Any]) -> ScanResult | None:
        """Mark a delivery running; the stored result when the scan is already done."""
        return cast("ScanResult | None", self._call("begin", scan_id, inputs))

    def classify(self, request: ScanRequest) -> StageResult[Classification]:
        """Stage 1 (vision)."""
        return cast("StageResult[Classification]", self._call("classify", request))

    def record_classification(self, scan_id: str, classification: Classification) -> None:
        """Store the vision stage's output."""
        self._call("record_classification", scan_id, classification)

    def lookup_rules(self, classification: Classification) -> StageResult[RulesLookup]:
        """Stage 2 (rules): a local lookup, no I/O."""
        return cast("StageResult[RulesLookup]", self._plain("lookup_rules", classification))

    def record_rules(self, scan_id: str, rules_key: str | None) -> None:
        """Store the rules stage's key."""
        self._call("record_rules", scan_id, rules_key)

    def answer(
        self,
        classification: Classification,
        lookup: RulesLookup,
        *,
        user_text: str,
        language: str | None,
    ) -> StageResult[Answer]:
        """Stage 3 (answer)."""
        return cast(
            "StageResult[Answer]",
            self._call("answer", classification, lookup, user_text=user_text, language=language),
        )

    def store(self, result: ScanResult) -> None:
        """Stage 4 (store): the finished scan."""
        self._call("store", result)

    def record_pending(self, scan_id: str, inputs: dict[str, Any]) -> None:
        """Record a queued scan as pending (no-op when the row exists)."""
        self._call("record_pending", scan_id, inputs)

    def record_failure(
        self, scan_id: str, inputs: dict[str, Any], exc: WastePipelineError, *, final: bool
    ) -> ScanError:
        """Store why a scan failed (``failed``, or ``pending`` when a retry follows)."""
        return cast("ScanError", self._call("record_failure", scan_id, inputs, exc, final=final))

    def get(self, scan_id: str) -> ScanResult | None:
        """The stored scan, or None."""
        return cast("ScanResult | None", self._call("get", scan_id))


def pipeline_twin() -> PipelineTwin:
    """The pipeline on the twin this process must use (decided by :mod:`waste_pipeline.runtime`)."""
    return PipelineTwin(sync=runtime.use_sync_twin())

