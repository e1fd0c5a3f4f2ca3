# async source: the scan pipeline (vision -> rules -> answer -> store).
"""The scan pipeline: one object per process, shared by every scan.

``AsyncScanPipeline`` is the async twin (asyncio: FastAPI, Celery prefork through a per-process
event loop); ``ScanPipeline`` is generated from this file for threads and gevent. Both are
built from :class:`~waste_pipeline.settings.Settings`, open their clients once (HTTP, OpenAI,
database pool) and are (async) context managers::

    async with AsyncScanPipeline() as pipeline:
        result = await pipeline.scan("https://example.com/bottle.jpg", "라벨은 뗐어요")
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import httpx2
from pydantic import ValidationError

from ..errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    InvalidInputError,
    WastePipelineError,
)
from ..imaging import PreparedImage
from ..models import (
    Answer,
    Classification,
    ImageInput,
    RulesLookup,
    ScanError,
    ScanRequest,
    ScanResult,
    StageResult,
    clean_text,
    new_scan_id,
    validate_scan_id,
)
from ..rules.pack import RulePack, load_pack
from ..settings import Settings
from .answer import write_answer
from .images import AsyncImageFetcher
from .model import AsyncModelClient
from .store import AsyncScanStore
from .vision import classify_images

__all__ = ["AsyncScanPipeline"]

ImageArg = str | bytes | ImageInput


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


def _invalid(exc: ValidationError) -> InvalidInputError:
    errors = exc.errors()
    if not errors:
        return InvalidInputError("invalid request")
    where = ".".join(str(p) for p in errors[0]["loc"]) or "request"
    return InvalidInputError(f"invalid {where}: {errors[0]['msg']}")


class AsyncScanPipeline:
    """Vision -> rules -> answer -> store, with clients created once and reused."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        pack: RulePack | None = None,
        http_client: httpx2.AsyncClient | None = None,
        store: AsyncScanStore | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self.pack = pack or load_pack(self.settings.rules_pack)
        self._given_http = http_client
        self._http: httpx2.AsyncClient | None = http_client
        self._model: AsyncModelClient | None = None
        self._images: AsyncImageFetcher | None = None
        self._store = store
        if self._store is None and self.settings.store_results and self.settings.dsn():
            self._store = AsyncScanStore.from_settings(self.settings)
        self._opened = False

    # --- lifecycle ----------------------------------------------------------------------------

    async def open(self) -> AsyncScanPipeline:
        """Create the HTTP, model and database clients and make sure the schema exists."""
        if self._opened:
            return self
        if self._http is None:
            self._http = httpx2.AsyncClient(
                timeout=httpx2.Timeout(self.settings.model_timeout, connect=10.0),
                limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=200),
            )
        self._model = AsyncModelClient(self.settings, http_client=self._http)
        # Image hosts are arbitrary: the fetcher keeps its own client (no shared cookies or
        # connection pool with the model endpoint, proxies from the environment ignored).
        self._images = AsyncImageFetcher(self.settings)
        if self._store is not None:
            await self._store.db.open()
            await self._store.create_schema()
        self._opened = True
        return self

    async def aclose(self) -> None:
        """Close every client this pipeline opened."""
        self._opened = False
        if self._images is not None:
            await self._images.aclose()
            self._images = None
        if self._store is not None:
            await self._store.aclose()
        if self._http is not None and self._given_http is None:
            await self._http.aclose()
            self._http = None

    async def __aenter__(self) -> AsyncScanPipeline:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def store_enabled(self) -> bool:
        """True when results are stored in PostgreSQL."""
        return self._store is not None

    def _clients(self) -> tuple[AsyncModelClient, AsyncImageFetcher]:
        if self._model is None or self._images is None:
            raise ConfigurationError("the pipeline is not open: use it as a context manager")
        return self._model, self._images

    # --- stages -------------------------------------------------------------------------------

    async def load_images(self, request: ScanRequest) -> list[PreparedImage]:
        """Fetch, check and downscale the request's images."""
        _, images = self._clients()
        return await images.load_all(request.images[: self.settings.max_images])

    async def classify(self, request: ScanRequest) -> StageResult[Classification]:
        """Stage 1 (vision): images and user text -> taxonomy category and situation tags."""
        model, _ = self._clients()
        start = time.perf_counter()
        prepared = await self.load_images(request)
        images_ms = _ms(start)
        start = time.perf_counter()
        classification, reply = await classify_images(
            model,
            self.pack,
            prepared,
            user_text=request.user_text,
            model=self.settings.vision_model,
            language=request.language,
        )
        return StageResult[Classification](
            value=classification,
            usage=reply.usage,
            timings_ms={"images": images_ms, "vision": _ms(start)},
            model=reply.model,
        )

    def lookup_rules(self, classification: Classification) -> StageResult[RulesLookup]:
        """Stage 2 (rules): the pack's rules for the category; a miss is a typed result."""
        start = time.perf_counter()
        lookup = self.pack.lookup(classification.major, classification.middle)
        return StageResult[RulesLookup](value=lookup, timings_ms={"rules": _ms(start)})

    async def answer(
        self,
        classification: Classification,
        lookup: RulesLookup,
        *,
        user_text: str = "",
        language: str | None = None,
    ) -> StageResult[Answer]:
        """Stage 3 (answer): disposal steps, what to fix, and a short friendly answer."""
        model, _ = self._clients()
        start = time.perf_counter()
        answer, reply = await write_answer(
            model,
            classification,
            lookup,
            user_text=user_text,
            model=self.settings.answer_model,
            language=language or self.settings.language,
        )
        return StageResult[Answer](
            value=answer, usage=reply.usage, timings_ms={"answer": _ms(start)}, model=reply.model
        )

    async def store(self, result: ScanResult) -> None:
        """Stage 4 (store): write the finished scan (no-op when storing is off)."""
        if self._store is not None:
            await self._store.finish(result)

    # --- records ------------------------------------------------------------------------------

    def request(
        self,
        image_url: ImageArg | Sequence[ImageArg],
        user_text: str = "",
        *,
        language: str | None = None,
    ) -> ScanRequest:
        """Validate raw inputs into a :class:`ScanRequest` (InvalidInputError when bad)."""
        images = [image_url] if isinstance(image_url, str | bytes | ImageInput) else image_url
        if len(images) > self.settings.max_images:
            raise InvalidInputError(
                f"too many images: {len(images)} (at most {self.settings.max_images})"
            )
        try:
            return ScanRequest.model_validate(
                {
                    "images": list(images),
                    "user_text": user_text,
                    "language": language or self.settings.language,
                }
            )
        except ValidationError as exc:
            raise _invalid(exc) from None

    async def begin(self, scan_id: str, inputs: dict[str, Any]) -> ScanResult | None:
        """Record a delivery as running; returns the stored result if the scan is already done."""
        if self._store is None:
            return None
        return await self._store.begin(scan_id, inputs)

    async def record_pending(self, scan_id: str, inputs: dict[str, Any]) -> None:
        """Record a queued scan as ``pending`` (no-op when the row exists or storing is off)."""
        if self._store is not None:
            await self._store.ensure_pending(scan_id, inputs)

    async def record_classification(self, scan_id: str, classification: Classification) -> None:
        """Store the vision stage's output on a running scan (for progress events)."""
        if self._store is not None:
            await self._store.save_classification(scan_id, classification)

    async def record_rules(self, scan_id: str, rules_key: str | None) -> None:
        """Store the rules stage's key on a running scan (for progress events)."""
        if self._store is not None:
            await self._store.save_rules_key(scan_id, rules_key)

    async def record_failure(
        self,
        scan_id: str,
        inputs: dict[str, Any],
        exc: WastePipelineError,
        *,
        final: bool = True,
    ) -> ScanError:
        """Store why a scan failed (``failed``, or ``pending`` when a retry follows)."""
        error = ScanError.model_validate(exc.to_dict())
        if self._store is not None:
            try:
                await self._store.fail(scan_id, inputs, error, final=final)
            except DatabaseUnavailableError:
                if not isinstance(exc, DatabaseUnavailableError):
                    raise
        return error

    async def get(self, scan_id: str) -> ScanResult | None:
        """The stored scan with this id, or None (always None when storing is off)."""
        validate_scan_id(scan_id)
        if self._store is None:
            return None
        return await self._store.get(scan_id)

    async def ping(self) -> None:
        """Check the database answers (no-op when storing is off); DatabaseUnavailableError."""
        if self._store is not None:
            await self._store.ping()

    async def count_by_status(self) -> dict[str, int]:
        """How many stored scans are in each status."""
        if self._store is None:
            return {}
        return await self._store.count_by_status()

    # --- the whole scan -----------------------------------------------------------------------

    async def scan(
        self,
        image_url: ImageArg | Sequence[ImageArg],
        user_text: str = "",
        scan_id: str | None = None,
        *,
        language: str | None = None,
        final_attempt: bool = True,
    ) -> ScanResult:
        """Run every stage and store the result; returns the ``done`` :class:`ScanResult`.

        On failure the reason is stored (``failed``; or ``pending`` for a transient error when
        ``final_attempt`` is False, i.e. a retry will follow) and the typed error is raised,
        with ``exc.scan_id`` set. A scan id that already ended ``done`` returns the stored
        result without running again.
        """
        total = time.perf_counter()
        if scan_id is None:
            scan_id = new_scan_id()
        else:
            try:
                validate_scan_id(scan_id)
            except ValueError as exc:
                raise InvalidInputError(str(exc)) from None
        inputs: dict[str, Any] = {"user_text": clean_text(str(user_text))[:200]}
        try:
            request = self.request(image_url, user_text, language=language)
            inputs = request.describe()
            stored = await self.begin(scan_id, inputs)
            if stored is not None:
                return stored.model_copy(update={"replayed": True})
            vision = await self.classify(request)
            await self.record_classification(scan_id, vision.value)
            rules = self.lookup_rules(vision.value)
            await self.record_rules(scan_id, rules.value.key)
            answer = await self.answer(
                vision.value, rules.value, user_text=request.user_text, language=request.language
            )
            result = ScanResult(
                scan_id=scan_id,
                status="done",
                inputs=inputs,
                classification=vision.value,
                rules=rules.value,
                rules_key=rules.value.key,
                answer=answer.value,
                timings_ms={**vision.timings_ms, **rules.timings_ms, **answer.timings_ms},
                models={"vision": vision.model or "", "answer": answer.model or ""},
                usage=vision.usage.add(answer.usage),
                attempts=1,
            )
            result.timings_ms["total"] = _ms(total)  # stored with the result (store excluded)
            start = time.perf_counter()
            await self.store(result)
            result.timings_ms["store"] = _ms(start)
            result.timings_ms["total"] = _ms(total)
            return result
        except WastePipelineError as exc:
            final = final_attempt or not exc.transient
            await self.record_failure(scan_id, inputs, exc, final=final)
            exc.scan_id = scan_id
            raise
