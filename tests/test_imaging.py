"""Decoding and encoding: formats by magic bytes, limits, EXIF orientation, alpha, grey, depth."""

from __future__ import annotations

import io
import re

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


# --- limits, headers, formats people send ----------------------------------------------------------

import struct  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
import zlib  # noqa: E402

from conftest import REPO_ROOT  # noqa: E402
from PIL import ImageCms  # noqa: E402

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    row = b"\x00" + b"\x00" * (width * 3)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(row, 9))
        + chunk(b"IEND", b"")
    )


def _run_python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT / "src")},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_png_bomb_is_refused_without_allocating_the_frame():
    """16384x16384 RGB is 768 MiB decoded; the refusal must cost next to nothing (own process: RSS)."""
    out = _run_python(
        """
        import resource, struct, zlib
        from enhancer import imaging
        from enhancer.errors import PayloadTooLargeError
        def chunk(k, p): return struct.pack(">I", len(p)) + k + p + struct.pack(">I", zlib.crc32(k + p))
        data = (b"\\x89PNG\\r\\n\\x1a\\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 16384, 16384, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(b"\\x00" * (16384 * 3 + 1), 9)) + chunk(b"IEND", b""))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            imaging.decode(data, max_pixels=50_000_000, max_side=16384)
        except PayloadTooLargeError as exc:
            print(len(data), (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024, exc.detail)
        """
    )
    size, grown_mb, detail = out.strip().split(" ", 2)
    assert int(size) < 10_000  # a few KB on the wire
    assert int(grown_mb) < 32  # versus 768 MiB for the frame
    assert detail.startswith("the image is 16384x16384 = 268,435,456 pixels")


def test_opencv_limits_are_set_when_enhancer_is_imported_first():
    out = _run_python(
        """
        import os
        import enhancer
        import cv2, numpy as np
        print(enhancer.OPENCV_LIMITS.applied, os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"],
              os.environ["OPENCV_IO_MAX_IMAGE_WIDTH"], os.environ["OPENCV_IO_MAX_IMAGE_HEIGHT"])
        wide = cv2.imencode(".png", np.zeros((1, 20000), np.uint8))[1]
        try:
            cv2.imdecode(wide, cv2.IMREAD_UNCHANGED)
            print("decoded")
        except cv2.error:
            print("refused")
        """
    )
    assert out.split() == ["True", "50000000", "16384", "16384", "refused"]


def test_opencv_limits_follow_the_settings_in_the_environment_and_warn_when_cv2_came_first():
    out = _run_python(
        """
        import os
        os.environ["ENHANCER_MAX_PIXELS"] = "1000000"
        os.environ["ENHANCER_MAX_IMAGE_SIDE"] = "2000"
        import enhancer
        from enhancer import limits
        print(os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"], os.environ["OPENCV_IO_MAX_IMAGE_WIDTH"])
        print(limits.mismatch(1_000_000, 2000, enhancer.OPENCV_LIMITS))
        print(limits.mismatch(2_000_000, 2000, enhancer.OPENCV_LIMITS) is not None)
        """
    )
    assert out.split("\n")[:3] == ["1000000 2000", "None", "True"]
    out = _run_python("import cv2, enhancer; from enhancer import limits; print(limits.mismatch(1, 1, enhancer.OPENCV_LIMITS))")
    assert "cv2 was imported before enhancer" in out


def test_opencv_limits_read_a_dot_env_like_the_settings_do(tmp_path):
    (tmp_path / ".env").write_text("# limits\nENHANCER_MAX_PIXELS=2000000\nENHANCER_MAX_IMAGE_SIDE='3000'\n")
    code = "import os, enhancer; print(os.environ['OPENCV_IO_MAX_IMAGE_PIXELS'], os.environ['OPENCV_IO_MAX_IMAGE_HEIGHT'])"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT / "src")},
    )
    assert result.stdout.split() == ["2000000", "3000"], result.stderr


def test_the_header_gives_the_real_size_of_a_bomb_and_the_side_limit_applies():
    with pytest.raises(PayloadTooLargeError, match=r"100000x100000 = 10,000,000,000 pixels"):
        imaging.decode(_png_claiming(100_000, 100_000), max_pixels=50_000_000)
    with pytest.raises(PayloadTooLargeError, match="20,000 px is longer than the 16,384 px limit"):
        imaging.decode(_png_claiming(20_000, 1), max_pixels=50_000_000, max_side=16384)
    assert imaging.decode(_png_claiming(16_384, 1), max_side=16384).width == 16384


def _animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (8, 8), (60 * i, 0, 0)) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:])
    return buf.getvalue()


@pytest.mark.parametrize("fmt,name", [("WEBP", "animated WebP"), ("PNG", "animated PNG (APNG)")])
def test_animated_images_are_refused(fmt, name):
    with pytest.raises(UnsupportedMediaTypeError, match=re.escape(f"the upload is an {name}; animated")):
        imaging.decode(_animated(fmt))


def test_multi_page_tiff_gives_its_first_page():
    image = imaging.decode(_animated("TIFF"))
    assert image.rgb.shape == (8, 8, 3) and image.rgb[..., 0].max() == 0  # page 1 is black


@pytest.mark.parametrize(
    "data,what",
    [
        (b"GIF89a\x01\x00\x01\x00", "a GIF"),
        (b"<?xml version='1.0'?>\n<svg xmlns='http://www.w3.org/2000/svg'/>", "an SVG"),
        (b"  <svg width='1'/>", "an SVG"),
        (b"\x00\x00\x00\x1cftypavif", "an AVIF"),
        (b"%PDF-1.4", "a PDF"),
    ],
)
def test_unsupported_formats_are_named(data, what):
    with pytest.raises(UnsupportedMediaTypeError, match=f"the upload is {what} file, which is not supported"):
        imaging.decode(data)


@pytest.mark.parametrize("fmt", list(OutputFormat))
@pytest.mark.parametrize("source", ["PNG", "JPEG", "WEBP", "TIFF"])
def test_rgb_icc_profile_is_carried_to_every_answer_format(source, fmt):
    buf = io.BytesIO()
    Image.fromarray(photo_like(20, 30, seed=7)).save(buf, source, icc_profile=SRGB)
    image = imaging.decode(buf.getvalue())
    assert image.icc_profile == SRGB
    answer = imaging.encode(image.rgb, fmt, like=image)
    with Image.open(io.BytesIO(answer)) as im:
        assert im.info.get("icc_profile") == SRGB
        im.load()  # still a valid file
    assert decode_bytes(answer).shape[:2] == (20, 30)


def test_icc_profile_with_alpha_in_webp():
    buf = io.BytesIO()
    Image.fromarray(photo_like(20, 30, seed=8, channels=4)).save(buf, "PNG", icc_profile=SRGB)
    image = imaging.decode(buf.getvalue())
    answer = imaging.encode(image.rgb, OutputFormat.webp, like=image)
    with Image.open(io.BytesIO(answer)) as im:
        assert im.mode == "RGBA" and im.info.get("icc_profile") == SRGB


def test_a_profile_that_does_not_fit_the_answer_is_dropped():
    grey_profile = SRGB[:16] + b"GRAY" + SRGB[20:]  # only the colour-space field is looked at
    grey = photo_like(10, 12, channels=1)[:, :, 0]
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, "PNG", icc_profile=grey_profile)
    image = imaging.decode(buf.getvalue())
    png = imaging.encode(image.rgb, OutputFormat.png, like=image)  # grey answer: grey profile fits
    assert Image.open(io.BytesIO(png)).info.get("icc_profile") == grey_profile
    webp = imaging.encode(image.rgb, OutputFormat.webp, like=image)  # WebP is RGB: it does not
    assert "icc_profile" not in Image.open(io.BytesIO(webp)).info

    cmyk_profile = SRGB[:16] + b"CMYK" + SRGB[20:]
    buf = io.BytesIO()
    Image.fromarray(photo_like(10, 12)).convert("CMYK").save(buf, "JPEG", icc_profile=cmyk_profile)
    image = imaging.decode(buf.getvalue())
    assert image.icc_profile is None  # a CMYK profile cannot describe the RGB answer


@pytest.mark.parametrize(("fmt", "options"), [("PNG", {}), ("TIFF", {}), ("TIFF", {"compression": "tiff_lzw"})])
def test_grey_alpha_round_trips_as_grey_alpha(fmt, options):
    # OpenCV decodes a grey+alpha TIFF as plain grey: the alpha must not be lost on the way.
    la = np.dstack([photo_like(12, 14, channels=1)[:, :, 0], np.arange(12 * 14, dtype=np.uint8).reshape(12, 14)])
    buf = io.BytesIO()
    Image.fromarray(la).save(buf, fmt, **options)
    image = imaging.decode(buf.getvalue())
    assert image.grayscale and image.alpha is not None
    answer = Image.open(io.BytesIO(imaging.encode(image.rgb, OutputFormat.png, like=image)))
    assert answer.mode == "LA"
    np.testing.assert_array_equal(np.asarray(answer), la)


def test_grey_colour_key_transparency_becomes_alpha():
    grey = np.full((6, 8), 90, np.uint8)
    grey[:, :3] = 7
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, "PNG", transparency=7)
    image = imaging.decode(buf.getvalue())
    assert image.alpha is not None
    np.testing.assert_array_equal(image.alpha, (grey != 7).astype(np.float32))


def test_cmyk_tiff_is_rgb_without_an_invented_alpha():
    rgb = photo_like(10, 12, seed=3)
    cmyk = Image.fromarray(rgb).convert("CMYK")
    buf = io.BytesIO()
    cmyk.save(buf, "TIFF")
    image = imaging.decode(buf.getvalue())
    assert image.alpha is None and not image.grayscale
    expected = np.asarray(cmyk.convert("RGB")).astype(np.float32) / 255
    assert np.abs(image.rgb - expected).max() < 4 / 255


@pytest.mark.parametrize("shape", [(1, 1), (1, 10000), (10000, 1)])
def test_extreme_shapes_decode_and_encode(shape):
    pixels = photo_like(*shape, seed=4)
    image = imaging.decode(encode_bgr(pixels, ".png"))
    assert image.rgb.shape == (*shape, 3)
    np.testing.assert_array_equal(decode_bytes(imaging.encode(image.rgb, OutputFormat.png, like=image)), pixels)


@pytest.mark.parametrize("encoder", ["opencv", "pillow"])
def test_jpeg_quality_is_read_from_the_quantisation_table(encoder):
    pixels = photo_like(40, 48, seed=3)
    for quality in (1, 5, 10, 30, 50, 70, 85, 90, 95, 100):
        if encoder == "opencv":
            data = encode_bgr(pixels, ".jpg", cv2.IMWRITE_JPEG_QUALITY, quality)
        else:
            buf = io.BytesIO()
            Image.fromarray(pixels[:, :, ::-1]).save(buf, "JPEG", quality=quality)
            data = buf.getvalue()
        assert imaging.decode(data).jpeg_quality == quality, (encoder, quality)
    assert imaging.decode(encode_bgr(pixels, ".png")).jpeg_quality is None
    assert imaging.decode(encode_bgr(pixels, ".webp")).jpeg_quality is None


def test_a_non_libjpeg_table_gets_the_nearest_quality():
    # An encoder with its own table: libjpeg's q80 table with every step one larger.
    buf = io.BytesIO()
    table = [int(v) + 1 for v in imaging._ijg_table(80)]
    Image.fromarray(photo_like(32, 32)).save(buf, "JPEG", qtables=[table, table])
    assert imaging.decode(buf.getvalue()).jpeg_quality in (78, 79)
