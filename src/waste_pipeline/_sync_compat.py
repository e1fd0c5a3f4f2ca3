"""Sync twins of ``_async_compat``, cooperative under gevent monkey-patching.

Generated sync code imports these under the same names as the async source imports from
``_async_compat``. Without gevent they use OS threads; in a process where gevent has patched
the standard library they use greenlets (and gevent's real-thread pool for CPU work), so a
``-P gevent`` worker's other greenlets keep running.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

__all__ = [
    "Lock",
    "Semaphore",
    "getaddrinfo",
    "gevent_active",
    "map_bounded",
    "run_blocking",
    "sleep",
    "timeout",
]

T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")

Semaphore = threading.Semaphore
Lock = threading.Lock


def gevent_active() -> bool:
    """True when gevent has monkey-patched this process's sockets."""
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a dependency
        return False
    return bool(monkey.is_module_patched("socket"))


def sleep(seconds: float) -> None:
    """Sleep; under gevent this yields to other greenlets (time.sleep is patched)."""
    time.sleep(seconds)


def map_bounded(fn: Callable[[T], R], items: Iterable[T], *, limit: int) -> list[R | BaseException]:
    """Run ``fn(item)`` for every item, at most ``limit`` at once, results in input order.

    Greenlets under gevent, OS threads otherwise. An item whose call raised gives its exception
    in the result list.
    """
    if limit < 1:
        raise ValueError("limit must be >= 1")
    items = list(items)

    def one(item: T) -> R | BaseException:
        try:
            return fn(item)
        except Exception as exc:
            return exc

    if len(items) <= 1:
        return [one(i) for i in items]
    if gevent_active():
        from gevent.pool import Pool

        return list(Pool(limit).map(one, items))
    with ThreadPoolExecutor(max_workers=min(limit, len(items))) as pool:
        return list(pool.map(one, items))


@contextmanager
def timeout(seconds: float | None) -> Iterator[None]:
    """Raise :class:`TimeoutError` if the block runs longer than ``seconds`` (None: no limit).

    Under gevent the block is interrupted at its next yield point. Plain threads cannot be
    interrupted: the block runs to its end (every network call has its own timeout) and
    :class:`TimeoutError` is raised afterwards if it overran.
    """
    if seconds is None:
        yield
        return
    if gevent_active():
        import gevent

        with gevent.Timeout(seconds, TimeoutError):
            yield
        return
    start = time.monotonic()
    yield
    if time.monotonic() - start > seconds:
        raise TimeoutError(f"block took longer than {seconds} s")


def run_blocking(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run CPU-heavy ``fn``; under gevent in a real OS thread so other greenlets keep running."""
    if gevent_active():
        import gevent

        result: R = gevent.get_hub().threadpool.apply(fn, args, kwargs)
        return result
    return fn(*args, **kwargs)


def getaddrinfo(host: str, port: int) -> list[str]:
    """Resolve ``host`` to its IP addresses (TCP); cooperative under gevent (patched resolver)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]
