"""The HTTP API end to end, in-process, on the real SavedModel from weights/dejpeg.

Where a test needs the model to be slow, blocked or failing at a chosen moment, the real model is
wrapped (`GatedModel`, `FailingModel`): every tile that is answered still went through the real
SavedModel.
"""

from __future__ import annotations

import asyncio
import re
import threading

import cv2
import numpy as np
import pytest
from helpers import (
    MODEL_DIR,
    WrappedModel,
    assert_documented,
    decode_bytes,
    encode_bgr,
    make_settings,
    photo_like,
    running_app,
    serving,
    until,
)

from enhancer import imaging, tiling
from enhancer.api import create_app
from enhancer.config import Settings
from enhancer.imaging import OutputFormat
from enhancer.samples import OUTPUT_DTYPE, dtype_for_depth

pytestmark = pytest.mark.anyio

TIMING_STAGES = ("decode", "queue", "infer", "encode")
MULTIPLE = 4  # the shipped model's size multiple (its spec)
DEJPEG = '{model="dejpeg"}'  # the label of the shipped model's inference metrics


class GatedModel(WrappedModel):
    """The real model, but `forward` (once armed) and/or warm-up wait until the test opens the gate."""

    def __init__(self, inner, *, gate_forward: bool = False, gate_warm_up: bool = False):
        super().__init__(inner)
        self.gate_forward = gate_forward
        self.gate_warm_up = gate_warm_up
        self.gate = threading.Event()
        self.entered = threading.Event()  # a batch is inside forward, waiting at the gate

    def forward(self, batch, inputs=None):
        if self.gate_forward and not self.gate.is_set():
            self.entered.set()
            assert self.gate.wait(timeout=120), "test never opened the gate"
        return self.inner.forward(batch, inputs)

    def warm_up(self, shapes, max_batch_size):
        if self.gate_warm_up:
            assert self.gate.wait(timeout=120), "test never opened the gate"
        return self.inner.warm_up(shapes, max_batch_size)

    async def wait_entered(self):
        assert await asyncio.to_thread(self.entered.wait, 60), "no batch reached the model"


class FailingModel(WrappedModel):
    """The real model, except that the next `fail_next` batches raise like a device fault would."""

    def __init__(self, inner):
        super().__init__(inner)
        self.fail_next = 0

    def forward(self, batch, inputs=None):
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("simulated device fault")
        return self.inner.forward(batch, inputs)


def upload(data: bytes, name: str = "photo.jpg", content_type: str = "application/octet-stream"):
    return {"image": (name, data, content_type)}


def expected_output(saved_model, data: bytes, fmt: OutputFormat, quality: int = 95, tile_size: int = 128):
    """What the service must answer: the same decode -> tiles -> model -> stitch -> encode path, with
    the model's outputs kept as 16-bit samples and stitched to the answer's depth, as the server does."""
    image = imaging.decode(data)
    plan = tiling.plan_tiles(image.info.height, image.info.width, tile_size, 32, multiple=MULTIPLE)
    outputs = tiling.run_in_batches(tiling.split(image.pixels, plan), saved_model.forward, 4, output_dtype=OUTPUT_DTYPE)
    rgb = tiling.stitch(outputs, plan, dtype=dtype_for_depth(imaging.answer_depth(fmt, image.info)))
    return decode_bytes(imaging.encode(rgb, fmt, quality=quality, info=image.info))


def assert_close_pixels(actual: np.ndarray, expected: np.ndarray):
    """Equal up to one 8-bit step (a tile's float result may depend on its batch's size)."""
    assert actual.shape == expected.shape
    diff = np.abs(actual.astype(np.int32) - expected.astype(np.int32))
    assert diff.max() <= 1 and diff.mean() < 0.01


def metric_value(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name}{labels} not in /metrics"
    return float(match.group(1))


@pytest.fixture(scope="module")
async def client(saved_model):
    """One app shared by the tests that neither count metrics nor need special settings."""
    async with running_app(create_app(make_settings(), models=serving(saved_model))) as c:
        yield c


@pytest.fixture
async def fresh_client(saved_model):
    """An app of its own, for tests that read counters."""
    async with running_app(create_app(make_settings(), models=serving(saved_model))) as c:
        yield c


# --- the happy path -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ext,in_fmt,out_fmt",
    [
        (".jpg", "jpeg", OutputFormat.png),
        (".png", "png", OutputFormat.png),
        (".webp", "webp", OutputFormat.png),
        (".jpg", "jpeg", OutputFormat.jpeg),
        (".png", "png", OutputFormat.webp),
    ],
)
async def test_formats_in_and_out(client, saved_model, ext, in_fmt, out_fmt):
    pixels = photo_like(150, 210, seed=11)
    data = encode_bgr(pixels, ext)
    params = {} if out_fmt is OutputFormat.png else {"format": out_fmt.value}
    r = await client.post("/upscale", params=params, files=upload(data, f"holiday photo{ext}"))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == f"image/{out_fmt.value}"
    assert imaging.sniff_format(r.content) == out_fmt.value
    assert r.headers["content-disposition"] == f'inline; filename="holiday_photo_enhanced.{out_fmt.extension}"'
    assert r.headers["x-enhancer-model"] == "dejpeg"  # the default model, as none was named
    timing = dict(re.findall(r"(\w+);dur=([\d.]+)", r.headers["server-timing"]))
    assert set(TIMING_STAGES) <= set(timing)
    out = decode_bytes(r.content)
    assert out.shape[:2] == (150, 210)
    assert_close_pixels(out, expected_output(saved_model, data, out_fmt))


async def test_quality_changes_lossy_answers(client):
    data = encode_bgr(photo_like(120, 120, seed=12), ".png")
    low = await client.post("/upscale", params={"format": "jpeg", "quality": 5}, files=upload(data))
    high = await client.post("/upscale", params={"format": "jpeg", "quality": 100}, files=upload(data))
    assert low.status_code == high.status_code == 200
    assert len(low.content) < len(high.content)


async def test_grey_and_transparent_images_keep_their_channels(client):
    grey = photo_like(70, 90, seed=13, channels=1)[:, :, 0]
    r = await client.post("/upscale", files=upload(encode_bgr(grey, ".png"), "g.png"))
    assert r.status_code == 200 and decode_bytes(r.content).shape == (70, 90)

    bgra = photo_like(70, 90, seed=14, channels=4)
    r = await client.post("/upscale", files=upload(encode_bgr(bgra, ".png"), "a.png"))
    assert r.status_code == 200
    out = decode_bytes(r.content)
    assert out.shape == (70, 90, 4)
    np.testing.assert_array_equal(out[:, :, 3], bgra[:, :, 3])


async def test_unsafe_filenames_are_sanitised(client):
    data = encode_bgr(photo_like(20, 20), ".png")
    r = await client.post("/upscale", files=upload(data, "../../etc/my photo (1);.png"))
    assert r.status_code == 200
    assert r.headers["content-disposition"] == 'inline; filename="my_photo_1_enhanced.png"'


@pytest.mark.parametrize(
    "name,disposition",
    [
        ("фото.jpg", "inline; filename=\"image_enhanced.png\"; filename*=UTF-8''%D1%84%D0%BE%D1%82%D0%BE_enhanced.png"),
        ("café 2.jpg", "inline; filename=\"cafe_2_enhanced.png\"; filename*=UTF-8''caf%C3%A9_2_enhanced.png"),
        ("写真 #1.jpg", "inline; filename=\"1_enhanced.png\"; filename*=UTF-8''%E5%86%99%E7%9C%9F_1_enhanced.png"),
    ],
)
async def test_non_ascii_filenames_are_kept_beside_an_ascii_fallback(client, name, disposition):
    data = encode_bgr(photo_like(20, 20), ".png")
    r = await client.post("/upscale", files=upload(data, name))
    assert r.status_code == 200
    assert r.headers["content-disposition"] == disposition


@pytest.mark.parametrize(
    "asked,media_type,extension", [("jpg", "image/jpeg", "jpg"), ("JPEG", "image/jpeg", "jpg"), ("PNG", "image/png", "png"), ("WebP", "image/webp", "webp")]
)
async def test_format_names_in_any_case_and_jpg(client, asked, media_type, extension):
    data = encode_bgr(photo_like(20, 20), ".png")
    r = await client.post("/upscale", params={"format": asked}, files=upload(data, "a.png"))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == media_type
    assert r.headers["content-disposition"] == f'inline; filename="a_enhanced.{extension}"'
    assert decode_bytes(r.content).shape[:2] == (20, 20)


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/"])
async def test_head_is_answered_like_get(client, path):
    get, head = await client.get(path), await client.head(path)
    assert head.status_code == get.status_code == 200
    assert head.headers["content-type"] == get.headers["content-type"]


# --- errors -------------------------------------------------------------------------------------


async def test_400_for_a_corrupt_image(client):
    data = encode_bgr(photo_like(64, 64), ".png")[:100]
    r = await client.post("/upscale", files=upload(data, "broken.png"))
    assert r.status_code == 400
    assert "could not be decoded" in r.json()["detail"]


async def test_400_for_an_empty_file(client):
    r = await client.post("/upscale", files=upload(b"", "empty.jpg"))
    assert r.status_code == 400
    assert "empty" in r.json()["detail"]


@pytest.mark.parametrize(
    "data,start",
    [
        (b"just some text", "the upload is not a supported image"),
        (b"GIF89a\x01\x00\x01\x00\x80\x00\x00", "the upload is a GIF file, which is not supported"),
    ],
)
async def test_415_for_unsupported_types(client, data, start):
    r = await client.post("/upscale", files=upload(data, "thing.jpg", "image/jpeg"))
    assert r.status_code == 415
    assert r.json() == {"detail": f"{start}; send JPEG, PNG, WebP, BMP or TIFF"}


async def test_413_for_too_many_pixels(saved_model):
    app = create_app(make_settings(max_pixels=10_000), models=serving(saved_model))
    async with running_app(app) as c:
        r = await c.post("/upscale", files=upload(encode_bgr(photo_like(100, 101), ".png")))
        assert r.status_code == 413
        assert "10,100 pixels" in r.json()["detail"] and "10,000 pixel limit" in r.json()["detail"]
        ok = await c.post("/upscale", files=upload(encode_bgr(photo_like(100, 100), ".png")))
        assert ok.status_code == 200


@pytest.fixture
async def small_upload_client(saved_model):
    app = create_app(make_settings(max_upload_bytes=100_000), models=serving(saved_model))
    async with running_app(app) as c:
        yield c


def _incompressible(size: int) -> bytes:
    """PNG-looking bytes of an exact size (the size check comes before decoding)."""
    return b"\x89PNG\r\n\x1a\n" + np.random.default_rng(0).integers(0, 256, size - 8, dtype=np.uint8).tobytes()


async def test_413_when_content_length_is_over_the_limit(small_upload_client):
    r = await small_upload_client.post("/upscale", files=upload(_incompressible(400_000)))
    assert r.status_code == 413
    assert "100,000 byte limit" in r.json()["detail"]
    assert_documented((await small_upload_client.get("/openapi.json")).json(), 413, r.json()["detail"])


async def test_413_when_a_streamed_body_passes_the_limit(small_upload_client):
    """No Content-Length (chunked upload): the limit is enforced while the bytes arrive."""
    boundary = "enhancer-test-boundary"
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\n"
        "Content-Type: image/png\r\n\r\n"
    ).encode() + _incompressible(400_000) + f"\r\n--{boundary}--\r\n".encode()

    async def chunks():
        for start in range(0, len(body), 16_384):
            yield body[start : start + 16_384]

    r = await small_upload_client.post(
        "/upscale", content=chunks(), headers={"content-type": f"multipart/form-data; boundary={boundary}"}
    )
    assert "content-length" not in r.request.headers
    assert r.status_code == 413
    assert "100,000 byte limit" in r.json()["detail"]


async def test_413_when_the_file_alone_is_over_the_limit(small_upload_client):
    """Just over the limit: the body fits the multipart allowance, the file itself does not."""
    r = await small_upload_client.post("/upscale", files=upload(_incompressible(100_001)))
    assert r.status_code == 413
    assert "100,001 bytes" in r.json()["detail"]
    at_limit = await small_upload_client.post("/upscale", files=upload(_incompressible(100_000)))
    assert at_limit.status_code == 400  # accepted by the size check, then found undecodable


@pytest.mark.parametrize(
    "request_kwargs,fragment",
    [
        ({"data": {"other": "x"}, "files": {"notes": ("n.txt", b"x", "text/plain")}}, "form field 'image': is required"),
        ({"files": {"picture": ("a.png", b"x", "image/png")}}, "form field 'image': is required"),
        (
            {"data": {"image": "photo.jpg"}, "files": {"notes": ("n.txt", b"x", "text/plain")}},
            "form field 'image': must be a file upload, not a text value",
        ),
        ({"params": {"format": "gif"}}, "query parameter 'format': Input should be 'png', 'jpeg' or 'webp'"),
        ({"params": {"quality": 0}}, "query parameter 'quality': Input should be greater than or equal to 1"),
        ({"params": {"quality": 101}}, "query parameter 'quality': Input should be less than or equal to 100"),
        ({"params": {"quality": "high"}}, "query parameter 'quality': Input should be a valid integer"),
        ({"params": {"model": "nope"}}, "query parameter 'model': unknown model 'nope'; this server serves: dejpeg"),
    ],
)
async def test_422_for_missing_field_and_bad_parameters(client, request_kwargs, fragment):
    kwargs = {"files": upload(encode_bgr(photo_like(16, 16), ".png"))} | request_kwargs
    r = await client.post("/upscale", **kwargs)
    assert r.status_code == 422
    assert fragment in r.json()["detail"]
    assert isinstance(r.json()["detail"], str)


async def test_500_when_a_batch_fails_and_the_next_request_still_works(saved_model):
    model = FailingModel(saved_model)
    async with running_app(create_app(make_settings(), models=serving(model))) as c:
        data = encode_bgr(photo_like(60, 60, seed=15), ".png")
        model.fail_next = 1
        r = await c.post("/upscale", files=upload(data))
        assert r.status_code == 500
        detail = r.json()["detail"]
        assert "model failed while processing this image (RuntimeError)" in detail
        assert "retrying may succeed" in detail
        assert_documented((await c.get("/openapi.json")).json(), 500, detail)
        assert (await c.get("/healthz")).json() == {"status": "degraded"}

        again = await c.post("/upscale", files=upload(data))
        assert again.status_code == 200
        assert (await c.get("/healthz")).json() == {"status": "ok"}
        assert (await c.get("/readyz")).status_code == 200


async def test_503_with_retry_after_when_the_queue_is_full(saved_model):
    model = GatedModel(saved_model)
    settings = make_settings(max_queue_tiles=2)
    one_tile = encode_bgr(photo_like(60, 60, seed=16), ".png")
    two_tiles = encode_bgr(photo_like(60, 150, seed=17), ".png")
    assert tiling.plan_tiles(60, 150, settings.tile_size, settings.tile_overlap, multiple=MULTIPLE).num_tiles == 2
    app = create_app(settings, models=serving(model))
    async with running_app(app) as c:
        batcher = app.state.runtime.batcher
        model.gate_forward = True
        try:
            first = asyncio.create_task(c.post("/upscale", files=upload(one_tile)))
            await model.wait_entered()  # its tile is inside the model, the queue is empty
            second = asyncio.create_task(c.post("/upscale", files=upload(two_tiles)))
            await until(lambda: batcher.queued_tiles >= 2)  # the second request fills the queue
            r = await c.post("/upscale", files=upload(one_tile))
            assert r.status_code == 503
            assert int(r.headers["retry-after"]) >= 1
            assert "the server is busy" in r.json()["detail"]
            assert_documented((await c.get("/openapi.json")).json(), 503, r.json()["detail"])
        finally:
            model.gate.set()
        assert (await first).status_code == 200
        assert (await second).status_code == 200


async def test_504_when_the_request_waits_too_long(saved_model):
    model = GatedModel(saved_model)
    app = create_app(make_settings(request_timeout_s=0.5), models=serving(model))
    async with running_app(app) as c:
        model.gate_forward = True
        try:
            r = await c.post("/upscale", files=upload(encode_bgr(photo_like(60, 60), ".png")))
        finally:
            model.gate.set()
        assert r.status_code == 504
        assert "within 0.5 s (ENHANCER_REQUEST_TIMEOUT_S)" in r.json()["detail"]
        assert_documented((await c.get("/openapi.json")).json(), 504, r.json()["detail"])
        ok = await c.post("/upscale", files=upload(encode_bgr(photo_like(60, 60), ".png")))
        assert ok.status_code == 200  # the stuck batch finished and the worker kept going


async def test_a_timed_out_request_has_its_queued_tiles_dropped(saved_model):
    model = GatedModel(saved_model)
    app = create_app(make_settings(request_timeout_s=1.0), models=serving(model))
    async with running_app(app) as c:
        model.gate_forward = True
        try:
            blocker = asyncio.create_task(c.post("/upscale", files=upload(encode_bgr(photo_like(60, 60), ".png"))))
            await model.wait_entered()
            r = await c.post("/upscale", files=upload(encode_bgr(photo_like(200, 300), ".png")))  # 12 tiles, queued
            assert r.status_code == 504
            assert app.state.runtime.batcher.queued_tiles == 0
        finally:
            model.gate.set()
        assert (await blocker).status_code == 504
        metrics = (await c.get("/metrics")).text
        assert metric_value(metrics, "enhancer_tiles_dropped_total", DEJPEG) == 12


async def test_client_disconnect_drops_its_queued_tiles(saved_model):
    """Driven at the ASGI level: the client sends its upload, then goes away while queued."""
    model = GatedModel(saved_model)
    app = create_app(make_settings(), models=serving(model))
    async with running_app(app) as c:
        model.gate_forward = True
        try:
            blocker = asyncio.create_task(c.post("/upscale", files=upload(encode_bgr(photo_like(60, 60), ".png"))))
            await model.wait_entered()

            boundary = "b0undary"
            body = (
                f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n\r\n'.encode()
                + encode_bgr(photo_like(200, 300, seed=3), ".png")
                + f"\r\n--{boundary}--\r\n".encode()
            )
            gone = asyncio.Event()
            sent = []

            async def receive():
                if not sent:
                    sent.append(True)
                    return {"type": "http.request", "body": body, "more_body": False}
                await gone.wait()
                return {"type": "http.disconnect"}

            async def send(message):
                sent.append(message)

            scope = {
                "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                "scheme": "http", "path": "/upscale", "raw_path": b"/upscale", "root_path": "", "query_string": b"",
                "headers": [(b"content-type", f"multipart/form-data; boundary={boundary}".encode()),
                            (b"content-length", str(len(body)).encode())],
                "client": ("test", 1), "server": ("test", 80),
            }
            call = asyncio.create_task(app(scope, receive, send))
            batcher = app.state.runtime.batcher
            await until(lambda: batcher.queued_tiles >= 12)
            gone.set()
            await asyncio.wait_for(call, 30)
            assert batcher.queued_tiles == 0
        finally:
            model.gate.set()
        assert (await blocker).status_code == 200
        metrics = (await c.get("/metrics")).text
        assert metric_value(metrics, "enhancer_tiles_dropped_total", DEJPEG) == 12
        assert metric_value(metrics, "enhancer_tiles_processed_total", DEJPEG) == 1  # only the blocker's tile ran


# --- readiness, health, metrics, docs --------------------------------------------------------------


async def test_readyz_is_503_until_warm_up_finishes(saved_model):
    model = GatedModel(saved_model, gate_warm_up=True)
    app = create_app(make_settings(), models=serving(model))
    async with running_app(app, wait_ready=False) as c:
        try:
            r = await c.get("/readyz")
            assert r.status_code == 503
            assert "warming up" in r.json()["detail"] and "retry-after" in r.headers
            assert (await c.get("/healthz")).status_code == 200  # alive while warming up
            busy = await c.post("/upscale", files=upload(encode_bgr(photo_like(20, 20), ".png")))
            assert busy.status_code == 503 and "warming up" in busy.json()["detail"]
            assert metric_value((await c.get("/metrics")).text, "enhancer_ready") == 0
        finally:
            model.gate.set()
        await asyncio.wait_for(app.state.runtime.wait_ready(), 120)
        r = await c.get("/readyz")
        assert r.status_code == 200
        assert r.json() == {
            "status": "ready",
            "device": saved_model.device,
            "precision": saved_model.precision,
            "models": [{"name": "dejpeg", "scale": 1, "default": True, "tile_size": 128, "tile_overlap": 32,
                        "solo_tile_size": None, "precision": saved_model.precision}],
            "settings": {
                "tile_size": 128,
                "tile_overlap": 32,
                "solo_tile_size": 0,
                "max_batch_size": 4,
                "max_batch_delay_ms": 2.0,
                "batches_in_flight": 1,
                "max_queue_tiles": 512,
                "request_timeout_s": 120.0,
                "xla": False,
            },
        }
        assert metric_value((await c.get("/metrics")).text, "enhancer_ready") == 1


async def test_readyz_reports_the_settings_resolved_for_the_device_not_the_unset_ones(saved_model):
    """What a benchmark records: the device's defaults where nothing was set (here a model that
    says it runs on a GPU: tile 1024, batch 8, two batches in flight), the set value where one was."""

    class OnGpu(WrappedModel):
        def __init__(self, inner):
            super().__init__(inner)
            self.device_kind = "gpu"

        def warm_up(self, shapes, max_batch_size):
            pass  # nothing runs here: only the settings are read

    settings = Settings(_env_file=None, model_dir=MODEL_DIR, tile_overlap=40, max_batch_delay_ms=7, precision="float32")
    app = create_app(settings, models=serving(OnGpu(saved_model)))
    async with running_app(app) as c:
        served = (await c.get("/readyz")).json()["settings"]
    assert (served["tile_size"], served["max_batch_size"], served["batches_in_flight"]) == (1024, 8, 2)
    assert served["solo_tile_size"] == 0  # off on a GPU
    assert (served["tile_overlap"], served["max_batch_delay_ms"]) == (40, 7.0)


async def test_an_image_alone_runs_as_one_solo_tile_and_answers_as_normal_tiles_do(saved_model):
    """Batch 1 and exact shapes (the CPU defaults) with a solo tile edge: the lone upload runs as
    one 224 px tile instead of 128 px ones, warm-up ran that tile, /readyz says so, and the answer
    is the normal tiles' within one 8-bit step (the seam bound)."""

    class Recording(WrappedModel):
        def __init__(self, inner):
            super().__init__(inner)
            self.shapes, self.warmed = [], []

        def forward(self, batch, inputs=None):
            self.shapes.append(batch.shape)
            return super().forward(batch, inputs)

        def warm_up(self, shapes, max_batch_size):
            self.warmed.append(list(shapes))
            return self.inner.warm_up(shapes, max_batch_size)

    model = Recording(saved_model)
    app = create_app(make_settings(max_batch_size=1, solo_tile_size=224), models=serving(model))
    data = encode_bgr(photo_like(150, 140, seed=4), ".png")
    async with running_app(app) as c:
        ready = (await c.get("/readyz")).json()
        model.shapes.clear()
        r = await c.post("/upscale?format=png", files=upload(data))
    assert (ready["models"][0]["solo_tile_size"], ready["settings"]["solo_tile_size"]) == (224, 224)
    assert model.warmed == [[(224, 224)]]
    assert r.status_code == 200
    solo = tiling.plan_tiles(150, 140, 224, 32, multiple=MULTIPLE, context=32, buckets=False)
    normal = tiling.plan_tiles(150, 140, 128, 32, multiple=MULTIPLE, context=32, buckets=False)
    assert solo.num_tiles == 1 < normal.num_tiles
    assert [shape[1:3] for shape in model.shapes] == [solo.tile_shape]
    answer = decode_bytes(r.content).astype(np.int32)
    assert np.abs(answer - expected_output(saved_model, data, OutputFormat.png)).max() <= 1


async def test_failed_warm_up_keeps_the_service_unready_and_unhealthy(saved_model):
    class BrokenWarmUp(FailingModel):
        def warm_up(self, shapes, max_batch_size):
            raise MemoryError("batch does not fit")

    app = create_app(make_settings(), models=serving(BrokenWarmUp(saved_model)))
    async with running_app(app, wait_ready=False) as c:
        with pytest.raises(RuntimeError, match="warm-up failed"):
            await asyncio.wait_for(app.state.runtime.wait_ready(), 60)
        for path in ("/readyz", "/healthz"):
            r = await c.get(path)
            assert r.status_code == 503 and "batch does not fit" in r.json()["detail"]


async def test_metrics_after_a_request(fresh_client):
    client = fresh_client
    data = encode_bgr(photo_like(200, 300, seed=18), ".png")
    tiles = tiling.plan_tiles(200, 300, 128, 32, multiple=MULTIPLE).num_tiles
    assert (await client.post("/upscale", files=upload(data))).status_code == 200
    assert (await client.post("/upscale", files=upload(b"nope"))).status_code == 415
    r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert metric_value(text, "enhancer_http_requests_total", '{method="POST",route="/upscale",status="200"}') == 1
    assert metric_value(text, "enhancer_http_requests_total", '{method="POST",route="/upscale",status="415"}') == 1
    assert metric_value(text, "enhancer_tiles_processed_total", DEJPEG) == tiles
    assert metric_value(text, "enhancer_batch_size_tiles_sum", DEJPEG) == tiles
    assert metric_value(text, "enhancer_batch_size_tiles_count", DEJPEG) == -(-tiles // 4)  # batches of 4
    assert metric_value(text, "enhancer_queue_wait_seconds_count", DEJPEG) == 1
    assert metric_value(text, "enhancer_inference_seconds_count", DEJPEG) == -(-tiles // 4)
    assert metric_value(text, "enhancer_queue_depth_tiles") == 0
    for stage in TIMING_STAGES:
        assert metric_value(text, "enhancer_stage_duration_seconds_count", f'{{stage="{stage}"}}') == 1


async def test_refusals_before_routing_are_counted_under_the_upload_route(saved_model):
    """The upload checks answer 415, 400, 413 and 408 in middleware, some before the router runs."""
    app = create_app(make_settings(max_upload_bytes=100_000, request_read_timeout_s=0.5), models=serving(saved_model))

    async def stalled():
        yield b"--b\r\n"
        await asyncio.sleep(3)  # well past the 0.5 s read deadline
        yield b"never sent"

    async with running_app(app) as c:
        assert (await c.post("/upscale", content=b"x", headers={"content-type": "text/plain"})).status_code == 415
        assert (await c.post("/upscale", content=b"x", headers={"content-type": "multipart/form-data"})).status_code == 400
        assert (await c.post("/upscale", files=upload(_incompressible(400_000)))).status_code == 413
        r = await c.post("/upscale", content=stalled(), headers={"content-type": "multipart/form-data; boundary=b"})
        assert r.status_code == 408
        text = (await c.get("/metrics")).text
    for status in (400, 408, 413, 415):
        labels = f'{{method="POST",route="/upscale",status="{status}"}}'
        assert metric_value(text, "enhancer_http_requests_total", labels) == 1, status
    assert "<unmatched>" not in text


async def test_good_jpegs_are_passed_through_and_damaged_ones_enhanced(saved_model):
    from enhancer.config import Settings

    default = Settings.model_fields["pass_through_jpeg_quality"].default
    app = create_app(make_settings(pass_through_jpeg_quality=default), models=serving(saved_model))
    pixels = photo_like(90, 120, seed=19)
    async with running_app(app) as c:
        good = encode_bgr(pixels, ".jpg", cv2.IMWRITE_JPEG_QUALITY, default)
        r = await c.post("/upscale", files=upload(good))
        assert r.status_code == 200
        assert r.headers["x-enhancer-passed-through"] == f"jpeg-quality={default}"
        # Its own decoded pixels, exactly, and no tile went to the model.
        assert np.array_equal(decode_bytes(r.content), decode_bytes(encode_bgr(decode_bytes(good), ".png")))
        assert "infer;dur=0.0" in r.headers["server-timing"]

        damaged = encode_bgr(pixels, ".jpg", cv2.IMWRITE_JPEG_QUALITY, default - 1)
        r = await c.post("/upscale", files=upload(damaged))
        assert r.status_code == 200 and "x-enhancer-passed-through" not in r.headers
        assert_close_pixels(decode_bytes(r.content), expected_output(saved_model, damaged, OutputFormat.png))

        text = (await c.get("/metrics")).text
        assert metric_value(text, "enhancer_images_passed_through_total") == 1
        assert metric_value(text, "enhancer_tiles_processed_total", DEJPEG) == tiling.plan_tiles(
            90, 120, 128, 32, multiple=MULTIPLE
        ).num_tiles


async def test_separate_apps_have_separate_metrics(saved_model):
    one, two = (create_app(make_settings(), models=serving(saved_model)) for _ in range(2))
    async with running_app(one) as c1, running_app(two) as c2:
        await c1.get("/healthz")
        assert 'route="/healthz"' in (await c1.get("/metrics")).text
        assert 'route="/healthz"' not in (await c2.get("/metrics")).text


async def test_openapi_declares_a_file_upload_and_docs_are_served(client):
    spec = (await client.get("/openapi.json")).json()
    op = spec["paths"]["/upscale"]["post"]
    form = op["requestBody"]["content"]["multipart/form-data"]["schema"]
    schema = spec["components"]["schemas"][form["$ref"].split("/")[-1]] if "$ref" in form else form
    image = schema["properties"]["image"]
    assert image.get("format") == "binary" or image.get("contentMediaType") == "application/octet-stream"
    assert schema["required"] == ["image"]
    assert {p["name"] for p in op["parameters"]} == {"format", "quality", "model", "strength", "scale"}
    assert {"200", "400", "408", "413", "415", "422", "500", "503", "504"} <= set(op["responses"])
    assert set(op["responses"]["200"]["content"]) == {"image/png", "image/jpeg", "image/webp"}
    docs = await client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_pages_load_nothing_from_elsewhere(client, page):
    html = (await client.get(page)).text
    urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)""", html) + re.findall(r"""url\s*:\s*['"]([^'"]+)""", html)
    urls += re.findall(r"""spec-url=["']([^"']+)""", html)
    assert urls and "//" not in "".join(urls), urls  # every script, style, icon and font is on this server
    for url in urls:
        r = await client.get(url)
        assert r.status_code == 200, url
    assert any(url.endswith(".js") for url in urls) and any(url.startswith("/openapi.json") for url in urls)


async def test_index_page_is_served_from_the_package(client):
    from importlib import resources

    r = await client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = resources.files("enhancer") / "static" / "index.html"
    if page.is_file():
        assert r.text == page.read_text(encoding="utf-8")
        asset = next(p.name for p in (resources.files("enhancer") / "static").iterdir() if p.name != "index.html")
        assert (await client.get(f"/static/{asset}")).status_code == 200
    else:
        assert 'href="/docs"' in r.text


# --- concurrency --------------------------------------------------------------------------------


async def test_40_concurrent_requests_each_get_their_own_result(fresh_client):
    """Tiles of many requests share batches; every answer must still be that image's own result."""
    sizes = [(20, 20), (60, 60), (60, 200), (100, 100), (150, 210), (200, 300), (90, 130), (33, 47)]
    exts = [".png", ".jpg", ".webp"]
    uploads = []
    for i in range(40):
        h, w = sizes[i % len(sizes)]
        uploads.append(encode_bgr(photo_like(h, w, seed=100 + i), exts[i % len(exts)]))

    alone = []
    for data in uploads:
        r = await fresh_client.post("/upscale", files=upload(data))
        assert r.status_code == 200
        alone.append(decode_bytes(r.content))

    client = fresh_client
    before = metric_value((await client.get("/metrics")).text, "enhancer_batch_size_tiles_count", DEJPEG)
    together = await asyncio.gather(*(client.post("/upscale", files=upload(d)) for d in uploads))
    batches = metric_value((await client.get("/metrics")).text, "enhancer_batch_size_tiles_count", DEJPEG) - before
    own_batches = sum(
        -(-tiling.plan_tiles(*sizes[i % len(sizes)], 128, 32, multiple=MULTIPLE).num_tiles // 4) for i in range(40)
    )
    assert batches < own_batches  # requests really shared batches
    for i, r in enumerate(together):
        assert r.status_code == 200, r.text
        assert_close_pixels(decode_bytes(r.content), alone[i])
    # Same-sized images differ, so an answer carrying another request's tiles could not pass.
    assert np.abs(alone[0].astype(int) - alone[8].astype(int)).mean() > 5


async def test_two_batches_in_flight_give_every_request_its_own_result(client, saved_model):
    """The GPU default (the next batch stacked while the model runs one) on the real SavedModel."""
    sizes = [(60, 200), (150, 210), (33, 47), (200, 300)]
    uploads = [encode_bgr(photo_like(*sizes[i % len(sizes)], seed=300 + i), ".png") for i in range(12)]
    alone = []
    for data in uploads:  # the shared app: one batch in flight
        r = await client.post("/upscale", files=upload(data))
        assert r.status_code == 200
        alone.append(decode_bytes(r.content))
    app = create_app(make_settings(batches_in_flight=2, max_batch_size=2), models=serving(saved_model))
    async with running_app(app) as pipelined:
        assert app.state.runtime.batcher.batches_in_flight == 2
        together = await asyncio.gather(*(pipelined.post("/upscale", files=upload(d)) for d in uploads))
    for i, r in enumerate(together):
        assert r.status_code == 200, r.text
        assert_close_pixels(decode_bytes(r.content), alone[i])
