"""Decoding and encoding: formats by magic bytes, limits, EXIF orientation, alpha, grey, depth."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from conftest import decode_bytes, encode_bgr, photo_like
from PIL import Image, ImageOps

from enhancer import imaging
from enhancer.errors import BadImageError, PayloadTooLargeError, UnsupportedMediaTypeError
from enhancer.imaging import OutputFormat


@pytest.mark.parametrize(
    "ext,name", [(".jpg", "jpeg"), (".png", "png"), (".webp", "webp"), (".bmp", "bmp"), (".tiff", "tiff")]
)
def test_every_supported_format_is_sniffed_and_decoded(ext, name):
    pixels = photo_like(21, 34, seed=1)
    data = encode_bgr(pixels, ext)
    assert imaging.sniff_format(data) == name
    image = imaging.decode(data)
    assert (image.height, image.width) == (21, 34)
    assert image.rgb.dtype == np.float32 and image.rgb.shape == (21, 34, 3)
    assert 0.0 <= image.rgb.min() and image.rgb.max() <= 1.0
    if ext in (".png", ".bmp", ".tiff"):  # lossless: exact values, channels turned to RGB
        np.testing.assert_array_equal(np.round(image.rgb * 255).astype(np.uint8), pixels[:, :, ::-1])


def test_png_round_trip_is_exact():
    pixels = photo_like(40, 30, seed=2)
    image = imaging.decode(encode_bgr(pixels, ".png"))
    out = decode_bytes(imaging.encode(image.rgb, OutputFormat.png, like=image))
    np.testing.assert_array_equal(out, pixels)


@pytest.mark.parametrize("data", [b"hello world, not an image", b"GIF89a\x01\x00\x01\x00", b"%PDF-1.7\n"])
def test_unknown_types_are_unsupported(data):
    with pytest.raises(UnsupportedMediaTypeError, match="JPEG, PNG, WebP, BMP or TIFF"):
        imaging.decode(data)


def test_truncated_image_is_a_bad_image():
    data = encode_bgr(photo_like(64, 64), ".png")
    with pytest.raises(BadImageError, match="could not be decoded"):
        imaging.decode(data[:60])


def test_empty_upload_is_a_bad_image():
    with pytest.raises(BadImageError, match="empty"):
        imaging.decode(b"")


def test_pixel_limit_is_checked_from_the_header_before_decoding(monkeypatch):
    data = encode_bgr(photo_like(100, 120), ".png")
    decoded = []
    real_imdecode = cv2.imdecode
    monkeypatch.setattr(imaging.cv2, "imdecode", lambda *a: decoded.append(1) or real_imdecode(*a))
    with pytest.raises(PayloadTooLargeError, match="120x100 = 12,000 pixels"):
        imaging.decode(data, max_pixels=11_999)
    assert decoded == []  # refused from the header alone
    assert imaging.decode(data, max_pixels=12_000).width == 120
    assert decoded == [1]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_like_pillow(orientation):
    pixels = photo_like(12, 20, seed=orientation)
    pil = Image.fromarray(pixels)  # treated as RGB
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    pil.save(buf, "PNG", exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    image = imaging.decode(buf.getvalue())
    np.testing.assert_array_equal(np.round(image.rgb * 255).astype(np.uint8), expected)
    assert imaging.read_image_size(buf.getvalue()) == (expected.shape[1], expected.shape[0])


def test_jpeg_exif_rotation_swaps_dimensions():
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(photo_like(30, 50)).save(buf, "JPEG", exif=exif, quality=95)
    image = imaging.decode(buf.getvalue())
    assert (image.height, image.width) == (50, 30)


def test_grey_in_gives_grey_out():
    grey = photo_like(25, 31, channels=1)[:, :, 0]
    image = imaging.decode(encode_bgr(grey, ".png"))
    assert image.grayscale and image.rgb.shape == (25, 31, 3)
    out = decode_bytes(imaging.encode(image.rgb, OutputFormat.png, like=image))
    assert out.shape == (25, 31)
    np.testing.assert_array_equal(out, grey)


def test_alpha_passes_through_unchanged():
    bgra = photo_like(22, 18, seed=3, channels=4)
    bgra[:5, :, 3] = 0
    image = imaging.decode(encode_bgr(bgra, ".png"))
    assert image.alpha is not None and image.rgb.shape == (22, 18, 3)
    brighter = np.clip(image.rgb + 0.1, 0, 1)  # whatever the model does to colour...
    out = decode_bytes(imaging.encode(brighter, OutputFormat.png, like=image))
    assert out.shape == (22, 18, 4)
    np.testing.assert_array_equal(out[:, :, 3], bgra[:, :, 3])  # ...alpha is untouched


def test_alpha_is_composited_over_white_for_jpeg():
    bgra = np.zeros((16, 16, 4), np.uint8)  # fully transparent black
    image = imaging.decode(encode_bgr(bgra, ".png"))
    out = decode_bytes(imaging.encode(image.rgb, OutputFormat.jpeg, like=image))
    assert out.shape == (16, 16, 3)
    assert out.min() >= 250  # white, not the black hidden under the transparency


def test_sixteen_bit_png_keeps_its_depth():
    pixels = (np.linspace(0, 65535, 20 * 24 * 3).reshape(20, 24, 3)).astype(np.uint16)
    image = imaging.decode(encode_bgr(pixels, ".png"))
    assert image.bit_depth == 16
    out = decode_bytes(imaging.encode(image.rgb, OutputFormat.png, like=image))
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, pixels)
    jpeg = decode_bytes(imaging.encode(image.rgb, OutputFormat.jpeg, like=image))
    assert jpeg.dtype == np.uint8


@pytest.mark.parametrize("fmt", [OutputFormat.jpeg, OutputFormat.webp])
def test_quality_controls_lossy_size(fmt):
    rgb = photo_like(96, 96, seed=4).astype(np.float32) / 255
    small = imaging.encode(rgb, fmt, quality=10)
    large = imaging.encode(rgb, fmt, quality=95)
    assert imaging.sniff_format(small) == fmt.value
    assert len(small) < len(large)
