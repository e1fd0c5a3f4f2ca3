"""Which twin this process runs, and one long-lived event loop for the async twin.

One helper decides, from the pool the worker really runs, which twin a Celery task uses:

=====================================  ===============================================
pool (``celery worker -P ...``)        twin
=====================================  ===============================================
``gevent``, ``eventlet``, ``threads``  sync :class:`~waste_pipeline.ScanPipeline`
``prefork``, ``solo``                  async :class:`~waste_pipeline.AsyncScanPipeline`
                                       through :func:`run_async`
=====================================  ===============================================

The pool comes from Celery itself: the worker hook (``tasks.worker``) records the pool class
the worker was started with (:func:`set_worker_pool`), and a prefork child inherits it. A
process whose sockets gevent (or eventlet) has patched always gets the sync twin, whatever was
recorded: asyncio's running loop is per OS thread, and every greenlet shares that thread, so
a second greenlet that starts a loop while the first one's is parked is refused
(``RuntimeError: Cannot run the event loop while another loop is running``).

:class:`EventLoopThread` is the prefork side: each worker process keeps ONE event loop, in a
dedicated thread, for its whole life (the async clients — HTTP, OpenAI, the asyncpg pool —
bind to the loop that created them, so a loop per task would have to rebuild them all).
:func:`run_async` submits a coroutine to it and waits in the calling thread; a Celery soft
time limit raised in that thread cancels the coroutine.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sys
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Final, TypeVar

__all__ = [
    "ASYNC_POOLS",
    "GEVENT_RUN_ASYNC_MESSAGE",
    "SYNC_POOLS",
    "EventLoopThread",
    "detect_pool",
    "event_loop_thread",
    "eventlet_patched",
    "gevent_patched",
    "pool_name",
    "reset_worker_pool",
    "run_async",
    "set_worker_pool",
    "start_event_loop",
    "stop_event_loop",
    "unpatched_pool_problem",
    "use_sync_twin",
]

T = TypeVar("T")

SYNC_POOLS: Final = frozenset({"gevent", "eventlet", "threads"})
"""Pools whose tasks share one OS thread (greenlets) or run on threads: the sync twin."""

ASYNC_POOLS: Final = frozenset({"prefork", "solo"})
"""Pools that run one task at a time per process: the async twin on a per-process loop."""

GEVENT_RUN_ASYNC_MESSAGE: Final = (
    "run_async() cannot run a coroutine in a gevent/eventlet-patched process: asyncio keeps "
    "one running loop per OS thread and every greenlet shares that thread, so concurrent "
    "tasks would fail with 'Cannot run the event loop while another loop is running'. Use the "
    "sync twin instead (waste_pipeline.ScanPipeline, or tasks.worker.pipeline_twin(), which "
    "picks it for you)."
)

# Celery's aliases, by the "module:Class" path of the pool class (celery.concurrency.ALIASES).
_POOL_PATHS: Final = {
    "celery.concurrency.prefork:TaskPool": "prefork",
    "celery.concurrency.eventlet:TaskPool": "eventlet",
    "celery.concurrency.gevent:TaskPool": "gevent",
    "celery.concurrency.solo:TaskPool": "solo",
    "celery.concurrency.thread:TaskPool": "threads",
}
_ALIASES: Final = {"processes": "prefork", "thread": "threads"}

_worker_pool: str | None = None


# --- pool detection -----------------------------------------------------------------------------


def gevent_patched() -> bool:
    """True when gevent has monkey-patched this process's ``socket`` module."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None:
        # gevent patches by importing gevent.monkey; not imported means not patched.
        return False
    return bool(monkey.is_module_patched("socket"))


def eventlet_patched() -> bool:
    """True when eventlet has monkey-patched this process's ``socket`` module."""
    patcher = sys.modules.get("eventlet.patcher")
    if patcher is None:
        return False
    return bool(patcher.is_monkey_patched("socket"))


def pool_name(pool: object) -> str | None:
    """Celery's alias for a pool given as an alias, a ``module:Class`` path, a class or an instance.

    Subclasses of Celery's pools map to their base's alias; an unknown pool gives its
    ``module:Class`` path; None gives None.
    """
    if pool is None:
        return None
    if isinstance(pool, str):
        name = pool.strip()
        name = _ALIASES.get(name.lower(), name)
        if name.lower() in _POOL_PATHS.values():
            return name.lower()
        return _POOL_PATHS.get(name, name)
    cls = pool if isinstance(pool, type) else type(pool)
    for klass in cls.__mro__:
        found = _POOL_PATHS.get(f"{klass.__module__}:{klass.__qualname__}")
        if found is not None:
            return found
    return f"{cls.__module__}:{cls.__qualname__}"


def set_worker_pool(pool: object) -> str | None:
    """Record the pool this worker runs (called by the worker hook at ``celeryd_init``).

    Child processes forked afterwards (prefork) inherit the record. Returns the alias.
    """
    global _worker_pool
    _worker_pool = pool_name(pool)
    return _worker_pool


def reset_worker_pool() -> None:
    """Forget the recorded pool (tests)."""
    global _worker_pool
    _worker_pool = None


def detect_pool() -> str:
    """The pool this process runs tasks with: ``gevent``, ``prefork``, ``solo``, ...

    The pool recorded by the worker wins (:func:`set_worker_pool`). Outside a worker (or before
    its hook ran) the process is described by what it is: ``gevent`` or ``eventlet`` when that
    library patched the sockets, else ``solo`` (one plain process running work inline).
    """
    if _worker_pool is not None:
        return _worker_pool
    if gevent_patched():
        return "gevent"
    if eventlet_patched():
        return "eventlet"
    return "solo"


def use_sync_twin() -> bool:
    """True when this process must use the sync twin (:class:`~waste_pipeline.ScanPipeline`).

    gevent/eventlet/threads pools, and any process whose sockets are patched (whatever the
    recorded pool says), use the sync twin; prefork and solo use the async twin through
    :func:`run_async`. An unknown custom pool gets the sync twin: it is safe on threads and
    greenlets alike.
    """
    if gevent_patched() or eventlet_patched():
        return True
    return detect_pool() not in ASYNC_POOLS


def unpatched_pool_problem(pool: object) -> str | None:
    """Why a worker with this pool must not start, or None when it may.

    A ``gevent`` (or ``eventlet``) pool in a process whose sockets are not patched runs every
    task on one thread with blocking sockets: the worker hangs or serialises. It happens when
    the pool was chosen so that Celery did not patch first: ``celery worker -Pgevent`` (no
    space; Celery only patches for ``-P gevent`` and ``--pool=gevent``) or ``worker_pool =
    "gevent"`` in the configuration.
    """
    name = pool_name(pool)
    if name == "gevent" and not gevent_patched():
        lib = "gevent"
    elif name == "eventlet" and not eventlet_patched():
        lib = "eventlet"
    else:
        return None
    return (
        f"refusing to start: the worker pool is {lib!r} but {lib} has not monkey-patched this "
        f"process, so every task would block the whole worker (it would hang). Celery patches "
        f"only when the pool is given on the command line as '-P {lib}' (with a space) or "
        f"'--pool={lib}'; '-P{lib}' (no space) and worker_pool='{lib}' in the configuration "
        f"select the pool without patching. Start the worker as: "
        f"celery -A tasks worker -P {lib} -c 100"
    )


# --- the per-process event loop ---------------------------------------------------------------


class EventLoopThread:
    """One asyncio event loop running forever in a dedicated daemon thread.

    Create it once per process (after fork: :func:`start_event_loop` at
    ``worker_process_init``), submit coroutines with :meth:`run` from any other thread, and
    :meth:`stop` it at shutdown. The calling thread only waits, so a signal-raised exception
    there (Celery's ``SoftTimeLimitExceeded``) interrupts the wait and cancels the coroutine.
    """

    def __init__(self, name: str = "waste-pipeline-loop") -> None:
        self.name = name
        self.pid = os.getpid()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    # lifecycle

    def start(self, timeout: float = 10.0) -> EventLoopThread:
        """Start the loop's thread and wait until the loop runs (idempotent)."""
        if self._thread is not None:
            return self
        if gevent_patched() or eventlet_patched():
            raise RuntimeError(GEVENT_RUN_ASYNC_MESSAGE)
        loop = asyncio.new_event_loop()
        self._loop = loop

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(self._ready.set)
            try:
                loop.run_forever()
            finally:
                try:
                    _cancel_all(loop)
                    loop.run_until_complete(loop.shutdown_asyncgens())
                    loop.run_until_complete(loop.shutdown_default_executor())
                finally:
                    asyncio.set_event_loop(None)
                    loop.close()

        thread = threading.Thread(target=serve, name=self.name, daemon=True)
        self._thread = thread
        thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"the event loop thread {self.name!r} did not start")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel what still runs, stop the loop, join the thread and close the loop."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        if thread.is_alive() and not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
        self._thread = None
        self._loop = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop (RuntimeError when not started)."""
        if self._loop is None or self._thread is None:
            raise RuntimeError(f"the event loop thread {self.name!r} is not running")
        return self._loop

    @property
    def thread(self) -> threading.Thread | None:
        """The loop's thread (None when not started)."""
        return self._thread

    @property
    def running(self) -> bool:
        """True while the loop's thread is alive in this process."""
        return (
            self._thread is not None
            and self.pid == os.getpid()
            and self._thread.is_alive()
            and self._loop is not None
            and self._loop.is_running()
        )

    # work

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop; returns a thread-safe future."""
        try:
            loop = self.loop
        except RuntimeError:
            coro.close()
            raise
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError(
                "EventLoopThread.run() was called from its own loop thread; await the "
                "coroutine instead (waiting here would deadlock)"
            )
        return asyncio.run_coroutine_threadsafe(coro, loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and return its result (or raise its exception).

        ``timeout`` (seconds) cancels the coroutine and raises :class:`TimeoutError`. Any
        exception raised in the waiting thread meanwhile (a soft time limit, KeyboardInterrupt)
        cancels the coroutine too, then propagates.
        """
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            if future.done():  # the coroutine itself raised TimeoutError
                raise
            future.cancel()
            raise TimeoutError(f"coroutine did not finish within {timeout} s") from None
        except BaseException:
            future.cancel()
            raise

    def __enter__(self) -> EventLoopThread:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"EventLoopThread(name={self.name!r}, pid={self.pid}, {state})"


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


_loop_thread: EventLoopThread | None = None
_loop_lock = threading.Lock()


def _forget_after_fork() -> None:
    # The parent's loop thread does not exist in a forked child: never reuse (or close) it.
    global _loop_thread, _loop_lock
    _loop_thread = None
    _loop_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


def start_event_loop() -> EventLoopThread:
    """Start this process's long-lived loop (idempotent; call at ``worker_process_init``)."""
    global _loop_thread
    with _loop_lock:
        current = _loop_thread
        if current is not None and current.pid == os.getpid() and current.running:
            return current
        _loop_thread = EventLoopThread().start()
        return _loop_thread


def event_loop_thread() -> EventLoopThread:
    """This process's loop, started on first use if the worker hook did not start it."""
    current = _loop_thread
    if current is not None and current.pid == os.getpid() and current.running:
        return current
    return start_event_loop()


def stop_event_loop(timeout: float = 10.0) -> None:
    """Stop this process's loop (call at ``worker_process_shutdown`` / ``worker_shutdown``)."""
    global _loop_thread
    with _loop_lock:
        current, _loop_thread = _loop_thread, None
    if current is not None and current.pid == os.getpid():
        current.stop(timeout)


def run_async(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run ``coro`` on this process's long-lived event loop and return its result.

    For prefork (and solo) workers: each process keeps one loop for its whole life, so the
    async clients made on it are reused by every task. Raises :class:`RuntimeError` with what
    to do instead when called in a gevent/eventlet-patched process (use the sync twin) or from
    a coroutine (await it instead: waiting here would block that loop).
    """
    if gevent_patched() or eventlet_patched():
        coro.close()
        raise RuntimeError(GEVENT_RUN_ASYNC_MESSAGE)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        coro.close()
        raise RuntimeError(
            "run_async() was called from a running event loop; await the coroutine instead "
            "(waiting here would block that loop)"
        )
    return event_loop_thread().run(coro, timeout)
