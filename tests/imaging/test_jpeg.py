"""JPEG specifics: the file's quantisation tables, sampling and quality, and refusing cut-short files."""

from __future__ import annotations

import io
import struct

import cv2
import numpy as np
import pytest
from helpers import encode_bgr, photo_like
from PIL import Image

from enhancer import imaging
from enhancer.errors import BadImageError
from enhancer.imaging.jpeg import IJG_CHROMA, IJG_LUMA, MAX_PIXELS_PER_BYTE, ijg_table, read_jpeg_info

CORRUPT = "the file is a corrupt or truncated JPEG"


def _pillow_jpeg(pixels: np.ndarray | Image.Image, **options) -> bytes:
    buf = io.BytesIO()
    (pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)).save(buf, "JPEG", **options)
    return buf.getvalue()


def _opencv_jpeg(pixels: np.ndarray, *params: int) -> bytes:
    return encode_bgr(pixels, ".jpg", *params)


# --- quality ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoder", ["opencv", "pillow"])
def test_jpeg_quality_is_read_from_the_quantisation_table(encoder):
    pixels = photo_like(40, 48, seed=3)
    for quality in (1, 5, 10, 30, 50, 70, 85, 90, 95, 100):
        if encoder == "opencv":
            data = _opencv_jpeg(pixels, cv2.IMWRITE_JPEG_QUALITY, quality)
        else:
            data = _pillow_jpeg(pixels[:, :, ::-1], quality=quality)
        assert imaging.decode(data).info.jpeg.quality == quality, (encoder, quality)
    assert imaging.decode(encode_bgr(pixels, ".png")).info.jpeg is None
    assert imaging.decode(encode_bgr(pixels, ".webp")).info.jpeg is None


def test_a_non_libjpeg_table_gets_the_nearest_quality():
    # An encoder with its own table: libjpeg's q80 table with every step one larger.
    table = [int(v) + 1 for v in ijg_table(80).ravel()]
    data = _pillow_jpeg(photo_like(32, 32), qtables=[table, table])
    assert imaging.decode(data).info.jpeg.quality in (78, 79)


# --- tables and sampling ------------------------------------------------------------------------------


def test_tables_are_in_natural_order_the_quality_50_table_is_annex_k():
    # At quality 50 libjpeg's scale is 100 %: the tables are the standard's own (Annex K.1, K.2),
    # which are printed in natural order, row u = vertical frequency. Zigzag order would differ.
    info = read_jpeg_info(_pillow_jpeg(photo_like(16, 16), quality=50))
    np.testing.assert_array_equal(info.luma_table, IJG_LUMA)
    np.testing.assert_array_equal(info.chroma_table, IJG_CHROMA)
    assert info.luma_table[0, 1] == 11 and info.luma_table[1, 0] == 12  # K.1's asymmetric corner
    assert info.luma_table.dtype == np.uint16 and info.luma_table.shape == (8, 8)
    assert not info.luma_table.flags.writeable


@pytest.mark.parametrize(
    "factor,sampling",
    [(cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420, (2, 2)), (cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444, (1, 1))],
)
def test_opencv_tables_equal_the_ijg_formula(factor, sampling):
    pixels = photo_like(24, 40, seed=4)
    for quality in (5, 25, 50, 75, 90, 100):
        data = _opencv_jpeg(pixels, cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, factor)
        info = read_jpeg_info(data)
        np.testing.assert_array_equal(info.luma_table, ijg_table(quality, IJG_LUMA))
        np.testing.assert_array_equal(info.chroma_table, ijg_table(quality, IJG_CHROMA))
        assert info.sampling == sampling and info.quality == quality


@pytest.mark.parametrize("subsampling,sampling", [(0, (1, 1)), (1, (2, 1)), (2, (2, 2))])
def test_pillow_subsampling_is_reported(subsampling, sampling):
    info = read_jpeg_info(_pillow_jpeg(photo_like(24, 40, seed=5), quality=80, subsampling=subsampling))
    assert info.sampling == sampling


def test_a_greyscale_jpeg_has_no_chroma_table():
    info = read_jpeg_info(_opencv_jpeg(photo_like(24, 40, channels=1)[:, :, 0], cv2.IMWRITE_JPEG_QUALITY, 60))
    assert info.chroma_table is None and info.sampling == (1, 1)
    np.testing.assert_array_equal(info.luma_table, ijg_table(60))


def test_custom_tables_round_trip_exactly():
    rng = np.random.default_rng(6)
    luma = rng.integers(1, 256, 64)  # asymmetric: a transposed or zigzag read would not match
    chroma = rng.integers(1, 256, 64)
    data = _pillow_jpeg(photo_like(32, 32), qtables=[luma.tolist(), chroma.tolist()])
    info = read_jpeg_info(data)
    np.testing.assert_array_equal(info.luma_table, luma.reshape(8, 8))
    np.testing.assert_array_equal(info.chroma_table, chroma.reshape(8, 8))


def test_tables_are_read_from_the_header_without_decoding_pixels():
    data = _pillow_jpeg(photo_like(64, 64), quality=70)
    sos = data.index(b"\xff\xda")
    header_only = data[: sos + 2 + struct.unpack(">H", data[sos + 2 : sos + 4])[0]]  # no coded data at all
    info = read_jpeg_info(header_only)
    np.testing.assert_array_equal(info.luma_table, ijg_table(70))
    assert read_jpeg_info(encode_bgr(photo_like(8, 8), ".png")) is None
    assert read_jpeg_info(b"\xff\xd8\xff\xe0 not really") is None


# --- coded data that stops early -----------------------------------------------------------------------


def _variants() -> dict[str, bytes]:
    """JPEGs as encoders write them: one scan or many, grey, restart markers, CMYK."""
    pixels = photo_like(192, 256, seed=7)
    return {
        "baseline 4:2:0": _opencv_jpeg(pixels, cv2.IMWRITE_JPEG_QUALITY, 75),
        "baseline 4:4:4": _pillow_jpeg(pixels, quality=90, subsampling=0),
        "optimized": _pillow_jpeg(pixels, quality=85, optimize=True),
        "grey": _opencv_jpeg(pixels[:, :, 0], cv2.IMWRITE_JPEG_QUALITY, 80),
        "restart markers": _opencv_jpeg(pixels, cv2.IMWRITE_JPEG_QUALITY, 80, cv2.IMWRITE_JPEG_RST_INTERVAL, 2),
        "progressive (OpenCV)": _opencv_jpeg(pixels, cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
        "progressive (Pillow)": _pillow_jpeg(pixels, quality=85, progressive=True),
        "CMYK": _pillow_jpeg(Image.fromarray(pixels).convert("CMYK"), quality=85),
    }


VARIANTS = _variants()


@pytest.mark.parametrize("name", VARIANTS)
def test_whole_jpegs_decode_also_with_bytes_around_their_end(name):
    data = VARIANTS[name]
    expected = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    trailer = data + b"\x00trailing bytes after the end marker"
    padded = data[:-2] + b"\x00\x00 junk before the end marker" + data[-2:]
    filled = data[:-2] + b"\xff\xff\xff" + data[-2:]  # fill bytes before a marker are allowed
    for variant in (data, trailer, padded, filled):
        image = imaging.decode(variant)
        assert (image.info.height, image.info.width) == expected.shape[:2]


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("kept", [0.2, 0.5, 0.8, 0.97])
def test_a_jpeg_cut_short_with_an_end_marker_added_is_refused(name, kept):
    data = VARIANTS[name]
    cut = data[: int(len(data) * kept)] + b"\xff\xd9"
    with pytest.raises(BadImageError, match=CORRUPT):
        imaging.decode(cut)


def test_a_jpeg_cut_short_without_an_end_marker_is_still_refused():
    data = VARIANTS["baseline 4:2:0"]
    with pytest.raises(BadImageError, match="could not be decoded"):
        imaging.decode(data[: len(data) // 2])


def _black(height: int, width: int, grey: bool = False, **options) -> bytes:
    pixels = np.zeros((height, width) if grey else (height, width, 3), np.uint8)
    return _pillow_jpeg(pixels, quality=1, **options)


def test_a_file_too_small_for_its_declared_size_is_refused_before_decoding(monkeypatch):
    # The case: 12 KB of a real 8000x6000 JPEG, with an end marker appended.
    data = _black(6000, 8000)[:12_000] + b"\xff\xd9"
    calls = []
    monkeypatch.setattr(cv2, "imdecode", lambda *a: calls.append(a))
    with pytest.raises(BadImageError, match=f"{CORRUPT}: it declares 8000x6000 pixels but has only 12,002 bytes"):
        imaging.decode(data)
    assert calls == []


@pytest.mark.parametrize(
    "options",
    [dict(grey=True, optimize=True), dict(grey=True, progressive=True), dict(optimize=True), dict(progressive=True), {}],
    ids=["grey optimized", "grey progressive", "colour optimized", "colour progressive", "colour"],
)
def test_the_smallest_real_jpegs_pass_the_size_floor(options):
    # All-black quality-1 images are the smallest JPEGs per pixel encoders write (two bits a block
    # at best); the floor (one bit a block) must never refuse them.
    data = _black(1200, 1600, **options)
    assert 1600 * 1200 / len(data) < MAX_PIXELS_PER_BYTE
    image = imaging.decode(data)
    assert image.pixels.max() < 2 and (image.info.height, image.info.width) == (1200, 1600)
