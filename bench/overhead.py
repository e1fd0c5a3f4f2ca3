"""CPU overhead per scan: the twins against the bare SDK calls and against hand-written code.

Every variant runs in a fresh child process against the same OpenAI stand-in, which runs in
its own process with latency 0; the child measures its OWN CPU (``time.process_time()``, all
threads, plus ``getrusage`` for the user/system split) around ``scans`` scans after a warm-up.
Image work is excluded from the scan figures: the twins get an already prepared image (their
``load_images`` stage is overridden to return it), the bare and hand-written code send the
same data URL. Image download and downscaling are measured on their own, and a gevent child
checks that CPU-heavy image work does not stall the hub.

Variants (``kind``):

* ``sync``        ``ScanPipeline.scan`` (the generated twin);
* ``async``       ``AsyncScanPipeline.scan`` under ``asyncio.run``;
* ``bare``        the two ``OpenAI().responses.create`` calls the scan makes, same kwargs;
* ``bare-async``  the same two calls through ``AsyncOpenAI``;
* ``handwritten`` :class:`bench.handwritten.HandwrittenScanner` (OpenAI + psycopg, no framework).

Each runs with the store off (the SDK comparison), and the twins and the hand-written code also
with the store on (PostgreSQL). A concurrent set (``--concurrency``, default 50) runs the sync
code under gevent and the async code under asyncio, as the workers do.

``python -m bench --only overhead`` runs this part; ``python -m bench.overhead child ...`` is
the child entry point (internal).
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import Stack, StandIn, Supervisor, child_env, log, percentile, run_child_json

__all__ = ["OverheadConfig", "child_main", "run"]

API_KEY = "sk-bench-not-a-real-key"
USER_TEXT = "라벨은 뗐어요"
GEVENT_PRELUDE = (
    "from gevent import monkey; monkey.patch_all()\n"
    "import sys\n"
    "from bench.overhead import child_main\n"
    "sys.exit(child_main(sys.argv[1:]))\n"
)
"""A child that patches with gevent before anything else is imported, as ``-P gevent`` does."""


@dataclass(frozen=True)
class OverheadConfig:
    """Sizes of the overhead part."""

    scans: int = 300
    warmup: int = 30
    repeats: int = 3
    concurrency: int = 50
    concurrent_scans: int = 1000
    image_repeats: int = 10
    stall_images: int = 8

    @classmethod
    def quick(cls) -> OverheadConfig:
        """Tiny sizes: it runs, the numbers mean little."""
        return cls(
            scans=5,
            warmup=2,
            repeats=1,
            concurrency=4,
            concurrent_scans=8,
            image_repeats=1,
            stall_images=2,
        )


# --- the photo -------------------------------------------------------------------------------


def make_photo(width: int, height: int) -> bytes:
    """A photo-like JPEG (fractal detail and noise, so it compresses like a real photo)."""
    from PIL import Image

    small = (max(1, width // 4), max(1, height // 4))
    detail = Image.effect_mandelbrot(small, (-2.0, -1.2, 0.8, 1.2), 60).resize((width, height))
    noise = Image.effect_noise((width, height), 12)
    gradient = Image.linear_gradient("L").resize((width, height))
    img = Image.merge("RGB", (detail, noise, gradient))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=88)
    return buf.getvalue()


def _prepared_image(width: int = 640, height: int = 480) -> Any:
    """A :class:`PreparedImage` built the way the pipeline builds it (done once, not timed)."""
    from waste_pipeline.imaging import PreparedImage, prepare_image_with_size, to_data_url

    raw = make_photo(width, height)
    data, media_type, w, h = prepare_image_with_size(raw, max_side=1024, max_pixels=40_000_000)
    return PreparedImage(
        media_type=media_type,
        data=data,
        data_url=to_data_url(data, media_type),
        source_url=None,
        original_bytes=len(raw),
        width=w,
        height=h,
    )


# --- child: one variant ----------------------------------------------------------------------


def _cpu() -> tuple[float, float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return time.process_time(), usage.ru_utime, usage.ru_stime


def _measure(fn: Callable[[int], int], scans: int, warmup: int) -> dict[str, Any]:
    """Run ``fn(warmup)`` then time ``fn(scans)``; ``fn`` returns how many scans failed."""
    fn(warmup)
    cpu0, user0, sys0 = _cpu()
    wall0 = time.perf_counter()
    errors = fn(scans)
    wall = time.perf_counter() - wall0
    cpu1, user1, sys1 = _cpu()
    return {
        "scans": scans,
        "errors": errors,
        "cpu_ms_per_scan": (cpu1 - cpu0) * 1000.0 / scans,
        "user_ms_per_scan": (user1 - user0) * 1000.0 / scans,
        "sys_ms_per_scan": (sys1 - sys0) * 1000.0 / scans,
        "wall_s": wall,
        "scans_per_s": scans / wall if wall > 0 else 0.0,
    }


def _run_many(one: Callable[[int], None], n: int, concurrency: int) -> int:
    """Call ``one(i)`` for i < n, ``concurrency`` at once (greenlets under gevent); count errors."""
    errors = 0

    def safe(i: int) -> None:
        nonlocal errors
        try:
            one(i)
        except Exception:
            errors += 1

    if concurrency <= 1:
        for i in range(n):
            safe(i)
        return errors
    from waste_pipeline._sync_compat import gevent_active

    if gevent_active():
        from gevent.pool import Pool

        Pool(concurrency).map(safe, range(n))
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(safe, range(n)))
    return errors


async def _run_many_async(one: Callable[[int], Any], n: int, concurrency: int) -> int:
    import asyncio

    errors = 0
    semaphore = asyncio.Semaphore(max(1, concurrency))

    async def safe(i: int) -> None:
        nonlocal errors
        async with semaphore:
            try:
                await one(i)
            except Exception:
                errors += 1

    if concurrency <= 1:
        for i in range(n):
            await safe(i)
    else:
        await asyncio.gather(*(safe(i) for i in range(n)))
    return errors


def _settings(base_url: str, dsn: str | None, concurrency: int) -> Any:
    from waste_pipeline.settings import Settings

    return Settings.model_validate(
        {
            "openai_api_key": API_KEY,
            "openai_base_url": base_url,
            "database_url": dsn,
            "store_results": dsn is not None,
            "model_max_retries": 0,
            "db_pool_min": 1,
            "db_pool_max": max(2, min(concurrency, 50)),
        }
    )


def _bare_requests(prepared: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The kwargs of the scan's two calls, built with the pipeline's own prompt/schema code."""
    from waste_pipeline import prompting, schemas
    from waste_pipeline.models import Classification
    from waste_pipeline.rules.pack import load_pack

    pack = load_pack("default")

    def fmt(name: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {"format": {"type": "json_schema", "name": name, "schema": schema, "strict": True}}

    vision = {
        "model": "gpt-4.1-mini",
        "instructions": prompting.vision_instructions(pack, "ko"),
        "input": [{"role": "user", "content": prompting.vision_content([prepared], USER_TEXT)}],
        "text": fmt(schemas.VISION_SCHEMA_NAME, schemas.vision_schema(pack)),
    }
    category = pack.categories()[0]
    major, middle = pack.split_category(category)
    classification = Classification(
        major=major, middle=middle, minor="[stand-in] minor", tags=[], description="[stand-in]"
    )
    content = prompting.answer_content(classification, pack.lookup(major, middle), USER_TEXT)
    answer = {
        "model": "gpt-4.1-mini",
        "instructions": prompting.answer_instructions("ko"),
        "input": [{"role": "user", "content": content}],
        "text": fmt(schemas.ANSWER_SCHEMA_NAME, schemas.answer_schema()),
    }
    return vision, answer


def _child_sync(args: argparse.Namespace, prepared: Any) -> dict[str, Any]:
    from waste_pipeline._sync.pipeline import ScanPipeline
    from waste_pipeline.imaging import PreparedImage
    from waste_pipeline.models import ScanRequest

    class Pipeline(ScanPipeline):
        def load_images(self, request: ScanRequest) -> list[PreparedImage]:
            return [prepared]

    settings = _settings(args.base_url, args.dsn, args.concurrency)
    with Pipeline(settings) as pipeline:

        def one(_i: int) -> None:
            result = pipeline.scan(prepared.data_url, USER_TEXT)
            assert result.status == "done"

        return _measure(lambda n: _run_many(one, n, args.concurrency), args.scans, args.warmup)


def _child_async(args: argparse.Namespace, prepared: Any) -> dict[str, Any]:
    import asyncio

    from waste_pipeline._async.pipeline import AsyncScanPipeline
    from waste_pipeline.imaging import PreparedImage
    from waste_pipeline.models import ScanRequest

    class Pipeline(AsyncScanPipeline):
        async def load_images(self, request: ScanRequest) -> list[PreparedImage]:
            return [prepared]

    async def main() -> dict[str, Any]:
        settings = _settings(args.base_url, args.dsn, args.concurrency)
        async with Pipeline(settings) as pipeline:

            async def one(_i: int) -> None:
                result = await pipeline.scan(prepared.data_url, USER_TEXT)
                assert result.status == "done"

            await _run_many_async(one, args.warmup, args.concurrency)
            cpu0, user0, sys0 = _cpu()
            wall0 = time.perf_counter()
            errors = await _run_many_async(one, args.scans, args.concurrency)
            wall = time.perf_counter() - wall0
            cpu1, user1, sys1 = _cpu()
        return {
            "scans": args.scans,
            "errors": errors,
            "cpu_ms_per_scan": (cpu1 - cpu0) * 1000.0 / args.scans,
            "user_ms_per_scan": (user1 - user0) * 1000.0 / args.scans,
            "sys_ms_per_scan": (sys1 - sys0) * 1000.0 / args.scans,
            "wall_s": wall,
            "scans_per_s": args.scans / wall if wall > 0 else 0.0,
        }

    return asyncio.run(main())


def _child_bare(args: argparse.Namespace, prepared: Any) -> dict[str, Any]:
    import httpx2
    from openai import OpenAI

    vision, answer = _bare_requests(prepared)
    # The same HTTP client shape the pipeline uses (pool big enough for the concurrency).
    http = httpx2.Client(limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=200))
    client = OpenAI(api_key=API_KEY, base_url=args.base_url, max_retries=0, http_client=http)

    def one(_i: int) -> None:
        first = client.responses.create(**vision)
        second = client.responses.create(**answer)
        assert first.output_text and second.output_text

    try:
        return _measure(lambda n: _run_many(one, n, args.concurrency), args.scans, args.warmup)
    finally:
        client.close()


def _child_bare_async(args: argparse.Namespace, prepared: Any) -> dict[str, Any]:
    import asyncio

    import httpx2
    from openai import AsyncOpenAI

    vision, answer = _bare_requests(prepared)

    async def main() -> dict[str, Any]:
        http = httpx2.AsyncClient(
            limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=200)
        )
        client = AsyncOpenAI(
            api_key=API_KEY, base_url=args.base_url, max_retries=0, http_client=http
        )

        async def one(_i: int) -> None:
            first = await client.responses.create(**vision)
            second = await client.responses.create(**answer)
            assert first.output_text and second.output_text

        await _run_many_async(one, args.warmup, args.concurrency)
        cpu0, user0, sys0 = _cpu()
        wall0 = time.perf_counter()
        errors = await _run_many_async(one, args.scans, args.concurrency)
        wall = time.perf_counter() - wall0
        cpu1, user1, sys1 = _cpu()
        await client.close()
        return {
            "scans": args.scans,
            "errors": errors,
            "cpu_ms_per_scan": (cpu1 - cpu0) * 1000.0 / args.scans,
            "user_ms_per_scan": (user1 - user0) * 1000.0 / args.scans,
            "sys_ms_per_scan": (sys1 - sys0) * 1000.0 / args.scans,
            "wall_s": wall,
            "scans_per_s": args.scans / wall if wall > 0 else 0.0,
        }

    return asyncio.run(main())


def _child_handwritten(args: argparse.Namespace, prepared: Any) -> dict[str, Any]:
    from bench.handwritten import HandwrittenScanner

    scanner = HandwrittenScanner(base_url=args.base_url, api_key=API_KEY, dsn=args.dsn)

    def one(_i: int) -> None:
        assert scanner.scan(prepared.data_url, USER_TEXT)["status"] == "done"

    try:
        return _measure(lambda n: _run_many(one, n, 1), args.scans, args.warmup)
    finally:
        scanner.close()


# --- child: images ---------------------------------------------------------------------------


def _child_images(args: argparse.Namespace) -> dict[str, Any]:
    """CPU per download (sync and async fetcher) and per prepare_image, per photo size."""
    import asyncio

    from waste_pipeline._async.images import AsyncImageFetcher
    from waste_pipeline._sync.images import ImageFetcher
    from waste_pipeline.imaging import prepare_image_with_size
    from waste_pipeline.settings import Settings

    folder = Path(args.image_dir)
    settings = Settings(image_allowed_hosts=[f"127.0.0.1:{args.image_port}"])
    out: dict[str, Any] = {}
    for path in sorted(folder.glob("*.jpg")):
        raw = path.read_bytes()
        url = f"http://127.0.0.1:{args.image_port}/{path.name}"
        n = args.repeats
        row: dict[str, Any] = {"bytes": len(raw)}
        with ImageFetcher(settings) as fetcher:
            fetcher.fetch(url)
            cpu0 = time.process_time()
            for _ in range(n):
                assert len(fetcher.fetch(url)) == len(raw)
            row["download_cpu_ms"] = (time.process_time() - cpu0) * 1000.0 / n

        async def fetch_async(url: str = url, n: int = n) -> float:
            async with AsyncImageFetcher(settings) as fetcher:
                await fetcher.fetch(url)
                cpu0 = time.process_time()
                for _ in range(n):
                    await fetcher.fetch(url)
                return (time.process_time() - cpu0) * 1000.0 / n

        row["download_async_cpu_ms"] = asyncio.run(fetch_async())
        prepare_image_with_size(raw, max_side=1024, max_pixels=40_000_000)
        cpu0 = time.process_time()
        wall0 = time.perf_counter()
        for _ in range(n):
            _data, _t, width, height = prepare_image_with_size(
                raw, max_side=1024, max_pixels=40_000_000
            )
        row["prepare_cpu_ms"] = (time.process_time() - cpu0) * 1000.0 / n
        row["prepare_wall_ms"] = (time.perf_counter() - wall0) * 1000.0 / n
        row["output"] = f"{width}x{height}"
        out[path.stem] = row
    return out


def _child_stall(args: argparse.Namespace) -> dict[str, Any]:
    """Under gevent: max gap of a 5 ms ticker while N big images are prepared, three ways."""
    from waste_pipeline import _sync_compat
    from waste_pipeline._sync.images import ImageFetcher
    from waste_pipeline.imaging import prepare_image_with_size
    from waste_pipeline.models import ImageInput
    from waste_pipeline.settings import Settings

    assert _sync_compat.gevent_active(), "the stall check must run in a gevent-patched process"
    raw = Path(args.image_dir, "photo-12mp.jpg").read_bytes()
    fetcher = ImageFetcher(Settings())

    def direct() -> None:
        prepare_image_with_size(raw, max_side=1024, max_pixels=40_000_000)

    def run_blocking() -> None:
        _sync_compat.run_blocking(
            prepare_image_with_size, raw, max_side=1024, max_pixels=40_000_000
        )

    def pipeline() -> None:  # what a scan does: ImageFetcher.load -> compat.run_blocking
        fetcher.load(ImageInput(data=raw))

    out: dict[str, Any] = {"images": args.repeats}
    for name, work in (("direct", direct), ("run_blocking", run_blocking), ("pipeline", pipeline)):
        work()  # warm (thread pool, decoder)
        out[name] = _ticks_during(work, args.repeats)
    fetcher.close()
    return out


def _ticks_during(work: Callable[[], None], n: int) -> dict[str, Any]:
    """Run ``n`` greenlets of ``work`` while a greenlet ticks every 5 ms; report the gaps."""
    import gevent

    gaps: list[float] = []
    running = [True]

    def ticker() -> None:
        while running[0]:
            t0 = time.perf_counter()
            gevent.sleep(0.005)
            gaps.append((time.perf_counter() - t0 - 0.005) * 1000.0)

    tick = gevent.spawn(ticker)
    gevent.sleep(0.05)
    gaps.clear()
    wall0 = time.perf_counter()
    gevent.joinall([gevent.spawn(work) for _ in range(n)], raise_error=True)
    elapsed = time.perf_counter() - wall0
    running[0] = False
    tick.join()
    return {
        "elapsed_s": elapsed,
        "max_gap_ms": max(gaps) if gaps else elapsed * 1000.0,
        "p99_gap_ms": percentile(gaps, 99) if gaps else elapsed * 1000.0,
        "ticks": len(gaps),
    }


_KINDS: dict[str, Callable[[argparse.Namespace, Any], dict[str, Any]]] = {
    "sync": _child_sync,
    "async": _child_async,
    "bare": _child_bare,
    "bare-async": _child_bare_async,
    "handwritten": _child_handwritten,
}


def child_main(argv: Sequence[str]) -> int:
    """Entry point of a measuring child: prints one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m bench.overhead child")
    parser.add_argument("kind", choices=[*_KINDS, "images", "stall"])
    parser.add_argument("--base-url", default="")
    parser.add_argument("--dsn", default=None)
    parser.add_argument("--scans", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--image-dir", default="")
    parser.add_argument("--image-port", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(list(argv))
    if args.kind == "images":
        result = _child_images(args)
    elif args.kind == "stall":
        result = _child_stall(args)
    else:
        from waste_pipeline._sync_compat import gevent_active

        result = _KINDS[args.kind](args, _prepared_image())
        result.update(kind=args.kind, concurrency=args.concurrency, gevent=gevent_active())
    print(json.dumps(result))
    return 0


# --- parent ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Variant:
    label: str
    kind: str
    store: bool
    concurrency: int
    gevent: bool = False


def _variants(cfg: OverheadConfig) -> list[_Variant]:
    c = cfg.concurrency
    return [
        _Variant("sync twin", "sync", False, 1),
        _Variant("async twin", "async", False, 1),
        _Variant("bare SDK (sync)", "bare", False, 1),
        _Variant("bare SDK (async)", "bare-async", False, 1),
        _Variant("hand-written sync", "handwritten", False, 1),
        _Variant("sync twin + store", "sync", True, 1),
        _Variant("async twin + store", "async", True, 1),
        _Variant("hand-written sync + store", "handwritten", True, 1),
        _Variant(f"sync twin, gevent c={c}", "sync", False, c, gevent=True),
        _Variant(f"bare SDK (sync), gevent c={c}", "bare", False, c, gevent=True),
        _Variant(f"async twin, asyncio c={c}", "async", False, c),
        _Variant(f"bare SDK (async), asyncio c={c}", "bare-async", False, c),
    ]


def _python_args(gevent: bool) -> list[str]:
    return ["-c", GEVENT_PRELUDE] if gevent else ["-m", "bench.overhead", "child"]


def _run_variant(
    v: _Variant, cfg: OverheadConfig, standin: StandIn, dsn: str | None
) -> dict[str, Any]:
    scans = cfg.concurrent_scans if v.concurrency > 1 else cfg.scans
    warmup = max(cfg.warmup, v.concurrency) if v.concurrency > 1 else cfg.warmup
    args = [
        *_python_args(v.gevent),
        v.kind,
        "--base-url",
        standin.url,
        "--scans",
        str(scans),
        "--warmup",
        str(warmup),
        "--concurrency",
        str(v.concurrency),
    ]
    if v.store and dsn:
        args += ["--dsn", dsn]
    before_cpu, before_calls = standin.cpu_seconds(), standin.stats()["requests"]["responses"]
    result = run_child_json(args, env=child_env())
    calls = standin.stats()["requests"]["responses"] - before_calls
    result["standin_cpu_ms_per_call"] = (
        (standin.cpu_seconds() - before_cpu) * 1000.0 / calls if calls else float("nan")
    )
    return result


def _images(cfg: OverheadConfig, supervisor: Supervisor) -> dict[str, Any]:
    """Download and downscaling CPU per image, and the gevent stall check."""
    from waste_pipeline.embedded import free_port

    folder = Path(tempfile.mkdtemp(prefix="wp-bench-images-"))
    for name, (w, h) in {
        "photo-12mp": (4032, 3024),
        "photo-2mp": (1600, 1200),
        "photo-vga": (640, 480),
    }.items():
        (folder / f"{name}.jpg").write_bytes(make_photo(w, h))
    port = free_port()
    server = supervisor.spawn(
        "image-server",
        [
            sys.executable,
            "-m",
            "http.server",
            str(port),
            "--bind",
            "127.0.0.1",
            "--directory",
            str(folder),
        ],
    )
    _wait_port(port)
    try:
        sizes = run_child_json(
            [
                "-m",
                "bench.overhead",
                "child",
                "images",
                "--image-dir",
                str(folder),
                "--image-port",
                str(port),
                "--repeats",
                str(cfg.image_repeats),
            ]
        )
    finally:
        supervisor.stop(server)
    stall = run_child_json(
        [
            *_python_args(True),
            "stall",
            "--image-dir",
            str(folder),
            "--repeats",
            str(cfg.stall_images),
        ]
    )
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
    return {"sizes": sizes, "gevent_stall": stall}


def _wait_port(port: int, timeout: float = 10.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def run(cfg: OverheadConfig, supervisor: Supervisor, stack: Stack) -> dict[str, Any]:
    """The overhead part: every variant ``repeats`` times (interleaved), medians reported."""
    standin = StandIn.start(supervisor, latency=0.0)
    dsn = stack.postgres_url
    variants = _variants(cfg)
    runs: dict[str, list[dict[str, Any]]] = {v.label: [] for v in variants}
    for repeat in range(cfg.repeats):
        for v in variants:
            log(f"overhead: {v.label} (run {repeat + 1}/{cfg.repeats})")
            runs[v.label].append(_run_variant(v, cfg, standin, dsn))
    rows: list[dict[str, Any]] = []
    medians: dict[str, float] = {}
    for v in variants:
        results = runs[v.label]
        cpu = statistics.median(r["cpu_ms_per_scan"] for r in results)
        medians[v.label] = cpu
        rows.append(
            {
                "label": v.label,
                "kind": v.kind,
                "store": v.store,
                "concurrency": v.concurrency,
                "gevent": v.gevent,
                "cpu_ms_per_scan": cpu,
                "cpu_ms_runs": [round(r["cpu_ms_per_scan"], 3) for r in results],
                "user_ms_per_scan": statistics.median(r["user_ms_per_scan"] for r in results),
                "sys_ms_per_scan": statistics.median(r["sys_ms_per_scan"] for r in results),
                "scans_per_s": statistics.median(r["scans_per_s"] for r in results),
                "errors": sum(r["errors"] for r in results),
                "standin_cpu_ms_per_call": statistics.median(
                    r["standin_cpu_ms_per_call"] for r in results
                ),
            }
        )
    c = cfg.concurrency
    ratios = {
        "sync/bare": _ratio(medians["sync twin"], medians["bare SDK (sync)"]),
        "async/bare": _ratio(medians["async twin"], medians["bare SDK (sync)"]),
        "async/bare-async": _ratio(medians["async twin"], medians["bare SDK (async)"]),
        "sync/handwritten": _ratio(medians["sync twin"], medians["hand-written sync"]),
        "sync/handwritten (store on)": _ratio(
            medians["sync twin + store"], medians["hand-written sync + store"]
        ),
        f"sync/bare (gevent c={c})": _ratio(
            medians[f"sync twin, gevent c={c}"], medians[f"bare SDK (sync), gevent c={c}"]
        ),
        f"async/bare-async (asyncio c={c})": _ratio(
            medians[f"async twin, asyncio c={c}"], medians[f"bare SDK (async), asyncio c={c}"]
        ),
    }
    log("overhead: images")
    images = _images(cfg, supervisor)
    standin.stop(supervisor)
    return {
        "config": cfg.__dict__,
        "rows": rows,
        "ratios": ratios,
        "images": images,
        "target": {"sync/bare": 1.3, "met": (ratios["sync/bare"] or 99) <= 1.3},
    }


def _main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        return child_main(sys.argv[2:])
    print("usage: python -m bench --only overhead", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main())
