"""Memory the pipeline holds per request (benchmarks/RESULTS.md, target 4): no full-size array
outlives the stage that needs it. Byte counts and object lifetimes only, nothing timed."""

from __future__ import annotations

import asyncio
import gc
import sys
import weakref

import numpy as np
import pytest

from enhancer import imaging
from enhancer.batching import BatchTimings, MicroBatcher
from enhancer.imaging import ImageInfo, OutputFormat
from enhancer.models.contract import ModelSpec
from enhancer.imaging.encode import _quantize
from enhancer.samples import to_unit_float


def _reference_quantize(values: np.ndarray, depth: int) -> np.ndarray:
    """The whole-image formula the banded version must match bit for bit."""
    top = 65535.0 if depth == 16 else 255.0
    dtype = np.uint16 if depth == 16 else np.uint8
    return (np.clip(values, 0.0, 1.0) * top + 0.5).astype(dtype)


def test_banded_quantize_equals_the_whole_image_formula(monkeypatch):
    rng = np.random.default_rng(0)
    values = rng.uniform(-0.2, 1.2, size=(37, 23, 3)).astype(np.float32)
    monkeypatch.setattr(sys.modules["enhancer.imaging.encode"], "_QUANTIZE_CHUNK", 50)  # many bands, a ragged last one
    for depth in (8, 16):
        np.testing.assert_array_equal(_quantize(values, depth), _reference_quantize(values, depth))
        np.testing.assert_array_equal(_quantize(values[:, ::-1], depth), _reference_quantize(values[:, ::-1], depth))


def test_encode_output_is_unchanged_for_out_of_range_rgb():
    rng = np.random.default_rng(1)
    rgb = rng.uniform(-0.1, 1.1, size=(16, 24, 3)).astype(np.float32)
    png = imaging.encode(rgb, OutputFormat.png)
    decoded = imaging.decode(png).pixels
    np.testing.assert_array_equal(decoded, _reference_quantize(np.clip(rgb, 0, 1), 8))


@pytest.mark.parametrize("fmt", [OutputFormat.png, OutputFormat.jpeg, OutputFormat.webp])
@pytest.mark.parametrize("layout", ["grey", "grey+alpha", "rgba"])
def test_grey_and_alpha_answers_are_the_same_in_bands(monkeypatch, fmt, layout):
    """Grey and transparent answers are computed a band of rows at a time (no float copy of the
    whole image); many bands give the bytes one band gives."""
    rng = np.random.default_rng(2)
    rgb = rng.uniform(-0.1, 1.1, size=(37, 23, 3)).astype(np.float32)
    alpha = rng.integers(0, 256, size=(37, 23), dtype=np.uint8) if layout != "grey" else None
    info = ImageInfo(
        width=23, height=37, grayscale=layout.startswith("grey"), bit_depth=8, source_format="png",
        alpha=alpha, icc_profile=None, jpeg=None,
    )  # fmt: skip
    whole = imaging.encode(rgb, fmt, info=info)
    monkeypatch.setattr(sys.modules["enhancer.imaging.encode"], "_QUANTIZE_CHUNK", 50)  # many bands, a ragged last one
    assert imaging.encode(rgb, fmt, info=info) == whole
    untouched = rgb.copy()
    imaging.encode(rgb, fmt, info=info)
    np.testing.assert_array_equal(rgb, untouched)  # the caller's pixels are not clipped in place


def test_the_service_frees_the_decoded_pixels_once_they_are_tiles(monkeypatch):
    """After the split only the tiles and the ImageInfo are kept: the decoded image is not held."""
    from enhancer.pipeline import Pipeline
    from enhancer.service import EnhanceService

    decoded: list[weakref.ref] = []
    freed_before_the_model: list[bool] = []
    real_decode = imaging.decode

    def decode(*args, **kwargs):
        image = real_decode(*args, **kwargs)
        decoded.append(weakref.ref(image.pixels))
        return image

    class Batcher:
        async def submit(self, model, tiles, inputs=None):
            gc.collect()
            freed_before_the_model.append(decoded[0]() is None)
            return to_unit_float(tiles), BatchTimings(queue_s=0.0, infer_s=0.0)

    monkeypatch.setattr(imaging, "decode", decode)
    service = EnhanceService(Pipeline(tile_size=64, tile_overlap=16), Batcher(), request_timeout_s=60)
    png = imaging.encode(np.full((100, 90, 3), 0.5, np.float32), OutputFormat.png)
    result = asyncio.run(service.enhance(png, ModelSpec(name="copy", reach=0), OutputFormat.png))
    assert (result.width, result.height) == (90, 100)
    assert freed_before_the_model == [True]


def test_batcher_releases_a_finished_requests_tiles_while_idle():
    """The worker must not keep the last batch (and with it the request's tiles) until new work."""

    class Copying:
        spec = ModelSpec(name="copy", reach=0)

        def forward(self, batch, inputs=None):
            return batch + 0

    async def scenario():
        batcher = MicroBatcher({"copy": Copying()}, max_batch_size=4, max_batch_delay_s=0.0, max_queue_tiles=100)
        await batcher.start()
        try:
            tiles = np.zeros((6, 8, 8, 3), np.float32)
            alive = weakref.ref(tiles)
            outputs, _ = await batcher.submit("copy", tiles)
            del tiles
            await asyncio.sleep(0)  # the worker is back to waiting for the next request
            gc.collect()
            assert alive() is None
            assert outputs.shape == (6, 8, 8, 3)
        finally:
            await batcher.stop()

    asyncio.run(scenario())
