"""Pictures as people have them, through the HTTP API on the real SavedModel: EXIF orientation, CMYK,
grey, alpha (RGBA, palette + tRNS, grey + alpha), 16-bit, ICC profiles and extreme shapes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from helpers import decode_bytes, encode_bgr, make_settings, photo_like, running_app, serving
from PIL import Image, ImageCms, ImageOps

from enhancer.api import create_app

pytestmark = pytest.mark.anyio

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@pytest.fixture(scope="module")
async def client(saved_model):
    async with running_app(create_app(make_settings(), models=serving(saved_model))) as c:
        yield c


def pil_bytes(image: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


async def enhance(client, data: bytes, **params):
    r = await client.post("/upscale", params=params, files={"image": ("in", data, "application/octet-stream")})
    assert r.status_code == 200, r.text
    return r


def mean_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def upright_test_image() -> np.ndarray:
    """RGB, clearly asymmetric: a bright block in the top-left corner, gradients elsewhere."""
    img = photo_like(48, 80, seed=21)
    img[:12, :20] = (250, 250, 40)
    return img


@pytest.mark.parametrize("orientation", range(1, 9))
async def test_every_exif_orientation_comes_back_upright(client, orientation):
    upright = upright_test_image()
    # store the pixels so that applying `orientation` gives `upright` back
    stored = ImageOps.exif_transpose(Image.fromarray(upright))  # identity: no EXIF yet
    inverse = {
        1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90,
        7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270,
    }[orientation]
    if inverse is not None:
        stored = stored.transpose(inverse)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = pil_bytes(stored, "JPEG", quality=95, exif=exif)
    assert np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data)))).shape == upright.shape  # the premise

    r = await enhance(client, data)
    out = decode_bytes(r.content)[:, :, ::-1]  # BGR -> RGB
    assert out.shape == upright.shape
    assert mean_diff(out, upright) < 8  # the model only cleans up; a wrong orientation differs a lot
    assert mean_diff(out, upright[::-1, ::-1]) > 20
    assert Image.open(io.BytesIO(r.content)).getexif().get(0x0112) is None  # no EXIF to re-apply


async def test_cmyk_jpeg_is_converted_to_the_right_colours(client):
    rgb = photo_like(40, 56, seed=22)
    cmyk = Image.fromarray(rgb).convert("CMYK")
    data = pil_bytes(cmyk, "JPEG", quality=95)  # Adobe-style inverted CMYK, as Photoshop writes
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    out = decode_bytes((await enhance(client, data)).content)[:, :, ::-1]
    assert out.shape == expected.shape
    assert mean_diff(out, expected) < 8
    assert mean_diff(out, 255 - expected) > 60  # not the inverted colours


async def test_grey_in_grey_out(client):
    grey = photo_like(30, 40, seed=23, channels=1)[:, :, 0]
    for fmt in ("png", "jpeg"):
        out = decode_bytes((await enhance(client, encode_bgr(grey, ".png"), format=fmt)).content)
        assert out.shape == grey.shape
        assert mean_diff(out, grey) < 8


async def test_rgba_colour_is_restored_and_alpha_passes_through(client):
    bgra = photo_like(40, 40, seed=24, channels=4)
    bgra[:, :10, 3] = 0
    bgra[:, 10:20, 3] = 128
    out = decode_bytes((await enhance(client, encode_bgr(bgra, ".png"))).content)
    assert out.shape == (40, 40, 4)
    np.testing.assert_array_equal(out[:, :, 3], bgra[:, :, 3])
    assert mean_diff(out[:, :, :3], bgra[:, :, :3]) < 8


async def test_palette_png_with_transparency_keeps_its_alpha(client):
    rgb = Image.fromarray(photo_like(32, 36, seed=25)).quantize(16)  # mode P
    palette_alpha = bytes([0, 60] + [255] * 14)  # entries 0 and 1 (partly) transparent
    data = pil_bytes(rgb, "PNG", transparency=palette_alpha)
    reference = np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"))
    out = decode_bytes((await enhance(client, data)).content)
    assert out.shape == (32, 36, 4)
    np.testing.assert_array_equal(out[:, :, 3], reference[:, :, 3])
    assert mean_diff(out[:, :, 2::-1], reference[:, :, :3]) < 10


async def test_grey_with_alpha_comes_back_grey_with_alpha(client):
    la = np.dstack([photo_like(30, 34, seed=26, channels=1)[:, :, 0], np.tile(np.arange(34, dtype=np.uint8) * 7, (30, 1))])
    data = pil_bytes(Image.fromarray(la), "PNG")
    r = await enhance(client, data)
    answer = Image.open(io.BytesIO(r.content))
    assert answer.mode == "LA"
    out = np.asarray(answer)
    np.testing.assert_array_equal(out[:, :, 1], la[:, :, 1])
    assert mean_diff(out[:, :, 0], la[:, :, 0]) < 8


async def test_sixteen_bit_png_in_sixteen_bit_png_out(client):
    pixels = (photo_like(30, 40, seed=27).astype(np.uint16) * 257)
    pixels[:, :, 0] += np.arange(40, dtype=np.uint16)  # detail below 8-bit resolution
    out = decode_bytes((await enhance(client, encode_bgr(pixels, ".png"))).content)
    assert out.dtype == np.uint16 and out.shape == pixels.shape
    assert mean_diff(out, pixels) < 8 * 257
    assert np.any(out % 257 != 0)  # really 16-bit values, not 8-bit ones scaled


@pytest.mark.parametrize("answer", ["png", "jpeg", "webp"])
async def test_icc_profile_is_carried_to_the_answer(client, answer):
    data = pil_bytes(Image.fromarray(photo_like(24, 30, seed=28)), "PNG", icc_profile=SRGB)
    r = await enhance(client, data, format=answer)
    assert Image.open(io.BytesIO(r.content)).info.get("icc_profile") == SRGB
    assert decode_bytes(r.content).shape == (24, 30, 3)


@pytest.mark.parametrize("shape", [(1, 1), (1, 10000), (10000, 1)])
async def test_extreme_shapes(client, shape):
    pixels = photo_like(*shape, seed=29)
    out = decode_bytes((await enhance(client, encode_bgr(pixels, ".png"))).content)
    assert out.shape == (*shape, 3)
