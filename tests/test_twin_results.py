"""Both twins give the same result for the same input."""

from __future__ import annotations

import asyncio

from tests.helpers import jpeg_data_url, make_jpeg
from waste_pipeline import AsyncScanPipeline, ScanPipeline
from waste_pipeline.settings import Settings

CASES = [
    ([jpeg_data_url()], "투명 페트병이에요, 라벨이 붙어 있어요", "ko"),
    ([make_jpeg(800, 600)], "", "ko"),
    ([jpeg_data_url(300, 300), make_jpeg(200, 100)], "glass bottle with a cap", "en"),
]


def _comparable(result: object) -> dict[str, object]:
    data = result.model_dump(mode="json")  # type: ignore[attr-defined]
    return {k: data[k] for k in ("status", "classification", "rules", "rules_key", "answer",
                                 "usage", "models", "inputs")}


def test_sync_and_async_twins_agree(settings: Settings) -> None:
    settings = settings.model_copy(update={"store_results": False})

    with ScanPipeline(settings) as sync_pipeline:
        sync_results = [sync_pipeline.scan(images, text, language=lang)
                        for images, text, lang in CASES]

    async def run_async() -> list[object]:
        async with AsyncScanPipeline(settings) as async_pipeline:
            return [await async_pipeline.scan(images, text, language=lang)
                    for images, text, lang in CASES]

    async_results = asyncio.run(run_async())
    for s, a in zip(sync_results, async_results, strict=True):
        assert _comparable(s) == _comparable(a)
        assert set(s.timings_ms) == set(a.timings_ms)  # type: ignore[attr-defined]
