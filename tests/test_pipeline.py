"""The one pipeline (decode -> pass-through -> split -> run tiles -> stitch -> clip -> encode) with
fake models, and the serving layer around it with a fake batcher: which errors the client sees,
what the observer is told. The real SavedModel path is covered over HTTP (test_http.py)."""

from __future__ import annotations

import asyncio

import cv2
import numpy as np
import pytest
from conftest import decode_bytes, encode_bgr, photo_like

from enhancer import conditioning, tiling
from enhancer.batching import BatcherClosedError, BatchFailedError, BatchTimings, QueueFullError
from enhancer.errors import InferenceFailedError, OverloadedError, RequestTimeoutError, ServiceUnavailableError
from enhancer.imaging import OutputFormat
from enhancer.models.contract import ModelSpec
from enhancer.pipeline import DirectTiles, Pipeline
from enhancer.service import EnhanceService, batcher_error


class NearestModel:
    """Keeps the model contract: upsamples by `scale` (nearest neighbour) and records its calls."""

    def __init__(self, scale: int = 1, inputs=None):
        self.spec = ModelSpec(name=f"nearest{scale}x", reach=0, scale=scale, inputs=inputs or {})
        self.calls: list[tuple[int, dict]] = []

    def forward(self, batch, inputs=None):
        self.calls.append((len(batch), {k: np.array(v) for k, v in (inputs or {}).items()}))
        s = self.spec.scale
        return np.repeat(np.repeat(batch, s, axis=1), s, axis=2)


def pipeline(**overrides) -> Pipeline:
    return Pipeline(**{"tile_size": 128, "tile_overlap": 32, **overrides})


def test_a_2x_model_through_the_whole_pipeline_gives_the_upscaled_image():
    pixels = photo_like(150, 210, seed=1)
    model = NearestModel(scale=2)
    result = pipeline().run(encode_bgr(pixels, ".png"), model.spec, OutputFormat.png, 95, DirectTiles({model.spec.name: model}, 4))
    assert (result.width, result.height, result.model, result.passed_through) == (420, 300, "nearest2x", None)
    np.testing.assert_array_equal(decode_bytes(result.body), np.repeat(np.repeat(pixels, 2, axis=0), 2, axis=1))
    assert sum(n for n, _ in model.calls) > 4 and max(n for n, _ in model.calls) == 4  # tiled, 4 per pass
    assert set(result.timings) == {"decode", "tile", "queue", "infer", "encode"}


def test_direct_tiles_give_every_tile_its_image_s_extra_inputs(monkeypatch):
    monkeypatch.setitem(conditioning.BUILDERS, "size", lambda image, strength: [image.height, image.width])
    model = NearestModel(inputs={"size": 2})
    progress = []
    run_tiles = DirectTiles({model.spec.name: model}, 3, progress=progress.append)
    result = pipeline().run(encode_bgr(photo_like(200, 300), ".png"), model.spec, OutputFormat.png, 95, run_tiles)
    assert result.width == 300
    for n, inputs in model.calls:
        assert inputs["size"].shape == (n, 2) and (inputs["size"] == [200, 300]).all()
    assert sum(progress) == sum(n for n, _ in model.calls) and max(progress) == 3


def test_a_good_jpeg_is_passed_through_without_running_the_tiles():
    data = encode_bgr(photo_like(60, 80), ".jpg", cv2.IMWRITE_JPEG_QUALITY, 95)

    def never(job):
        raise AssertionError("the model must not run")

    result = pipeline(pass_through_jpeg_quality=92).run(data, NearestModel().spec, OutputFormat.png, 95, never)
    assert result.passed_through == "jpeg-quality=95"
    assert result.timings["tile"] == result.timings["queue"] == result.timings["infer"] == 0.0
    np.testing.assert_array_equal(decode_bytes(result.body), decode_bytes(data))


def test_the_tiles_can_be_taken_once_and_finish_needs_the_outputs():
    p = pipeline()
    prepared = p.prepare(encode_bgr(photo_like(40, 40), ".png"), NearestModel().spec)
    job = prepared.take_job()
    assert job.model == "nearest1x" and job.tiles.shape[0] == prepared.plan.num_tiles
    with pytest.raises(ValueError, match="no tiles to run"):
        prepared.take_job()
    with pytest.raises(ValueError, match="needs the model's tiles"):
        p.finish(prepared, OutputFormat.png)


# --- the service around it, with a fake batcher ------------------------------------------------


class FakeBatcher:
    """Answers `submit` with the identity, or raises what the test sets; records what it got."""

    def __init__(self, error: Exception | None = None, delay_s: float = 0.0):
        self.error = error
        self.delay_s = delay_s
        self.submitted: list[tuple[str, tuple, dict]] = []

    async def submit(self, model, tiles, inputs=None):
        self.submitted.append((model, tiles.shape, dict(inputs or {})))
        await asyncio.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        return tiles.copy(), BatchTimings(queue_s=0.25, infer_s=0.5)


class Observed:
    def __init__(self):
        self.seen = []

    def on_enhanced(self, model, timings, passed_through):
        self.seen.append((model, dict(timings), passed_through))


def _enhance(batcher, timeout_s: float = 30.0, observer=None):
    service = EnhanceService(pipeline(), batcher, request_timeout_s=timeout_s, observer=observer)
    data = encode_bgr(photo_like(200, 200), ".png")
    return asyncio.run(service.enhance(data, NearestModel().spec, OutputFormat.png))


def test_the_service_runs_the_tiles_on_the_batcher_and_tells_the_observer():
    batcher, observer = FakeBatcher(), Observed()
    result = _enhance(batcher, observer=observer)
    tiles = tiling.plan_tiles(200, 200, 128, 32, multiple=4).num_tiles
    assert tiles > 1 and [(m, shape[0]) for m, shape, _ in batcher.submitted] == [("nearest1x", tiles)]  # one submit
    assert (result.timings["queue"], result.timings["infer"]) == (0.25, 0.5)  # the batcher's own figures
    assert observer.seen == [("nearest1x", result.timings, None)]


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
    with pytest.raises(expected) as raised:
        _enhance(FakeBatcher(error))
    assert raised.value.detail == translated.detail
    if isinstance(error, QueueFullError):
        assert translated.headers["Retry-After"] == "1"  # (10 + 4 - 12) tiles at 2 tiles/s


def test_batch_failure_names_its_cause_and_a_slow_batcher_times_out():
    failed = BatchFailedError("boom")
    failed.__cause__ = MemoryError("device")
    assert "(MemoryError)" in batcher_error(failed).detail
    with pytest.raises(TypeError):
        batcher_error(ValueError("not from the batcher"))
    with pytest.raises(RequestTimeoutError, match="within 0.2 s"):
        _enhance(FakeBatcher(delay_s=5.0), timeout_s=0.2)


def test_the_service_hands_the_image_s_extra_inputs_to_the_batcher(monkeypatch):
    monkeypatch.setitem(conditioning.BUILDERS, "size", lambda image, strength: [image.height, image.width])
    batcher = FakeBatcher()
    service = EnhanceService(pipeline(), batcher, request_timeout_s=30)
    spec = NearestModel(inputs={"size": 2}).spec
    asyncio.run(service.enhance(encode_bgr(photo_like(90, 70), ".png"), spec, OutputFormat.png))
    ((model, _, inputs),) = batcher.submitted
    assert model == spec.name and list(inputs) == ["size"] and inputs["size"].tolist() == [90.0, 70.0]
