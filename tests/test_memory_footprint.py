"""Memory the pipeline holds per request (benchmarks/RESULTS.md, target 4): no full-size array
outlives the stage that needs it. Byte counts and object lifetimes only, nothing timed."""

from __future__ import annotations

import asyncio
import gc
import weakref

import numpy as np

from enhancer import imaging
from enhancer.batching import MicroBatcher
from enhancer.imaging import OutputFormat
from enhancer.models.contract import ModelSpec


def _reference_quantize(values: np.ndarray, depth: int) -> np.ndarray:
    """The whole-image formula the banded version must match bit for bit."""
    top = 65535.0 if depth == 16 else 255.0
    dtype = np.uint16 if depth == 16 else np.uint8
    return (np.clip(values, 0.0, 1.0) * top + 0.5).astype(dtype)


def test_banded_quantize_equals_the_whole_image_formula(monkeypatch):
    rng = np.random.default_rng(0)
    values = rng.uniform(-0.2, 1.2, size=(37, 23, 3)).astype(np.float32)
    monkeypatch.setattr(imaging, "_QUANTIZE_CHUNK", 50)  # many bands, a ragged last one
    for depth in (8, 16):
        np.testing.assert_array_equal(imaging._quantize(values, depth), _reference_quantize(values, depth))
        np.testing.assert_array_equal(imaging._quantize(values[:, ::-1], depth), _reference_quantize(values[:, ::-1], depth))


def test_encode_output_is_unchanged_for_out_of_range_rgb():
    rng = np.random.default_rng(1)
    rgb = rng.uniform(-0.1, 1.1, size=(16, 24, 3)).astype(np.float32)
    png = imaging.encode(rgb, OutputFormat.png)
    decoded = imaging.decode(png).rgb
    expected = _reference_quantize(np.clip(rgb, 0, 1), 8).astype(np.float32) / 255.0
    np.testing.assert_array_equal(decoded, expected)


def test_without_pixels_keeps_what_encode_needs_and_no_pixel_memory():
    image = imaging.DecodedImage(
        rgb=np.ones((300, 200, 3), np.float32), alpha=np.ones((300, 200), np.float32),
        grayscale=False, bit_depth=16, source_format="png",
    )
    light = image.without_pixels()
    assert (light.height, light.width) == (300, 200)
    assert light.alpha is image.alpha and light.bit_depth == 16 and light.source_format == "png"
    assert light.rgb.base is not None and light.rgb.base.nbytes <= 4  # a broadcast scalar
    assert len(imaging.encode(image.rgb, OutputFormat.png, like=light)) > 0


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
