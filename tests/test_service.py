"""The serving layer (`enhancer.service.EnhanceService`) around the pipeline, with a fake batcher:
the tiles go to the batcher in one submit, the batcher's errors become client errors in one place,
the request timeout bounds the wait, a cancelled request cancels its submit, and the observer is
told what happened. No model, no HTTP: the fake batcher answers tiles with themselves."""

from __future__ import annotations

import asyncio

import cv2
import numpy as np
import pytest
from helpers import NearestModel, decode_bytes, encode_bgr, make_settings, photo_like, until

from enhancer import conditioning, tiling
from enhancer.batching import BatcherClosedError, BatchFailedError, BatchTimings, QueueFullError
from enhancer.errors import (
    BadImageError,
    InferenceFailedError,
    OverloadedError,
    RequestTimeoutError,
    ServiceUnavailableError,
)
from enhancer.imaging import OutputFormat
from enhancer.pipeline import Pipeline
from enhancer.service import EnhanceService, batcher_error


class FakeBatcher:
    """Answers `submit` with the identity, or raises what the test sets; records what it got, how
    many submits are waiting at once, and which were cancelled."""

    def __init__(self, error: Exception | None = None, delay_s: float = 0.0):
        self.error = error
        self.delay_s = delay_s
        self.submitted: list[tuple[str, tuple, dict]] = []
        self.waiting = 0
        self.most_waiting = 0
        self.cancelled = 0

    async def submit(self, model, tiles, inputs=None):
        self.submitted.append((model, tiles.shape, dict(inputs or {})))
        self.waiting += 1
        self.most_waiting = max(self.most_waiting, self.waiting)
        try:
            await asyncio.sleep(self.delay_s)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.waiting -= 1
        if self.error is not None:
            raise self.error
        return tiles.copy(), BatchTimings(queue_s=0.25, infer_s=0.5)


class Observed:
    def __init__(self):
        self.seen = []

    def on_enhanced(self, model, timings, passed_through):
        self.seen.append((model, dict(timings), passed_through))


def pipeline(**overrides) -> Pipeline:
    return Pipeline(**{"tile_size": 128, "tile_overlap": 32, **overrides})


def _enhance(batcher, timeout_s: float = 30.0, observer=None, data: bytes | None = None, **pipeline_overrides):
    service = EnhanceService(pipeline(**pipeline_overrides), batcher, request_timeout_s=timeout_s, observer=observer)
    data = encode_bgr(photo_like(200, 200), ".png") if data is None else data
    return asyncio.run(service.enhance(data, NearestModel().spec, OutputFormat.png))


def test_the_service_runs_the_tiles_on_the_batcher_and_tells_the_observer():
    batcher, observer = FakeBatcher(), Observed()
    pixels = photo_like(200, 200)
    result = _enhance(batcher, observer=observer, data=encode_bgr(pixels, ".png"))
    tiles = tiling.plan_tiles(200, 200, 128, 32, multiple=4).num_tiles
    assert tiles > 1 and [(m, shape[0]) for m, shape, _ in batcher.submitted] == [("nearest1x", tiles)]  # one submit
    assert (result.timings["queue"], result.timings["infer"]) == (0.25, 0.5)  # the batcher's own figures
    assert observer.seen == [("nearest1x", result.timings, None)]
    np.testing.assert_array_equal(decode_bytes(result.body), pixels)  # identity tiles stitch back to the input


def test_from_settings_takes_the_tile_size_and_the_request_timeout_from_the_settings():
    settings = make_settings(tile_size=96, tile_overlap=16, request_timeout_s=7)
    service = EnhanceService.from_settings(settings, FakeBatcher())
    assert (service.pipeline.tile_size, service.pipeline.tile_overlap, service.request_timeout_s) == (96, 16, 7)


def test_a_passed_through_image_never_reaches_the_batcher_and_the_observer_is_told_why():
    batcher, observer = FakeBatcher(), Observed()
    data = encode_bgr(photo_like(60, 80), ".jpg", cv2.IMWRITE_JPEG_QUALITY, 95)
    result = _enhance(batcher, observer=observer, data=data, pass_through_jpeg_quality=92)
    assert batcher.submitted == [] and result.passed_through == "jpeg-quality=95"
    assert observer.seen == [("nearest1x", result.timings, "jpeg-quality=95")]


def test_a_bad_image_fails_before_the_batcher_and_is_not_observed():
    batcher, observer = FakeBatcher(), Observed()
    with pytest.raises(BadImageError):
        _enhance(batcher, observer=observer, data=encode_bgr(photo_like(60, 80), ".png")[:100])
    assert batcher.submitted == [] and observer.seen == []


@pytest.mark.parametrize(
    ("error", "expected", "status", "detail"),
    [
        (QueueFullError(10, 4, 12, drain_rate=2.0), OverloadedError, 503, "the server is busy"),
        (BatchFailedError("boom"), InferenceFailedError, 500, "the model failed while processing this image"),
        (BatcherClosedError("closed"), ServiceUnavailableError, 503, "the server is shutting down"),
    ],
)
def test_batcher_errors_become_client_errors_in_one_place(error, expected, status, detail):
    translated = batcher_error(error)
    assert type(translated) is expected and translated.status_code == status and translated.detail.startswith(detail)
    observer = Observed()
    with pytest.raises(expected) as raised:
        _enhance(FakeBatcher(error), observer=observer)
    assert raised.value.detail == translated.detail
    assert observer.seen == []  # a failed request is not reported as enhanced
    if isinstance(error, QueueFullError):
        assert translated.headers["Retry-After"] == "1"  # (10 + 4 - 12) tiles at 2 tiles/s


def test_batch_failure_names_its_cause_and_a_slow_batcher_times_out():
    failed = BatchFailedError("boom")
    failed.__cause__ = MemoryError("device")
    assert "(MemoryError)" in batcher_error(failed).detail
    with pytest.raises(TypeError):
        batcher_error(ValueError("not from the batcher"))
    batcher = FakeBatcher(delay_s=5.0)
    with pytest.raises(RequestTimeoutError, match="within 0.2 s"):
        _enhance(batcher, timeout_s=0.2)
    assert batcher.cancelled == 1  # the timeout cancels the submit, so the batcher can drop the tiles


def test_a_cancelled_request_cancels_its_submit():
    batcher = FakeBatcher(delay_s=30.0)
    service = EnhanceService(pipeline(), batcher, request_timeout_s=60)

    async def scenario():
        data = encode_bgr(photo_like(64, 64), ".png")
        task = asyncio.create_task(service.enhance(data, NearestModel().spec, OutputFormat.png))
        async with asyncio.timeout(30):
            while not batcher.waiting:
                await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert (batcher.cancelled, batcher.waiting) == (1, 0)


def test_concurrent_requests_wait_on_the_batcher_together():
    """The service holds no lock of its own: requests meet in the batcher, where tiles of
    different requests can share batches."""
    batcher = FakeBatcher(delay_s=0.2)
    service = EnhanceService(pipeline(), batcher, request_timeout_s=60)
    images = [photo_like(64 + 8 * i, 64, seed=i) for i in range(4)]

    async def scenario():
        return await asyncio.gather(
            *(service.enhance(encode_bgr(img, ".png"), NearestModel().spec, OutputFormat.png) for img in images)
        )

    results = asyncio.run(scenario())
    assert batcher.most_waiting == len(images)
    for img, result in zip(images, results, strict=True):
        np.testing.assert_array_equal(decode_bytes(result.body), img)


def test_the_service_hands_the_image_s_extra_inputs_to_the_batcher(monkeypatch):
    monkeypatch.setitem(conditioning.BUILDERS, "size", lambda image, strength, spec: [image.height, image.width])
    batcher = FakeBatcher()
    service = EnhanceService(pipeline(), batcher, request_timeout_s=30)
    spec = NearestModel(inputs={"size": 2}).spec
    asyncio.run(service.enhance(encode_bgr(photo_like(90, 70), ".png"), spec, OutputFormat.png))
    ((model, _, inputs),) = batcher.submitted
    assert model == spec.name and list(inputs) == ["size"] and inputs["size"].tolist() == [90.0, 70.0]


def test_an_image_alone_is_cut_in_solo_tiles_and_one_beside_another_in_normal_ones():
    """The service tells the pipeline whether the image is alone; only then does it get the solo
    tile edge (Settings.tiling_for, here a stand-in that records what it was asked)."""
    asked = []

    def tiling_for(spec, alone=False):
        asked.append(alone)
        return (192, 32) if alone else (96, 32)

    batcher = FakeBatcher(delay_s=0.2)
    service = EnhanceService(pipeline(tiling_for=tiling_for), batcher, request_timeout_s=30)
    data = encode_bgr(photo_like(120, 120), ".png")
    spec = NearestModel().spec

    async def one_then_another_while_it_runs():
        first = asyncio.ensure_future(service.enhance(data, spec, OutputFormat.png))
        await until(lambda: batcher.waiting == 1)  # the first is on the batcher: not alone any more
        second = await service.enhance(data, spec, OutputFormat.png)
        third = await service.enhance(data, spec, OutputFormat.png)  # both done: alone again
        return [await first, second, third]

    results = asyncio.run(one_then_another_while_it_runs())
    assert asked == [True, False, True]
    solo, normal = tiling.plan_tiles(120, 120, 192, 32, multiple=4), tiling.plan_tiles(120, 120, 96, 32, multiple=4)
    assert [shape[0] for _, shape, _ in batcher.submitted] == [solo.num_tiles, normal.num_tiles, solo.num_tiles]
    assert solo.num_tiles == 1 < normal.num_tiles
    for result in results:
        np.testing.assert_array_equal(decode_bytes(result.body), photo_like(120, 120))
