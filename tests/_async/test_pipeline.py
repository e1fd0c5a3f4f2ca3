# async source: pipeline tests, written once for both twins.
"""Every stage and the whole scan against the stand-in (real HTTP) and a real PostgreSQL."""

from __future__ import annotations

import base64

import pytest

from tests.helpers import TEST_API_KEY, jpeg_data_url, make_jpeg
from waste_pipeline._async.pipeline import AsyncScanPipeline
from waste_pipeline.errors import (
    ContentRefusedError,
    ImageTypeError,
    InvalidInputError,
    ModelOutputError,
    ModelRateLimitedError,
    ModelUnavailableError,
)
from waste_pipeline.models import Classification, ScanRequest, new_scan_id


async def test_classify_returns_a_category_of_the_pack(pipeline: AsyncScanPipeline) -> None:
    request = ScanRequest(images=[jpeg_data_url()], user_text="플라스틱 생수병이에요")
    stage = await pipeline.classify(request)
    assert stage.value.major in pipeline.pack.majors()
    assert set(stage.value.tags) <= set(pipeline.pack.tags())
    assert stage.usage.total_tokens > 0
    assert stage.timings_ms["images"] >= 0 and stage.timings_ms["vision"] > 0


async def test_lookup_and_answer_for_every_major(pipeline: AsyncScanPipeline) -> None:
    for major in pipeline.pack.majors():
        middles = pipeline.pack.middles(major) or [None]
        lookup = pipeline.lookup_rules(Classification(major=major, middle=middles[0])).value
        assert lookup.matched in ("middle", "major")
        assert lookup.rules is not None and lookup.rules.steps


async def test_a_rules_miss_still_gets_an_answer(pipeline: AsyncScanPipeline) -> None:
    classification = Classification(major="우주쓰레기", middle=None)
    lookup = pipeline.lookup_rules(classification).value
    assert lookup.matched == "none" and lookup.rules is None and lookup.key is None
    answer = await pipeline.answer(classification, lookup, user_text="")
    assert answer.value.disposal_steps and answer.value.answer


async def test_scan_end_to_end_is_stored(pipeline: AsyncScanPipeline) -> None:
    result = await pipeline.scan(jpeg_data_url(), "투명 페트병, 라벨 있음")
    assert result.status == "done"
    assert result.classification is not None and result.answer is not None
    assert 1 <= len(result.answer.disposal_steps) <= 10
    assert result.rules_key is not None
    assert result.usage.total_tokens > 0
    assert set(result.timings_ms) >= {"images", "vision", "rules", "answer", "store", "total"}
    assert result.models["vision"] and result.models["answer"]
    stored = await pipeline.get(result.scan_id)
    assert stored is not None and stored.status == "done"
    assert stored.answer == result.answer and stored.classification == result.classification
    assert TEST_API_KEY not in result.model_dump_json()


async def test_raw_bytes_and_several_images(pipeline: AsyncScanPipeline) -> None:
    result = await pipeline.scan([make_jpeg(), jpeg_data_url(300, 200)], "")
    assert result.status == "done"
    assert result.inputs["images"][0]["kind"] == "bytes"


async def test_a_redelivered_scan_id_keeps_one_row(pipeline: AsyncScanPipeline) -> None:
    scan_id = new_scan_id()
    first = await pipeline.scan(jpeg_data_url(), "캔", scan_id=scan_id)
    again = await pipeline.scan(jpeg_data_url(), "캔", scan_id=scan_id)
    assert again.scan_id == first.scan_id == scan_id
    assert again.answer == first.answer
    assert not first.replayed and again.replayed
    assert again.timings_ms["total"] > 0  # the stored result carries its timings
    stored = await pipeline.get(scan_id)
    assert stored is not None and stored.attempts == 1


async def test_storing_is_optional(bare_pipeline: AsyncScanPipeline) -> None:
    result = await bare_pipeline.scan(jpeg_data_url(), "")
    assert result.status == "done"
    assert await bare_pipeline.get(result.scan_id) is None


@pytest.mark.parametrize(
    ("image", "error"),
    [
        ("not a url", InvalidInputError),
        ("file:///etc/passwd", InvalidInputError),
        ("data:image/jpeg;base64,AAAA", ImageTypeError),
        ("data:text/html;base64," + base64.b64encode(b"<html></html>").decode(), ImageTypeError),
    ],
)
async def test_bad_images_fail_with_a_typed_error_and_a_failed_row(
    pipeline: AsyncScanPipeline, image: str, error: type[Exception]
) -> None:
    scan_id = new_scan_id()
    with pytest.raises(error) as info:
        await pipeline.scan(image, "", scan_id=scan_id)
    stored = await pipeline.get(scan_id)
    assert stored is not None and stored.status == "failed"
    assert stored.error is not None and stored.error.code == info.value.code  # type: ignore[attr-defined]


async def test_bad_scan_id_is_refused(pipeline: AsyncScanPipeline) -> None:
    with pytest.raises(InvalidInputError):
        await pipeline.scan(jpeg_data_url(), "", scan_id="'; DROP TABLE scans; --")


@pytest.mark.parametrize(
    ("marker", "error", "transient"),
    [
        ("[[standin:refusal]]", ContentRefusedError, False),
        ("[[standin:malformed]]", ModelOutputError, False),
        ("[[standin:schema]]", ModelOutputError, False),
        ("[[standin:500]]", ModelUnavailableError, True),
        ("[[standin:429]]", ModelRateLimitedError, True),
    ],
)
async def test_model_faults_become_typed_errors(
    pipeline: AsyncScanPipeline, marker: str, error: type[Exception], transient: bool
) -> None:
    scan_id = new_scan_id()
    with pytest.raises(error):
        await pipeline.scan(jpeg_data_url(), marker, scan_id=scan_id)
    stored = await pipeline.get(scan_id)
    assert stored is not None and stored.status == "failed"
    assert stored.error is not None and stored.error.transient is transient


async def test_a_transient_error_before_the_last_attempt_leaves_the_scan_pending(
    pipeline: AsyncScanPipeline,
) -> None:
    scan_id = new_scan_id()
    with pytest.raises(ModelUnavailableError):
        await pipeline.scan(
            jpeg_data_url(), "[[standin:503]]", scan_id=scan_id, final_attempt=False
        )
    stored = await pipeline.get(scan_id)
    assert stored is not None and stored.status == "pending"
    assert stored.error is not None and stored.error.code == "model_unavailable"


async def test_english_answers(pipeline: AsyncScanPipeline) -> None:
    result = await pipeline.scan(jpeg_data_url(), "glass bottle", language="en")
    assert result.status == "done" and result.inputs["language"] == "en"
