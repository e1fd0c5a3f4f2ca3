"""Every rename the async -> sync generator applies, in one table.

unasync strips ``async``/``await`` and turns any ``AsyncX`` into ``SyncX``; that default is wrong
for every third-party name we use (``AsyncOpenAI`` is ``OpenAI``, not ``SyncOpenAI``), so each
name that differs between the twins is listed here with the place it lives on each side. A test
(``tests/test_generator_rules.py``) imports both sides of every entry from the installed
libraries and fails when either does not exist.

A reference is ``"module"`` or ``"module:attr.path"``; ``None`` means "keyword or syntax-level
name, nothing to import" (e.g. ``__aenter__``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rename:
    """One token rename: ``async_name`` in the async source becomes ``sync_name``."""

    async_name: str
    sync_name: str
    async_ref: str | None
    sync_ref: str | None
    why: str = ""


RENAMES: tuple[Rename, ...] = (
    # --- third-party: the OpenAI SDK (3.x, built on httpx2) -----------------------------------
    Rename("AsyncOpenAI", "OpenAI", "openai:AsyncOpenAI", "openai:OpenAI"),
    Rename(
        "DefaultAsyncHttpx2Client",
        "DefaultHttpx2Client",
        "openai:DefaultAsyncHttpx2Client",
        "openai:DefaultHttpx2Client",
        "the SDK's default http client with its own defaults",
    ),
    # --- third-party: httpx2 ------------------------------------------------------------------
    Rename("AsyncClient", "Client", "httpx2:AsyncClient", "httpx2:Client"),
    Rename(
        "AsyncHTTPTransport", "HTTPTransport", "httpx2:AsyncHTTPTransport", "httpx2:HTTPTransport"
    ),
    Rename("aclose", "close", "httpx2:AsyncClient.aclose", "httpx2:Client.close"),
    Rename(
        "aiter_bytes", "iter_bytes", "httpx2:Response.aiter_bytes", "httpx2:Response.iter_bytes"
    ),
    Rename("aread", "read", "httpx2:Response.aread", "httpx2:Response.read"),
    # --- standard library ---------------------------------------------------------------------
    Rename(
        "asynccontextmanager",
        "contextmanager",
        "contextlib:asynccontextmanager",
        "contextlib:contextmanager",
    ),
    Rename(
        "AsyncIterator", "Iterator", "collections.abc:AsyncIterator", "collections.abc:Iterator"
    ),
    Rename(
        "AsyncIterable", "Iterable", "collections.abc:AsyncIterable", "collections.abc:Iterable"
    ),
    Rename(
        "AsyncGenerator", "Generator", "collections.abc:AsyncGenerator", "collections.abc:Generator"
    ),
    Rename("AsyncExitStack", "ExitStack", "contextlib:AsyncExitStack", "contextlib:ExitStack"),
    Rename("aclosing", "closing", "contextlib:aclosing", "contextlib:closing"),
    Rename(
        "enter_async_context",
        "enter_context",
        "contextlib:AsyncExitStack.enter_async_context",
        "contextlib:ExitStack.enter_context",
    ),
    Rename("__aenter__", "__enter__", None, None),
    Rename("__aexit__", "__exit__", None, None),
    Rename("__aiter__", "__iter__", None, None),
    Rename("__anext__", "__next__", None, None),
    Rename(
        "StopAsyncIteration",
        "StopIteration",
        "builtins:StopAsyncIteration",
        "builtins:StopIteration",
    ),
    # --- our own primitive twins (hand-written, like psycopg's _acompat) ----------------------
    Rename(
        "_async_compat",
        "_sync_compat",
        "waste_pipeline._async_compat",
        "waste_pipeline._sync_compat",
    ),
    Rename("_async_db", "_sync_db", "waste_pipeline._async_db", "waste_pipeline._sync_db"),
    Rename(
        "AsyncpgDatabase",
        "PsycopgDatabase",
        "waste_pipeline._async_db:AsyncpgDatabase",
        "waste_pipeline._sync_db:PsycopgDatabase",
        "one SQL text, two drivers",
    ),
    # --- our generated packages and classes ---------------------------------------------------
    Rename("_async", "_sync", "waste_pipeline._async", "waste_pipeline._sync"),
    Rename(
        "AsyncScanPipeline",
        "ScanPipeline",
        "waste_pipeline._async.pipeline:AsyncScanPipeline",
        "waste_pipeline._sync.pipeline:ScanPipeline",
    ),
    Rename(
        "AsyncScanStore",
        "ScanStore",
        "waste_pipeline._async.store:AsyncScanStore",
        "waste_pipeline._sync.store:ScanStore",
    ),
    Rename(
        "AsyncImageFetcher",
        "ImageFetcher",
        "waste_pipeline._async.images:AsyncImageFetcher",
        "waste_pipeline._sync.images:ImageFetcher",
    ),
    Rename(
        "AsyncModelClient",
        "ModelClient",
        "waste_pipeline._async.model:AsyncModelClient",
        "waste_pipeline._sync.model:ModelClient",
    ),
)

REPLACEMENTS: dict[str, str] = {r.async_name: r.sync_name for r in RENAMES}
"""The token map handed to unasync."""

FORBIDDEN_IN_SOURCE: dict[str, str] = {
    "asyncio": "use waste_pipeline._async_compat (sleep, map_bounded, timeout, ...) instead",
    "anyio": "use waste_pipeline._async_compat instead",
    "anext": "iterate with `async for` instead",
    "aiter": "iterate with `async for` instead",
    "Awaitable": "has no sync meaning; let _async_compat's signatures carry it",
    "Coroutine": "has no sync meaning; let _async_compat's signatures carry it",
}
"""Names the async source must not use: unasync would leave them, silently wrong, in _sync."""

# (source tree, generated tree), relative to the repository root.
TREES: tuple[tuple[str, str], ...] = (
    ("src/waste_pipeline/_async", "src/waste_pipeline/_sync"),
    ("tests/_async", "tests/_sync"),
)

SOURCE_MARKER = "# async source:"
"""Line 1 of every async source file starts with this; the generator puts its header there,
so that the generated file keeps every line number of its source."""

HEADER = "# GENERATED from {source} by `nox -s generate`; do not edit."
