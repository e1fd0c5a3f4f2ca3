"""waste_pipeline.runtime: pool detection, twin choice, the per-process event loop."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from waste_pipeline import runtime
from waste_pipeline.runtime import EventLoopThread

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_recorded_pool() -> Iterator[None]:
    runtime.reset_worker_pool()
    yield
    runtime.reset_worker_pool()


@pytest.fixture
def loop_thread() -> Iterator[EventLoopThread]:
    with EventLoopThread(name="test-loop") as elt:
        yield elt


def _run_python(code: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "src")])
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


# --- pool names and detection ------------------------------------------------------------------


def test_pool_name_accepts_aliases_paths_classes_and_instances() -> None:
    from celery.concurrency.prefork import TaskPool as Prefork
    from celery.concurrency.solo import TaskPool as Solo
    from celery.concurrency.thread import TaskPool as Threads

    assert runtime.pool_name(None) is None
    assert runtime.pool_name("gevent") == "gevent"
    assert runtime.pool_name("processes") == "prefork"
    assert runtime.pool_name("celery.concurrency.gevent:TaskPool") == "gevent"
    assert runtime.pool_name(Prefork) == "prefork"
    assert runtime.pool_name(Solo) == "solo"
    assert runtime.pool_name(Threads) == "threads"

    class MyPrefork(Prefork):  # type: ignore[misc]
        pass

    assert runtime.pool_name(MyPrefork) == "prefork"
    assert runtime.pool_name(object()) == "builtins:object"


def test_gevent_pool_class_maps_to_gevent() -> None:
    from celery.concurrency.gevent import TaskPool

    assert runtime.pool_name(TaskPool) == "gevent"


def test_unpatched_process_defaults_to_solo_and_the_async_twin() -> None:
    assert runtime.gevent_patched() is False
    assert runtime.detect_pool() == "solo"
    assert runtime.use_sync_twin() is False


@pytest.mark.parametrize(
    ("pool", "sync"),
    [("gevent", True), ("eventlet", True), ("threads", True), ("prefork", False),
     ("solo", False), ("my.pool:Custom", True)],
)
def test_the_recorded_pool_decides_the_twin(pool: str, sync: bool) -> None:
    assert runtime.set_worker_pool(pool) == pool
    assert runtime.detect_pool() == pool
    assert runtime.use_sync_twin() is sync


def test_an_unpatched_gevent_pool_is_a_problem_and_says_what_to_do() -> None:
    problem = runtime.unpatched_pool_problem("gevent")
    assert problem is not None
    assert "not monkey-patched" in problem
    assert "-P gevent" in problem and "-Pgevent" in problem
    assert runtime.unpatched_pool_problem("prefork") is None
    assert runtime.unpatched_pool_problem("threads") is None
    assert runtime.unpatched_pool_problem(None) is None


# --- EventLoopThread -------------------------------------------------------------------------


def test_event_loop_thread_runs_coroutines_on_one_long_lived_loop(
    loop_thread: EventLoopThread,
) -> None:
    async def where() -> tuple[int, str]:
        return id(asyncio.get_running_loop()), threading.current_thread().name

    first = loop_thread.run(where())
    second = loop_thread.run(where())
    assert first == second  # the same loop, every call
    assert first[1] == "test-loop"
    assert threading.current_thread().name != "test-loop"
    assert loop_thread.running


def test_event_loop_thread_propagates_exceptions(loop_thread: EventLoopThread) -> None:
    async def boom() -> None:
        raise ValueError("from the loop")

    with pytest.raises(ValueError, match="from the loop"):
        loop_thread.run(boom())
    # The loop survives a failed coroutine.
    assert loop_thread.run(asyncio.sleep(0, result=7)) == 7


def test_timeout_cancels_the_coroutine(loop_thread: EventLoopThread) -> None:
    cancelled = threading.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    start = time.monotonic()
    with pytest.raises(TimeoutError):
        loop_thread.run(slow(), timeout=0.2)
    assert time.monotonic() - start < 5
    assert cancelled.wait(5), "the coroutine was not cancelled"


def test_a_soft_time_limit_in_the_waiting_thread_cancels_the_coroutine(
    loop_thread: EventLoopThread,
) -> None:
    """Celery's prefork soft limit is a signal handler raising in the main thread: same here."""
    from celery.exceptions import SoftTimeLimitExceeded

    cancelled = threading.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    def soft_limit(signum: int, frame: object) -> None:
        raise SoftTimeLimitExceeded()

    previous = signal.signal(signal.SIGALRM, soft_limit)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        start = time.monotonic()
        with pytest.raises(SoftTimeLimitExceeded):
            loop_thread.run(slow())
        assert time.monotonic() - start < 5
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert cancelled.wait(5), "the coroutine was not cancelled"
    assert loop_thread.run(asyncio.sleep(0, result="alive")) == "alive"


def test_run_from_the_loop_thread_itself_is_refused(loop_thread: EventLoopThread) -> None:
    async def nested() -> str:
        try:
            loop_thread.run(asyncio.sleep(0))
        except RuntimeError as exc:
            return str(exc)
        return "no error"

    assert "deadlock" in loop_thread.run(nested())


def test_stop_joins_the_thread_and_closes_the_loop() -> None:
    elt = EventLoopThread(name="stop-me").start()
    loop, thread = elt.loop, elt.thread
    assert thread is not None and thread.is_alive()
    leftover = asyncio.run_coroutine_threadsafe(asyncio.sleep(30), loop)
    elt.stop()
    assert not thread.is_alive()
    assert loop.is_closed()
    assert leftover.cancelled()
    assert not elt.running
    with pytest.raises(RuntimeError, match="not running"):
        elt.run(asyncio.sleep(0))


# --- run_async ---------------------------------------------------------------------------------


def test_run_async_reuses_one_loop_per_process() -> None:
    try:
        loop_a = runtime.run_async(_current_loop())
        loop_b = runtime.run_async(_current_loop())
        assert loop_a == loop_b
        first = runtime.event_loop_thread()
        assert first.running
    finally:
        runtime.stop_event_loop()
    assert not first.running
    try:
        runtime.run_async(_current_loop())
        assert runtime.event_loop_thread() is not first  # a new loop after a stop
    finally:
        runtime.stop_event_loop()


async def _current_loop() -> int:
    return id(asyncio.get_running_loop())


def test_run_async_inside_a_running_loop_says_await() -> None:
    async def inside() -> None:
        runtime.run_async(asyncio.sleep(0))

    with pytest.raises(RuntimeError, match="await the coroutine"):
        asyncio.run(inside())


def _child_runs_async(queue: multiprocessing.Queue[object]) -> None:
    try:
        loop_id = runtime.run_async(_current_loop(), timeout=10)
        queue.put((os.getpid(), loop_id, runtime.event_loop_thread().pid))
    except BaseException as exc:  # report, never hang the parent
        queue.put(repr(exc))
    finally:
        runtime.stop_event_loop()


def test_a_forked_child_gets_its_own_loop() -> None:
    """Like a prefork child: the parent's loop thread does not exist after fork."""
    parent_loop = runtime.run_async(_current_loop())
    try:
        ctx = multiprocessing.get_context("fork")
        queue: multiprocessing.Queue[object] = ctx.Queue()
        child = ctx.Process(target=_child_runs_async, args=(queue,))
        child.start()
        got = queue.get(timeout=30)
        child.join(30)
        assert isinstance(got, tuple), got
        pid, _loop_id, loop_pid = got
        assert pid == child.pid == loop_pid != os.getpid()
        assert child.exitcode == 0
        assert runtime.run_async(_current_loop()) == parent_loop  # the parent's is untouched
    finally:
        runtime.stop_event_loop()


def test_async_clients_opened_on_the_process_loop_serve_every_later_call(
    settings: object,
) -> None:
    """The point of one long-lived loop: asyncpg/httpx clients bind to the loop that made them."""
    from tests.helpers import jpeg_data_url
    from waste_pipeline import AsyncScanPipeline

    pipeline = AsyncScanPipeline(settings)  # type: ignore[arg-type]
    try:
        runtime.run_async(pipeline.open())
        image = jpeg_data_url(64, 64)
        results = [runtime.run_async(pipeline.scan(image, f"item {i}")) for i in range(3)]
        assert [r.status for r in results] == ["done"] * 3
        stored = runtime.run_async(pipeline.get(results[0].scan_id))
        assert stored is not None and stored.status == "done"
    finally:
        runtime.run_async(pipeline.aclose())
        runtime.stop_event_loop()


# --- under gevent --------------------------------------------------------------------------------


def test_run_async_in_a_gevent_patched_process_raises_the_clear_error() -> None:
    proc = _run_python(
        """
        from gevent import monkey
        monkey.patch_all()
        import asyncio, json
        from waste_pipeline import runtime

        out = {"pool": runtime.detect_pool(), "sync": runtime.use_sync_twin()}
        coro = asyncio.sleep(0)
        try:
            runtime.run_async(coro)
        except RuntimeError as exc:
            out["error"] = str(exc)
        out["closed"] = coro.cr_frame is None
        try:
            runtime.EventLoopThread().start()
        except RuntimeError as exc:
            out["thread_error"] = str(exc)
        runtime.set_worker_pool("prefork")  # a patched process never gets the async twin
        out["sync_even_if_prefork"] = runtime.use_sync_twin()
        print(json.dumps(out))
        """
    )
    assert proc.returncode == 0, proc.stderr
    import json

    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["pool"] == "gevent"
    assert out["sync"] is True
    assert out["sync_even_if_prefork"] is True
    assert "sync twin" in out["error"] and "ScanPipeline" in out["error"]
    assert "Cannot run the event loop while another loop is running" in out["error"]
    assert out["closed"] is True  # the coroutine was closed: no "never awaited" warning
    assert out["thread_error"] == out["error"]
