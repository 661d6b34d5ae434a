"""Upscaling over HTTP (`POST /upscale?scale=2|4`, issue 14), in-process, on real exported upscaling
SavedModels (tests/upscalers.py: the `build_upscaler` architecture, small and perturbed, exported by
the project's export code) served beside the shipped restorer, as `enhancer serve` serves them.

Every answer is checked against the model itself: the same pixels the server's path must give
(tiles run by the model with the condition this request must send), not just a size.
"""

from __future__ import annotations

import io
import re
import struct
import zlib

import cv2
import numpy as np
import pytest
from helpers import decode_bytes, encode_bgr, make_settings, photo_like, running_app, serving
from PIL import Image, ImageCms

from enhancer import imaging, tiling
from enhancer.api import create_app
from enhancer.conditioning import Strength, no_damage_vector, quantization_vector
from enhancer.samples import to_unit_float

pytestmark = pytest.mark.anyio

TILE, OVERLAP, MULTIPLE = 128, 48, 16  # the upscalers' size multiple is 16; overlap >= their reach
UP_TILE = 96  # their tile edge: half of TILE, but at least twice the overlap (Settings.tiling_for)
MAX_OUTPUT = 1_000_000
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def upscale_settings(**overrides):
    # border context = the overlap: what tiling.enhance_tiled (the expected answers) uses
    return make_settings(**{"tile_size": TILE, "tile_overlap": OVERLAP, "border_context": OVERLAP, "max_output_pixels": MAX_OUTPUT, **overrides})


@pytest.fixture(scope="module")
async def client(saved_model, upscalers):
    """The shipped restorer (dejpeg, the default) with the 2x and 4x test upscalers."""
    app = create_app(upscale_settings(), models=serving(saved_model, upscalers[2], upscalers[4], default="dejpeg"))
    async with running_app(app) as c:
        yield c


async def post(client, data: bytes, name: str = "small.jpg", **params):
    return await client.post("/upscale", params=params, files={"image": (name, data, "application/octet-stream")})


def unit_rgb(image) -> np.ndarray:
    """Decoded pixels as float32 [0, 1] (the decoder keeps the file's 8- or 16-bit samples)."""
    return to_unit_float(image.pixels)


def jpeg(pixels: np.ndarray, quality: int = 30) -> bytes:
    return encode_bgr(pixels, ".jpg", cv2.IMWRITE_JPEG_QUALITY, quality)


def model_rgb(model, data: bytes, vector: np.ndarray) -> np.ndarray:
    """The model's enlarged float RGB for these upload bytes, tiled as the server tiles, with `vector`
    as the quantization input of every tile."""
    image = imaging.decode(data)

    def forward(batch):
        return model.forward(batch, {"quantization": np.broadcast_to(vector, (len(batch), len(vector)))})

    return tiling.enhance_tiled(image.pixels, forward, UP_TILE, OVERLAP, 4, multiple=MULTIPLE, scale=model.spec.scale)


def to_8bit_bgr(rgb: np.ndarray) -> np.ndarray:
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)[:, :, ::-1]


def assert_within_one_step(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    diff = np.abs(actual.astype(np.int32) - expected.astype(np.int32))
    assert diff.max() <= 1 and diff.mean() < 0.02, (diff.max(), diff.mean())


# --- size, model, names ------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [2, 4])
async def test_the_answer_is_scale_times_the_input_and_is_the_upscaler_s_own(client, upscalers, scale):
    data = jpeg(photo_like(70, 98, seed=1))
    r = await post(client, data, "holiday photo.jpg", scale=scale)
    assert r.status_code == 200, r.text
    assert r.headers["x-enhancer-model"] == f"upscale-x{scale}"
    assert r.headers["content-disposition"] == f'inline; filename="holiday_photo_x{scale}.png"'
    assert "x-enhancer-passed-through" not in r.headers
    got = decode_bytes(r.content)
    assert got.shape == (70 * scale, 98 * scale, 3)
    info = imaging.decode(data).info
    expected = to_8bit_bgr(model_rgb(upscalers[scale], data, quantization_vector(info)))  # auto: the file's tables
    assert_within_one_step(got, expected)
    # and not merely a resize: the upscaler's restorer and head really change the picture
    bicubic = cv2.resize(decode_bytes(data), (98 * scale, 70 * scale), interpolation=cv2.INTER_CUBIC)
    assert np.abs(got.astype(int) - bicubic.astype(int)).mean() > 1


async def test_scale_1_is_the_default_and_the_restorer_s(client):
    data = jpeg(photo_like(40, 56, seed=2))
    for params in ({}, {"scale": 1}):
        r = await post(client, data, **params)
        assert r.status_code == 200, r.text
        assert r.headers["x-enhancer-model"] == "dejpeg"
        assert decode_bytes(r.content).shape == (40, 56, 3)
        assert r.headers["content-disposition"] == 'inline; filename="small_enhanced.png"'


async def test_a_named_model_gives_its_scale_and_must_agree_with_an_asked_one(client):
    data = jpeg(photo_like(24, 32, seed=3))
    r = await post(client, data, model="upscale-x2")  # no scale asked: the model's
    assert r.status_code == 200 and decode_bytes(r.content).shape == (48, 64, 3)
    r = await post(client, data, model="upscale-x2", scale=4)
    assert r.status_code == 422
    assert r.json()["detail"] == (
        "query parameter 'scale': model 'upscale-x2' has scale 2, not 4; leave out 'scale', or for scale 4 name upscale-x4"
    )


@pytest.mark.parametrize("bad", ["3", "0", "8", "-2", "two", "1.5", ""])
async def test_a_scale_other_than_1_2_or_4_is_422_naming_them(client, bad):
    r = await post(client, jpeg(photo_like(16, 16)), scale=bad)
    assert r.status_code == 422
    assert r.json()["detail"] == "query parameter 'scale': Input should be 1, 2 or 4"


async def test_a_scale_no_served_model_has_is_422_naming_the_scales_served(saved_model, upscalers):
    app = create_app(upscale_settings(), models=serving(saved_model, upscalers[2]))
    async with running_app(app) as client:
        r = await post(client, jpeg(photo_like(16, 16)), scale=4)
        assert r.status_code == 422
        assert r.json()["detail"] == (
            "query parameter 'scale': this server serves no model with scale 4; the scales it serves are 1, 2 "
            "(models: dejpeg x1, upscale-x2 x2)"
        )
        ready = (await client.get("/readyz")).json()["models"]
        assert ready == [
            {"name": "dejpeg", "scale": 1, "default": True, "tile_size": TILE, "tile_overlap": OVERLAP,
             "solo_tile_size": None, "precision": saved_model.precision},
            {"name": "upscale-x2", "scale": 2, "default": False, "tile_size": UP_TILE, "tile_overlap": OVERLAP,
             "solo_tile_size": None, "precision": upscalers[2].precision},
        ]


# --- the output pixel limit ----------------------------------------------------------------------


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height and whose pixel data is a few bytes: decoding it
    fails (400), so a 413 for it can only come from the header."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


async def test_an_answer_over_the_output_limit_is_413_from_the_header_before_decoding(client):
    bomb = png_header_only(300, 300)  # 300x300 at 4x: 1.44 MP > 1 MP; at 2x: 0.36 MP, fits
    r = await post(client, bomb, "bomb.png", scale=4)
    assert r.status_code == 413
    detail = r.json()["detail"]
    assert detail == (
        "the answer at scale 4 would be 1200x1200 = 1,440,000 pixels, more than the 1,000,000 pixel limit "
        "for answers (ENHANCER_MAX_OUTPUT_PIXELS); at scale 4 an image of this shape fits up to 250x250 "
        "(longest side 250 px): downscale or crop it, or ask for a smaller scale"
    )
    r = await post(client, bomb, "bomb.png", scale=2)  # within the limit: decoded, and found broken
    assert r.status_code == 400
    r = await post(client, bomb, "bomb.png")  # scale 1: the output limit does not apply
    assert r.status_code == 400


async def test_the_largest_input_the_413_names_fits_and_one_more_row_does_not(client):
    wide = encode_bgr(photo_like(130, 420, seed=4), ".png")  # 4x: 873,600 output pixels... fits
    r = await post(client, wide, "wide.png", scale=4)
    assert r.status_code == 200 and decode_bytes(r.content).shape == (520, 1680, 3)
    too_big = png_header_only(840, 260)
    detail = (await post(client, too_big, "big.png", scale=4)).json()["detail"]
    fit_w, fit_h = map(int, re.search(r"fits up to (\d+)x(\d+)", detail).groups())
    assert fit_w * fit_h * 16 <= MAX_OUTPUT < (fit_w + 1) * (fit_h + 1) * 16
    assert abs(fit_w / fit_h - 840 / 260) < 0.02  # the image's own shape
    assert f"longest side {fit_w} px; a square one up to 250x250" in detail
    assert (await post(client, png_header_only(fit_w, fit_h), "fits.png", scale=4)).status_code == 400  # passed the limit


# --- strength ------------------------------------------------------------------------------------


async def test_strength_off_at_scale_2_enlarges_without_restoring(client, upscalers):
    data = jpeg(photo_like(64, 80, seed=5), quality=20)
    auto = await post(client, data, scale=2)
    off = await post(client, data, scale=2, strength="off")
    assert auto.status_code == off.status_code == 200
    assert "x-enhancer-passed-through" not in off.headers  # the model ran: the image had to be enlarged
    assert off.headers["x-enhancer-model"] == "upscale-x2"
    got_auto, got_off = decode_bytes(auto.content), decode_bytes(off.content)
    assert got_off.shape == got_auto.shape == (128, 160, 3)
    # off tells the model "no compression damage" (every step 1), auto the file's own tables
    assert_within_one_step(got_off, to_8bit_bgr(model_rgb(upscalers[2], data, no_damage_vector())))
    info = imaging.decode(data).info
    assert_within_one_step(got_auto, to_8bit_bgr(model_rgb(upscalers[2], data, quantization_vector(info))))
    assert np.abs(got_off.astype(int) - got_auto.astype(int)).mean() > 0.5  # and that is a different answer


async def test_every_strength_combines_with_scale(client, upscalers):
    data = jpeg(photo_like(32, 48, seed=6), quality=40)
    info = imaging.decode(data).info
    for strength in Strength:
        r = await post(client, data, scale=4, strength=strength.value, format="webp", quality=80)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "image/webp"
        assert r.headers["content-disposition"] == 'inline; filename="small_x4.webp"'
        assert decode_bytes(r.content).shape == (128, 192, 3)
    # light and strong tell the model halved and doubled steps, as at scale 1
    assert not np.array_equal(quantization_vector(info, Strength.light), quantization_vector(info, Strength.strong))


async def test_a_png_at_auto_gets_the_blind_condition(client, upscalers):
    data = encode_bgr(photo_like(48, 64, seed=7), ".png")
    got = decode_bytes((await post(client, data, "in.png", scale=2)).content)
    assert_within_one_step(got, to_8bit_bgr(model_rgb(upscalers[2], data, np.zeros(130, np.float32))))


async def test_a_good_jpeg_is_enlarged_not_passed_through(upscalers, saved_model):
    """At scale 1 a JPEG of quality >= ENHANCER_PASS_THROUGH_JPEG_QUALITY comes back as it is; at 2 it
    must still be enlarged."""
    app = create_app(upscale_settings(pass_through_jpeg_quality=90), models=serving(saved_model, upscalers[2]))
    async with running_app(app) as client:
        data = jpeg(photo_like(32, 32, seed=8), quality=95)
        assert (await post(client, data)).headers["x-enhancer-passed-through"] == "jpeg-quality=95"
        r = await post(client, data, scale=2)
        assert "x-enhancer-passed-through" not in r.headers
        assert decode_bytes(r.content).shape == (64, 64, 3)


# --- pictures as people have them, at scale 2 ----------------------------------------------------


async def test_alpha_is_enlarged_bilinearly_with_clean_edges(client, upscalers):
    bgra = photo_like(48, 64, seed=9, channels=4)
    alpha = np.zeros((48, 64), np.uint8)
    cv2.circle(alpha, (30, 24), 16, 255, -1)  # a cut-out: hard edges, 0 outside, 255 inside
    alpha[:, 56:] = 128  # and a semi-transparent band beside it
    bgra[:, :, 3] = alpha
    data = encode_bgr(bgra, ".png")
    got = decode_bytes((await post(client, data, "logo.png", scale=2)).content)
    assert got.shape == (96, 128, 4)
    expected_alpha = cv2.resize(alpha, (128, 96), interpolation=cv2.INTER_LINEAR)
    assert np.abs(got[:, :, 3].astype(int) - expected_alpha.astype(int)).max() <= 1
    # clean: every enlarged value lies between its 2x2 source neighbours' (no ringing, no halo), so
    # the opaque inside stays exactly 255, the outside exactly 0, and the band exactly 128
    padded = np.pad(alpha, 1, mode="edge").astype(int)
    ys, xs = (np.arange(96) + 0.5) / 2 - 0.5, (np.arange(128) + 0.5) / 2 - 0.5
    y0, x0 = np.floor(ys).astype(int) + 1, np.floor(xs).astype(int) + 1
    neighbours = np.stack([padded[np.ix_(y0 + dy, x0 + dx)] for dy in (0, 1) for dx in (0, 1)])
    out_alpha = got[:, :, 3].astype(int)
    assert (out_alpha >= neighbours.min(axis=0) - 1).all() and (out_alpha <= neighbours.max(axis=0) + 1).all()
    assert (out_alpha[48, 56:64] == 255).all() and (out_alpha[:4, :8] == 0).all() and (out_alpha[:, 116:] == 128).all()
    # the colour is the model's
    expected = to_8bit_bgr(model_rgb(upscalers[2], data, np.zeros(130, np.float32)))
    assert_within_one_step(got[:, :, :3], expected)


async def test_grey_stays_grey_and_16_bit_stays_16_bit(client, upscalers):
    grey = photo_like(40, 52, seed=10, channels=1)[:, :, 0]
    out = decode_bytes((await post(client, encode_bgr(grey, ".png"), "g.png", scale=2)).content)
    assert out.shape == (80, 104)  # one channel
    rgb = model_rgb(upscalers[2], encode_bgr(grey, ".png"), np.zeros(130, np.float32))
    assert np.abs(out.astype(int) - (np.clip(rgb.mean(axis=2), 0, 1) * 255 + 0.5).astype(int)).max() <= 1

    deep = photo_like(30, 40, seed=11).astype(np.uint16) * 257
    deep[:, :, 0] += np.arange(40, dtype=np.uint16)  # detail below 8-bit resolution
    data = encode_bgr(deep, ".png")
    out = decode_bytes((await post(client, data, "d.png", scale=2)).content)
    assert out.dtype == np.uint16 and out.shape == (60, 80, 3)
    assert np.any(out % 257 != 0)  # real 16-bit values
    expected = (np.clip(model_rgb(upscalers[2], data, np.zeros(130, np.float32)), 0, 1) * 65535 + 0.5)[:, :, ::-1]
    assert np.abs(out.astype(np.int64) - expected.astype(np.int64)).max() <= 65535 // 255  # within one 8-bit step


async def test_icc_profile_and_exif_orientation_at_scale_2(client):
    data = io.BytesIO()
    Image.fromarray(photo_like(24, 30, seed=12)).save(data, "PNG", icc_profile=SRGB)
    r = await post(client, data.getvalue(), "p.png", scale=2, format="jpeg")
    assert Image.open(io.BytesIO(r.content)).info.get("icc_profile") == SRGB
    assert decode_bytes(r.content).shape == (48, 60, 3)

    stored = Image.fromarray(photo_like(32, 48, seed=13))  # stored 48 wide, 32 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to stand upright: 32 wide, 48 high
    rotated = io.BytesIO()
    stored.save(rotated, "JPEG", quality=90, exif=exif)
    r = await post(client, rotated.getvalue(), "r.jpg", scale=2)
    assert decode_bytes(r.content).shape == (96, 64, 3)
    assert Image.open(io.BytesIO(r.content)).getexif().get(0x0112) is None


# --- seams ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [2, 4])
def test_tiled_equals_untiled_within_one_8_bit_step(upscalers, scale):
    model = upscalers[scale]
    data = jpeg(photo_like(300, 420, seed=14), quality=25)
    image = imaging.decode(data)
    vector = quantization_vector(image.info)

    def forward(batch):
        return model.forward(batch, {"quantization": np.broadcast_to(vector, (len(batch), 130))})

    # Reference: the whole image at once, with the mirrored context the tiler gives border tiles
    # (48 px: a multiple of the size multiple, so the JPEG grid keeps its phase; >= the reach)
    pad = 48
    mirrored = np.pad(unit_rgb(image), ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    reference = forward(mirrored[None])[0][pad * scale : -pad * scale, pad * scale : -pad * scale]
    assert np.abs(reference - cv2.resize(unit_rgb(image), None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)).mean() > 0.005

    plan = tiling.plan_tiles(300, 420, TILE, OVERLAP, multiple=MULTIPLE)
    assert plan.num_tiles >= 12  # really tiled
    tiled = tiling.enhance_tiled(image.pixels, forward, TILE, OVERLAP, 4, multiple=MULTIPLE, scale=scale)
    assert tiled.shape == reference.shape == (300 * scale, 420 * scale, 3)
    assert np.abs(tiled - reference).max() < 1 / 255  # not even one 8-bit step anywhere

    # Control: without overlap the same comparison does see seams, so the check has teeth.
    seamed = tiling.enhance_tiled(image.pixels, forward, TILE, 0, 4, multiple=MULTIPLE, scale=scale)
    assert np.abs(seamed - reference).max() > 4 / 255


async def test_the_served_answer_has_no_seams(client, upscalers):
    data = jpeg(photo_like(300, 420, seed=15), quality=25)
    got = decode_bytes((await post(client, data, scale=2)).content)
    image = imaging.decode(data)
    vector = quantization_vector(image.info)
    pad = 48
    mirrored = np.pad(unit_rgb(image), ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    whole = upscalers[2].forward(mirrored[None], {"quantization": vector[None]})[0][2 * pad : -2 * pad, 2 * pad : -2 * pad]
    assert_within_one_step(got, to_8bit_bgr(whole))



# --- fairness ------------------------------------------------------------------------------------


def metric_total(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            total += float(match.group(2))
    return total


async def test_a_4x_job_does_not_starve_1x_requests_and_batches_never_mix_models(saved_model, upscalers):
    import asyncio
    import time

    settings = upscale_settings(max_output_pixels=4_000_000, max_batch_size=4)
    app = create_app(settings, models=serving(saved_model, upscalers[4]))
    big = encode_bgr(photo_like(480, 480, seed=16), ".png")  # 4x: 1920x1920
    big_tiles = tiling.plan_tiles(480, 480, UP_TILE, OVERLAP, multiple=MULTIPLE).num_tiles
    small = encode_bgr(photo_like(60, 60, seed=17), ".png")
    small_tiles = tiling.plan_tiles(60, 60, TILE, OVERLAP, multiple=4).num_tiles  # dejpeg's multiple
    async with running_app(app) as client:
        before = (await client.get("/metrics")).text
        big_task = asyncio.create_task(post(client, big, "big.png", scale=4))
        deadline = time.monotonic() + 120
        while metric_total((await client.get("/metrics")).text, "enhancer_queue_depth_tiles") < big_tiles / 2:
            assert not big_task.done() and time.monotonic() < deadline, "the 4x job's tiles never queued"
            await asyncio.sleep(0.02)
        smalls = [await post(client, small, "small.png") for _ in range(5)]  # one after the other
        still_queued = metric_total((await client.get("/metrics")).text, "enhancer_queue_depth_tiles")
        big_done_before = big_task.done()
        big_answer = await big_task
        after = (await client.get("/metrics")).text
    assert [r.status_code for r in smalls] == [200] * 5
    assert all(r.headers["x-enhancer-model"] == "dejpeg" and decode_bytes(r.content).shape == (60, 60, 3) for r in smalls)
    # all five were answered while the 4x job still had tiles waiting: they did not queue behind it
    assert not big_done_before and still_queued > 0
    assert big_answer.status_code == 200 and decode_bytes(big_answer.content).shape == (1920, 1920, 3)
    # each model's batches held exactly its own requests' tiles
    processed = {name: metric_total(after, "enhancer_tiles_processed_total", model=name) - metric_total(before, "enhancer_tiles_processed_total", model=name) for name in ("dejpeg", "upscale-x4")}
    assert processed == {"dejpeg": 5 * small_tiles, "upscale-x4": big_tiles}


# --- the pixel budget ----------------------------------------------------------------------------


class HeldModel:
    """A loaded model whose `forward` waits until the test lets it go (every answered tile still ran
    through the real model)."""

    def __init__(self, inner):
        import threading

        self.inner, self.spec, self.device, self.device_kind, self.precision = inner, inner.spec, inner.device, inner.device_kind, inner.precision
        self.gate, self.entered = threading.Event(), threading.Event()

    def forward(self, batch, inputs=None):
        self.entered.set()
        assert self.gate.wait(timeout=120), "the test never let the model go"
        return self.inner.forward(batch, inputs)

    def warm_up(self, shapes, max_batch_size):
        return self.inner.warm_up(shapes, max_batch_size)


async def test_an_upscale_is_charged_its_answer_s_pixels_in_the_budget(saved_model, upscalers):
    import asyncio

    held = HeldModel(upscalers[4])
    settings = upscale_settings(max_pixels_in_flight=200_000)

    async def in_flight(client) -> float:
        return metric_total((await client.get("/metrics")).text, "enhancer_pixels_in_flight")

    async with running_app(create_app(settings, models=serving(saved_model, held))) as client:
        job = asyncio.create_task(post(client, encode_bgr(photo_like(100, 90, seed=18), ".png"), "a.png", scale=4))
        assert await asyncio.to_thread(held.entered.wait, 60)  # its tiles are at the model, held there
        assert await in_flight(client) == 100 * 90 * 16  # 144,000: the answer's pixels, not the upload's 9,000
        # 60x60 asks for 3,600 px at 1x, which fits beside it (it waits for the model); at 4x 57,600, which does not
        waiting = asyncio.create_task(post(client, encode_bgr(photo_like(60, 60, seed=19), ".png"), "s.png"))
        while await in_flight(client) < 144_000 + 3_600:
            await asyncio.sleep(0.02)
        r = await post(client, encode_bgr(photo_like(60, 60, seed=19), ".png"), "s.png", scale=4)
        assert r.status_code == 503 and "ENHANCER_MAX_PIXELS_IN_FLIGHT" in r.json()["detail"], r.text
        assert "this image adds 0.0576 MP" in r.json()["detail"]
        held.gate.set()
        assert (await job).status_code == 200 and (await waiting).status_code == 200
        assert await in_flight(client) == 0
