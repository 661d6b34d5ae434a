"""Decoding: every format to upright RGB in its own sample type, with alpha, grey, depth and sample
types kept apart."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile
from helpers import encode_bgr, photo_like
from PIL import Image, ImageOps

from enhancer import imaging
from enhancer.errors import BadImageError, UnsupportedMediaTypeError
from enhancer.samples import to_unit_float


@pytest.mark.parametrize(
    "ext,name", [(".jpg", "jpeg"), (".png", "png"), (".webp", "webp"), (".bmp", "bmp"), (".tiff", "tiff")]
)
def test_every_supported_format_is_sniffed_and_decoded(ext, name):
    pixels = photo_like(21, 34, seed=1)
    data = encode_bgr(pixels, ext)
    assert imaging.sniff_format(data) == name
    image = imaging.decode(data)
    assert (image.info.height, image.info.width) == (21, 34) and image.info.source_format == name
    assert image.pixels.dtype == np.uint8 and image.pixels.shape == (21, 34, 3)  # a byte a sample, as stored
    if ext in (".png", ".bmp", ".tiff"):  # lossless: exact values, channels turned to RGB
        np.testing.assert_array_equal(image.pixels, pixels[:, :, ::-1])


def test_image_info_holds_everything_but_the_colour_pixels():
    bgra = photo_like(22, 18, seed=3, channels=4)
    image = imaging.decode(encode_bgr(bgra, ".png"))
    arrays = [v for v in vars(image.info).values() if isinstance(v, np.ndarray)]
    assert [a.shape for a in arrays] == [(22, 18)]  # only the alpha, which answers need
    assert (image.info.width, image.info.height, image.info.bit_depth) == (18, 22, 8)


def test_truncated_image_is_a_bad_image():
    data = encode_bgr(photo_like(64, 64), ".png")
    with pytest.raises(BadImageError, match="could not be decoded"):
        imaging.decode(data[:60])


def test_empty_upload_is_a_bad_image():
    with pytest.raises(BadImageError, match="empty"):
        imaging.decode(b"")


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
    np.testing.assert_array_equal(image.pixels, expected)
    assert imaging.read_image_size(buf.getvalue()) == (expected.shape[1], expected.shape[0])
    assert (image.info.width, image.info.height) == (expected.shape[1], expected.shape[0])


def test_jpeg_exif_rotation_swaps_dimensions():
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(photo_like(30, 50)).save(buf, "JPEG", exif=exif, quality=95)
    image = imaging.decode(buf.getvalue())
    assert (image.info.height, image.info.width) == (50, 30)


def test_grey_colour_key_transparency_becomes_alpha():
    grey = np.full((6, 8), 90, np.uint8)
    grey[:, :3] = 7
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, "PNG", transparency=7)
    image = imaging.decode(buf.getvalue())
    assert image.info.alpha is not None
    np.testing.assert_array_equal(image.info.alpha, np.where(grey != 7, 255, 0).astype(np.uint8))


def test_cmyk_tiff_is_rgb_without_an_invented_alpha():
    rgb = photo_like(10, 12, seed=3)
    cmyk = Image.fromarray(rgb).convert("CMYK")
    buf = io.BytesIO()
    cmyk.save(buf, "TIFF")
    image = imaging.decode(buf.getvalue())
    assert image.info.alpha is None and not image.info.grayscale
    expected = np.asarray(cmyk.convert("RGB")).astype(np.int32)
    assert np.abs(image.pixels.astype(np.int32) - expected).max() < 4


# --- TIFF sample types and channel counts ------------------------------------------------------------

RAMP = (np.arange(12 * 16).reshape(12, 16) % 256).astype(np.float64)


def _tiff(dtype: str, channels: int, scale: float = 1.0) -> bytes:
    """A TIFF of the ramp in `dtype` samples (values times `scale`), grey or RGB."""
    values = RAMP * scale if channels == 1 else np.dstack([RAMP * scale] * channels)
    buf = io.BytesIO()
    tifffile.imwrite(buf, values.astype(dtype), photometric="minisblack" if channels == 1 else "rgb")
    return buf.getvalue()


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(
    "dtype,scale,depth", [("uint8", 1, 8), ("uint16", 257, 16), ("float32", 1 / 255, 16), ("float64", 1 / 255, 16)]
)
def test_unsigned_and_float_tiff_samples_are_read_by_their_meaning(dtype, scale, depth, channels):
    image = imaging.decode(_tiff(dtype, channels, scale))  # the same ramp, 0-255 of 255 in each type
    assert image.info.bit_depth == depth and image.info.grayscale == (channels == 1)
    assert image.pixels.dtype == {"uint8": np.uint8, "uint16": np.uint16}.get(dtype, np.float32)
    np.testing.assert_allclose(to_unit_float(image.pixels)[:, :, 0] * 255, RAMP, atol=1e-3)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(
    "dtype,named",
    [
        ("int8", "8-bit signed integer"),
        ("int16", "16-bit signed integer"),
        ("int32", "32-bit signed integer"),
        ("uint32", "32-bit unsigned integer"),
    ],
)
def test_integer_tiff_samples_without_a_brightness_scale_are_refused_by_name(dtype, named, channels):
    with pytest.raises(UnsupportedMediaTypeError) as caught:
        imaging.decode(_tiff(dtype, channels))  # values 0-255, as the issue sent them
    assert caught.value.detail == (
        f"the TIFF stores {named} samples, which have no agreed brightness scale; save it with 8- or "
        "16-bit unsigned integer samples (or 32-bit floating-point, 0 to 1)"
    )


def test_half_float_tiff_samples_are_refused_by_name():
    expected = "^the TIFF stores 16-bit floating-point samples, which the decoder cannot read"
    with pytest.raises(UnsupportedMediaTypeError, match=expected):
        imaging.decode(_tiff("float16", 1, 1 / 255))


def test_a_five_channel_tiff_says_what_is_wrong():
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((4, 6, 5), np.uint8), photometric="rgb", extrasamples=[0, 0], planarconfig="contig")
    with pytest.raises(UnsupportedMediaTypeError) as caught:
        imaging.decode(buf.getvalue())
    assert caught.value.detail == (
        "the TIFF has 5 channels (samples per pixel); only grey, grey+alpha, RGB, RGBA and CMYK TIFFs "
        "(1 to 4 channels) are supported: save it with one of those layouts"
    )
