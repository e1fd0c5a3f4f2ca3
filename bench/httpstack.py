"""Why the async twin uses httpx2: CPU per request of httpx vs httpx2 at 100 concurrent requests.

    python -m bench.httpstack

Both libraries' async and sync clients send the same GETs to the same local server (the
stand-in's ``/healthz``, in its own process, 50 ms latency); CPU is the measuring process's
``time.process_time()``. httpx is installed only for this comparison (dev extra).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any

CONCURRENCY = 100
ROUNDS = 5


def _start_server(latency: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "waste_pipeline.standin", "--port", "0", "--latency", str(latency)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    base = line.split("listening on ")[1].split()[0]
    return proc, base.rsplit("/v1", 1)[0] + "/healthz"


def _async_cpu(mod: Any, url: str) -> tuple[float, float]:
    async def run() -> tuple[float, float]:
        async with mod.AsyncClient(limits=mod.Limits(max_connections=2 * CONCURRENCY)) as c:
            await asyncio.gather(*(c.get(url) for _ in range(CONCURRENCY)))  # connect, warm
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(ROUNDS):
                replies = await asyncio.gather(*(c.get(url) for _ in range(CONCURRENCY)))
                assert all(r.status_code == 200 for r in replies)
            return (
                (time.process_time() - cpu) / (CONCURRENCY * ROUNDS),
                time.perf_counter() - wall,
            )

    return asyncio.run(run())


def _sync_cpu(mod: Any, url: str) -> tuple[float, float]:
    with (
        mod.Client(limits=mod.Limits(max_connections=2 * CONCURRENCY)) as c,
        ThreadPoolExecutor(CONCURRENCY) as pool,
    ):
        list(pool.map(lambda _: c.get(url), range(CONCURRENCY)))
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(ROUNDS):
            replies = list(pool.map(lambda _: c.get(url), range(CONCURRENCY)))
            assert all(r.status_code == 200 for r in replies)
        return (time.process_time() - cpu) / (CONCURRENCY * ROUNDS), time.perf_counter() - wall


def run() -> list[dict[str, Any]]:
    """Measure every client; one row per client with CPU ms per request and wall seconds."""
    import httpx
    import httpx2

    proc, url = _start_server(0.05)
    rows: list[dict[str, Any]] = []
    try:
        mods: tuple[tuple[str, ModuleType], ...] = (("httpx", httpx), ("httpx2", httpx2))
        for name, mod in mods:
            for kind, fn in (("AsyncClient", _async_cpu), ("Client, 100 threads", _sync_cpu)):
                cpu, wall = fn(mod, url)
                rows.append(
                    {
                        "client": f"{name} {mod.__version__} {kind}",
                        "cpu_ms_per_request": round(cpu * 1000, 2),
                        "wall_s": round(wall, 2),
                    }
                )
    finally:
        proc.terminate()
        proc.wait(10)
    return rows


if __name__ == "__main__":
    for row in run():
        print(
            f"{row['client']:36s} {row['cpu_ms_per_request']:7.2f} ms CPU/request "
            f"({row['wall_s']:.2f} s wall for {CONCURRENCY * ROUNDS} requests)"
        )
