"""Encoding: answers look like the input (alpha, grey, depth) from its ImageInfo alone."""

from __future__ import annotations

import gc
import io
import weakref

import numpy as np
import pytest
from helpers import decode_bytes, encode_bgr, photo_like
from PIL import Image

from enhancer import imaging
from enhancer.imaging import OutputFormat
from enhancer.samples import from_unit_float, to_unit_float


def test_png_round_trip_is_exact():
    pixels = photo_like(40, 30, seed=2)
    image = imaging.decode(encode_bgr(pixels, ".png"))
    out = decode_bytes(imaging.encode(image.pixels, OutputFormat.png, info=image.info))
    np.testing.assert_array_equal(out, pixels)


def test_encoding_needs_only_the_info_once_the_decoded_pixels_are_dropped():
    bgra = photo_like(20, 26, seed=5, channels=4)
    image = imaging.decode(encode_bgr(bgra, ".png"))
    rgb, info = image.pixels.copy(), image.info  # the pipeline's tiles stand in for this copy
    pixels_alive = weakref.ref(image.pixels)
    del image
    gc.collect()
    assert pixels_alive() is None
    np.testing.assert_array_equal(decode_bytes(imaging.encode(rgb, OutputFormat.png, info=info)), bgra)


def test_grey_in_gives_grey_out():
    grey = photo_like(25, 31, channels=1)[:, :, 0]
    image = imaging.decode(encode_bgr(grey, ".png"))
    assert image.info.grayscale and image.pixels.shape == (25, 31, 3)
    out = decode_bytes(imaging.encode(image.pixels, OutputFormat.png, info=image.info))
    assert out.shape == (25, 31)
    np.testing.assert_array_equal(out, grey)


def test_alpha_passes_through_unchanged():
    bgra = photo_like(22, 18, seed=3, channels=4)
    bgra[:5, :, 3] = 0
    image = imaging.decode(encode_bgr(bgra, ".png"))
    assert image.info.alpha is not None and image.pixels.shape == (22, 18, 3)
    brighter = np.clip(to_unit_float(image.pixels) + 0.1, 0, 1)  # whatever the model does to colour...
    out = decode_bytes(imaging.encode(brighter, OutputFormat.png, info=image.info))
    assert out.shape == (22, 18, 4)
    np.testing.assert_array_equal(out[:, :, 3], bgra[:, :, 3])  # ...alpha is untouched
    assert (out[5:, :, :3].astype(int) - bgra[5:, :, :3]).mean() > 20  # and the colour did change


@pytest.mark.parametrize("depth", [8, 16])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_every_sample_type_encodes_as_its_unit_float_values_would(dtype, depth):
    """Integer samples (a passed-through image, the stitched result) give the bytes their float
    [0, 1] values gave when the pipeline was float32 throughout."""
    rng = np.random.default_rng(7)
    values = rng.uniform(0, 1, size=(9, 11, 3)).astype(np.float32)
    samples = from_unit_float(values, dtype)
    info = imaging.decode(encode_bgr(np.zeros((9, 11, 3), np.uint16 if depth == 16 else np.uint8), ".png")).info
    as_samples = imaging.encode(samples, OutputFormat.png, info=info)
    as_floats = imaging.encode(to_unit_float(samples), OutputFormat.png, info=info)
    np.testing.assert_array_equal(decode_bytes(as_samples), decode_bytes(as_floats))


def test_alpha_is_composited_over_white_for_jpeg():
    bgra = np.zeros((16, 16, 4), np.uint8)  # fully transparent black
    image = imaging.decode(encode_bgr(bgra, ".png"))
    out = decode_bytes(imaging.encode(image.pixels, OutputFormat.jpeg, info=image.info))
    assert out.shape == (16, 16, 3)
    assert out.min() >= 250  # white, not the black hidden under the transparency


def test_sixteen_bit_png_keeps_its_depth():
    pixels = (np.linspace(0, 65535, 20 * 24 * 3).reshape(20, 24, 3)).astype(np.uint16)
    image = imaging.decode(encode_bgr(pixels, ".png"))
    assert image.info.bit_depth == 16
    out = decode_bytes(imaging.encode(image.pixels, OutputFormat.png, info=image.info))
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, pixels)
    jpeg = decode_bytes(imaging.encode(image.pixels, OutputFormat.jpeg, info=image.info))
    assert jpeg.dtype == np.uint8


@pytest.mark.parametrize("fmt", [OutputFormat.jpeg, OutputFormat.webp])
def test_quality_controls_lossy_size(fmt):
    rgb = photo_like(96, 96, seed=4).astype(np.float32) / 255
    small = imaging.encode(rgb, fmt, quality=10)
    large = imaging.encode(rgb, fmt, quality=95)
    assert imaging.sniff_format(small) == fmt.value
    assert len(small) < len(large)


@pytest.mark.parametrize(("fmt", "options"), [("PNG", {}), ("TIFF", {}), ("TIFF", {"compression": "tiff_lzw"})])
def test_grey_alpha_round_trips_as_grey_alpha(fmt, options):
    # OpenCV decodes a grey+alpha TIFF as plain grey: the alpha must not be lost on the way.
    la = np.dstack([photo_like(12, 14, channels=1)[:, :, 0], np.arange(12 * 14, dtype=np.uint8).reshape(12, 14)])
    buf = io.BytesIO()
    Image.fromarray(la).save(buf, fmt, **options)
    image = imaging.decode(buf.getvalue())
    assert image.info.grayscale and image.info.alpha is not None
    answer = Image.open(io.BytesIO(imaging.encode(image.pixels, OutputFormat.png, info=image.info)))
    assert answer.mode == "LA"
    np.testing.assert_array_equal(np.asarray(answer), la)


@pytest.mark.parametrize("shape", [(1, 1), (1, 10000), (10000, 1)])
def test_extreme_shapes_decode_and_encode(shape):
    pixels = photo_like(*shape, seed=4)
    image = imaging.decode(encode_bgr(pixels, ".png"))
    assert image.pixels.shape == (*shape, 3)
    np.testing.assert_array_equal(decode_bytes(imaging.encode(image.pixels, OutputFormat.png, info=image.info)), pixels)
