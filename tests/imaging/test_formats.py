"""Formats by magic bytes, the one list of supported formats, and what the header lets us refuse early."""

from __future__ import annotations

import io
import re
import struct
import subprocess
import sys
import textwrap
import zlib

import cv2
import pytest
from helpers import REPO_ROOT, encode_bgr, photo_like
from PIL import Image

from enhancer import imaging
from enhancer.errors import PayloadTooLargeError, UnsupportedMediaTypeError
from enhancer.imaging import OutputFormat


def test_the_supported_formats_are_listed_once_and_named_from_that_list():
    assert [f.key for f in imaging.INPUT_FORMATS] == ["jpeg", "png", "webp", "bmp", "tiff"]
    assert imaging.SUPPORTED_NAMES == "JPEG, PNG, WebP, BMP or TIFF"
    for fmt in imaging.INPUT_FORMATS:
        ext = {"jpeg": ".jpg"}.get(fmt.key, "." + fmt.key)
        assert imaging.sniff_format(encode_bgr(photo_like(4, 4), ext)) == fmt.key


def test_the_readme_names_the_same_list():
    readme = " ".join((REPO_ROOT / "README.md").read_text(encoding="utf-8").split())
    assert f"**`image`** ({imaging.SUPPORTED_NAMES};" in readme
    assert f"| 415 | Not a {imaging.SUPPORTED_NAMES} file" in readme


def test_the_api_documents_the_same_list():
    from enhancer.api import create_app
    from enhancer.config import Settings

    schema = create_app(Settings(_env_file=None)).openapi()
    text = str(schema)
    assert f"The image to enhance: {imaging.SUPPORTED_NAMES}." in text
    assert f"The file is not {imaging.SUPPORTED_NAMES}" in text


@pytest.mark.parametrize("data", [b"hello world, not an image", b"GIF89a\x01\x00\x01\x00", b"%PDF-1.7\n"])
def test_unknown_types_are_unsupported(data):
    with pytest.raises(UnsupportedMediaTypeError, match="JPEG, PNG, WebP, BMP or TIFF"):
        imaging.decode(data)


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
def test_answer_formats_name_their_media_type_and_extension(fmt):
    assert fmt.media_type == f"image/{fmt.value}"
    assert fmt.extension == {"png": "png", "jpeg": "jpg", "webp": "webp"}[fmt.value]


# --- limits from the header --------------------------------------------------------------------------


def test_pixel_limit_is_checked_from_the_header_before_decoding(monkeypatch):
    data = encode_bgr(photo_like(100, 120), ".png")
    decoded = []
    real_imdecode = cv2.imdecode
    monkeypatch.setattr(cv2, "imdecode", lambda *a: decoded.append(1) or real_imdecode(*a))
    with pytest.raises(PayloadTooLargeError, match="120x100 = 12,000 pixels"):
        imaging.decode(data, max_pixels=11_999)
    assert decoded == []  # refused from the header alone
    assert imaging.decode(data, max_pixels=12_000).info.width == 120
    assert decoded == [1]


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
    )  # fmt: skip
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
    )  # fmt: skip
    assert result.stdout.split() == ["2000000", "3000"], result.stderr


def test_the_header_gives_the_real_size_of_a_bomb_and_the_side_limit_applies():
    with pytest.raises(PayloadTooLargeError, match=r"100000x100000 = 10,000,000,000 pixels"):
        imaging.decode(_png_claiming(100_000, 100_000), max_pixels=50_000_000)
    with pytest.raises(PayloadTooLargeError, match="20,000 px is longer than the 16,384 px limit"):
        imaging.decode(_png_claiming(20_000, 1), max_pixels=50_000_000, max_side=16384)
    assert imaging.decode(_png_claiming(16_384, 1), max_side=16384).info.width == 16384


def test_an_image_over_both_limits_names_both():
    with pytest.raises(PayloadTooLargeError) as caught:
        imaging.decode(_png_claiming(20_000, 3_000), max_pixels=50_000_000, max_side=16384)
    assert caught.value.detail == (
        "the image is 20000x3000 = 60,000,000 pixels, more than the 50,000,000 pixel limit, and 20,000 px "
        "is longer than the 16,384 px limit for a side; downscale or crop it and try again"
    )


def test_read_image_size_is_upright_and_needs_no_decoding():
    assert imaging.read_image_size(_png_claiming(30_000, 20_000)) == (30_000, 20_000)
    assert imaging.read_image_size(b"not an image") is None


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
    assert image.pixels.shape == (8, 8, 3) and image.pixels[..., 0].max() == 0  # page 1 is black
