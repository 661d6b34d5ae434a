"""ICC profiles: carried to every answer format when they describe its channels, dropped otherwise."""

from __future__ import annotations

import io

import pytest
from helpers import decode_bytes, photo_like
from PIL import Image, ImageCms

from enhancer import imaging
from enhancer.imaging import OutputFormat
from enhancer.imaging.icc import colour_space

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def test_the_colour_space_is_read_from_the_profile_header():
    assert colour_space(SRGB) == b"RGB "
    assert colour_space(SRGB[:16] + b"GRAY" + SRGB[20:]) == b"GRAY"
    assert colour_space(b"not a profile") is None and colour_space(None) is None


@pytest.mark.parametrize("fmt", list(OutputFormat))
@pytest.mark.parametrize("source", ["PNG", "JPEG", "WEBP", "TIFF"])
def test_rgb_icc_profile_is_carried_to_every_answer_format(source, fmt):
    buf = io.BytesIO()
    Image.fromarray(photo_like(20, 30, seed=7)).save(buf, source, icc_profile=SRGB)
    image = imaging.decode(buf.getvalue())
    assert image.info.icc_profile == SRGB
    answer = imaging.encode(image.pixels, fmt, info=image.info)
    with Image.open(io.BytesIO(answer)) as im:
        assert im.info.get("icc_profile") == SRGB
        im.load()  # still a valid file
    assert decode_bytes(answer).shape[:2] == (20, 30)


def test_icc_profile_with_alpha_in_webp():
    buf = io.BytesIO()
    Image.fromarray(photo_like(20, 30, seed=8, channels=4)).save(buf, "PNG", icc_profile=SRGB)
    image = imaging.decode(buf.getvalue())
    answer = imaging.encode(image.pixels, OutputFormat.webp, info=image.info)
    with Image.open(io.BytesIO(answer)) as im:
        assert im.mode == "RGBA" and im.info.get("icc_profile") == SRGB


def test_a_profile_that_does_not_fit_the_answer_is_dropped():
    grey_profile = SRGB[:16] + b"GRAY" + SRGB[20:]  # only the colour-space field is looked at
    grey = photo_like(10, 12, channels=1)[:, :, 0]
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, "PNG", icc_profile=grey_profile)
    image = imaging.decode(buf.getvalue())
    png = imaging.encode(image.pixels, OutputFormat.png, info=image.info)  # grey answer: grey profile fits
    assert Image.open(io.BytesIO(png)).info.get("icc_profile") == grey_profile
    webp = imaging.encode(image.pixels, OutputFormat.webp, info=image.info)  # WebP is RGB: it does not
    assert "icc_profile" not in Image.open(io.BytesIO(webp)).info

    cmyk_profile = SRGB[:16] + b"CMYK" + SRGB[20:]
    buf = io.BytesIO()
    Image.fromarray(photo_like(10, 12)).convert("CMYK").save(buf, "JPEG", icc_profile=cmyk_profile)
    image = imaging.decode(buf.getvalue())
    assert image.info.icc_profile is None  # a CMYK profile cannot describe the RGB answer
