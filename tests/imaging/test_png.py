"""The threaded PNG writer: files every decoder reads back exactly, whatever the number of bands."""

from __future__ import annotations

import io
import zlib

import cv2
import numpy as np
import pytest
from helpers import photo_like
from PIL import Image

from enhancer import imaging
from enhancer.imaging import OutputFormat, png


def _cv2_rgb(data: bytes) -> np.ndarray:
    out = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    return out[:, :, ::-1] if out.ndim == 3 else out


@pytest.fixture
def small_bands(monkeypatch):
    """Bands of a few rows, so test-sized images are cut as a 12 MP photo is."""
    monkeypatch.setattr(png, "MIN_BAND_PIXELS", 64)


@pytest.mark.parametrize("threads", [1, 2, 3, 7])
def test_rgb_round_trips_through_opencv_and_pillow(small_bands, threads):
    rgb = photo_like(37, 29, seed=threads)[:, :, ::-1].copy()
    data = png.write_png(rgb, threads=threads)
    assert png.band_count(37, 29, threads) == min(threads, 37 * 29 // 64)
    np.testing.assert_array_equal(_cv2_rgb(data), rgb)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), rgb)


def test_16_bit_samples_keep_every_bit(small_bands):
    rgb = np.random.default_rng(3).integers(0, 65536, (21, 17, 3), dtype=np.uint16)
    np.testing.assert_array_equal(_cv2_rgb(png.write_png(rgb, threads=4)), rgb)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_bands_filtered_a_few_rows_at_a_time_give_the_same_file(monkeypatch, dtype):
    """A band is filtered and deflated in chunks of rows (bounded memory); chunks of one row or
    of several give the same bytes as one chunk per band."""
    rgb = np.random.default_rng(4).integers(0, np.iinfo(dtype).max + 1, (40, 23, 3), dtype=dtype)
    whole_bands = png.write_png(rgb, threads=2)
    for rows in (1, 3):
        monkeypatch.setattr(png, "CHUNK_BYTES", rows * 23 * 3 * rgb.itemsize)
        assert png.write_png(rgb, threads=2) == whole_bands
    np.testing.assert_array_equal(_cv2_rgb(whole_bands), rgb)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_grey_is_written_as_one_channel(small_bands, dtype):
    grey = np.random.default_rng(4).integers(0, np.iinfo(dtype).max + 1, (19, 23), dtype=dtype)
    data = png.write_png(grey, threads=3)
    assert Image.open(io.BytesIO(data)).mode in ("L", "I;16", "I;16B", "I")
    np.testing.assert_array_equal(_cv2_rgb(data), grey)


def test_layouts_it_does_not_write_are_refused():
    with pytest.raises(ValueError, match="grey or RGB"):
        png.write_png(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="grey or RGB"):
        png.write_png(np.zeros((4, 4, 3), np.float32))


@pytest.mark.parametrize("lengths", [(1, 1), (10, 70_000), (200_003, 5), (0, 9)])
def test_adler32_of_joined_bytes_from_the_parts(lengths):
    rng = np.random.default_rng(sum(lengths))
    first, second = (rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in lengths)
    joined = png.adler32_concat(zlib.adler32(first), zlib.adler32(second), len(second))
    assert joined == zlib.adler32(first + second)


def test_files_are_as_small_as_opencvs_speed_preset(small_bands):
    bgr = photo_like(300, 400, seed=9)
    opencv = cv2.imencode(".png", bgr)[1].nbytes
    ours = len(png.write_png(bgr[:, :, ::-1].copy(), threads=2))
    assert ours <= 1.02 * opencv


def test_encode_writes_plain_rgb_png_with_it_and_keeps_the_icc_profile(small_bands, monkeypatch):
    from PIL import ImageCms

    import importlib

    encode_module = importlib.import_module("enhancer.imaging.encode")
    calls = []
    monkeypatch.setattr(encode_module, "write_png", lambda pixels: calls.append(pixels.shape) or png.write_png(pixels))
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    buffer = io.BytesIO()
    rgb = photo_like(33, 41, seed=1)[:, :, ::-1].copy()
    Image.fromarray(rgb).save(buffer, "PNG", icc_profile=icc)
    image = imaging.decode(buffer.getvalue())
    decoded = Image.open(io.BytesIO(imaging.encode(image.pixels, OutputFormat.png, info=image.info)))
    assert calls == [(33, 41, 3)]
    assert decoded.info.get("icc_profile") == icc
    np.testing.assert_array_equal(np.asarray(decoded), rgb)


def test_encode_writes_a_grey_png_with_it_as_one_channel(small_bands, monkeypatch):
    import importlib

    encode_module = importlib.import_module("enhancer.imaging.encode")
    calls = []
    monkeypatch.setattr(encode_module, "write_png", lambda pixels: calls.append(pixels.shape) or png.write_png(pixels))
    grey = photo_like(29, 31, channels=1)[:, :, 0]
    image = imaging.decode(cv2.imencode(".png", grey)[1].tobytes())
    decoded = Image.open(io.BytesIO(imaging.encode(image.pixels, OutputFormat.png, info=image.info)))
    assert calls == [(29, 31)] and decoded.mode == "L"
    np.testing.assert_array_equal(np.asarray(decoded), grey)
