"""Async primitives the async source uses instead of ``asyncio.*``.

``_sync_compat`` holds the hand-written twins under the same names; the generator maps this
module to that one. The async source must never call ``asyncio`` directly: unasync would leave
``asyncio.sleep`` & co. in the sync twin, where they are silently wrong.
"""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import ParamSpec, TypeVar

__all__ = [
    "Lock",
    "Semaphore",
    "getaddrinfo",
    "map_bounded",
    "run_blocking",
    "sleep",
    "timeout",
]

T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")

Semaphore = asyncio.Semaphore
Lock = asyncio.Lock


async def sleep(seconds: float) -> None:
    """Sleep without blocking other tasks."""
    await asyncio.sleep(seconds)


async def map_bounded(
    fn: Callable[[T], Awaitable[R]], items: Iterable[T], *, limit: int
) -> list[R | BaseException]:
    """Run ``fn(item)`` for every item, at most ``limit`` at once, results in input order.

    An item whose call raised gives its exception in the result list (nothing is lost, nothing
    cancels the others).
    """
    if limit < 1:
        raise ValueError("limit must be >= 1")
    sem = asyncio.Semaphore(limit)

    async def one(item: T) -> R | BaseException:
        async with sem:
            try:
                return await fn(item)
            except Exception as exc:
                return exc

    return list(await asyncio.gather(*(one(i) for i in items)))


@asynccontextmanager
async def timeout(seconds: float | None) -> AsyncIterator[None]:
    """Raise :class:`TimeoutError` if the block runs longer than ``seconds`` (None: no limit)."""
    async with asyncio.timeout(seconds):
        yield


async def run_blocking(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run CPU-heavy or blocking ``fn`` in a worker thread so the event loop keeps serving."""
    return await asyncio.to_thread(functools.partial(fn, *args, **kwargs))


async def getaddrinfo(host: str, port: int) -> list[str]:
    """Resolve ``host`` to its IP addresses (TCP), without blocking the loop."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]
