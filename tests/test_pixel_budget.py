"""The budget on pixels in flight (issue 16, bug 1): the rule itself, then the app around the real
SavedModel. Uploads are charged from the header before decoding, refused with 503 + Retry-After
when they do not fit, and the charge returns on every way a request can end.

Where a request must be held at a chosen moment the real model is gated (`Gate`) or decoding is
held (`HeldDecode`); waits poll with bounds (`until`), nothing asserts how fast anything is.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading

import pytest
from helpers import WrappedModel, encode_bgr, make_settings, photo_like, running_app, serving, until

from enhancer import imaging
from enhancer import pixel_budget as budget_module
from enhancer.api import create_app
from enhancer.errors import PixelBudgetError
from enhancer.pixel_budget import (
    BYTES_PER_PIXEL,
    MEMORY_SHARE,
    PixelBudget,
    default_budget,
    memory_limit_bytes,
)

GiB = 2**30


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# --- the rule -----------------------------------------------------------------------------------


def test_uploads_are_admitted_up_to_the_budget_and_refused_beyond_it():
    budget = PixelBudget(100, Clock())
    first, second = budget.admit(60), budget.admit(40)
    assert budget.in_flight == 100
    with pytest.raises(PixelBudgetError) as refused:
        budget.admit(1)
    assert refused.value.status_code == 503
    assert refused.value.headers == {"Retry-After": "1"}  # nothing answered yet: nothing measured
    assert "ENHANCER_MAX_PIXELS_IN_FLIGHT" in refused.value.detail
    first.release()
    first.release()  # twice changes nothing: a charge is given back once
    assert budget.in_flight == 40
    budget.admit(60).release()
    second.release()
    assert budget.in_flight == 0


def test_an_image_larger_than_the_budget_is_served_when_nothing_else_is_in_flight():
    budget = PixelBudget(100, Clock())
    small = budget.admit(10)
    with pytest.raises(PixelBudgetError, match="served only when nothing else is in flight"):
        budget.admit(150)
    small.release()
    big = budget.admit(150)  # alone: admitted
    with pytest.raises(PixelBudgetError, match="150 MP|0.00015 MP"):  # and everything else waits for it
        budget.admit(1)
    big.release()
    assert budget.in_flight == 0


def test_retry_after_expects_uploads_in_flight_to_take_as_long_per_pixel_as_recent_ones():
    clock = Clock()
    budget = PixelBudget(100, clock)
    done = budget.admit(50)
    clock.now = 10.0
    done.release()  # 50 pixels held 10 s: 0.2 s a pixel
    clock.now = 20.0
    budget.admit(50)  # expected to end at 30
    clock.now = 22.0
    budget.admit(50)  # expected to end at 32
    clock.now = 25.0
    assert budget.retry_after_s(40) == pytest.approx(5.0)  # the first one's 50 make room
    assert budget.retry_after_s(60) == pytest.approx(7.0)  # both must end
    assert budget.retry_after_s(150) == pytest.approx(7.0)  # over the budget: everything must end
    with pytest.raises(PixelBudgetError) as refused:
        budget.admit(40)
    assert refused.value.headers["Retry-After"] == "5"
    clock.now = 40.0  # both overdue: a short wait, never zero or negative
    assert budget.retry_after_s(40) == budget_module.DEFAULT_RETRY_AFTER_S


def test_the_default_budget_fills_a_share_of_memory_at_the_measured_bytes_per_pixel():
    assert default_budget(24 * GiB) == int(24 * GiB * MEMORY_SHARE / BYTES_PER_PIXEL)
    assert default_budget(24 * GiB) > 50_000_000  # the largest image allowed fits on such a machine


def test_the_memory_limit_is_the_containers_when_it_is_below_the_machines(tmp_path, monkeypatch):
    monkeypatch.setattr(budget_module, "physical_memory_bytes", lambda: 64 * GiB)
    limit = tmp_path / "memory.max"
    limit.write_text("max\n")  # cgroup v2 without a limit
    assert memory_limit_bytes((str(limit),)) == 64 * GiB
    limit.write_text(f"{4 * GiB}\n")
    assert memory_limit_bytes((str(limit),)) == 4 * GiB
    limit.write_text("9223372036854771712\n")  # cgroup v1's "no limit"
    assert memory_limit_bytes((str(limit),)) == 64 * GiB
    assert memory_limit_bytes((str(tmp_path / "missing"),)) == 64 * GiB


# --- the app ------------------------------------------------------------------------------------

class Gate(WrappedModel):
    """The real model; while `closed`, a batch waits inside forward until the test opens it."""

    def __init__(self, inner):
        super().__init__(inner)
        self.closed = False
        self.failing = False
        self.opened = threading.Event()
        self.entered = threading.Event()

    def forward(self, batch, inputs=None):
        if self.closed:
            self.entered.set()
            assert self.opened.wait(timeout=120), "the test never opened the gate"
        if self.failing:
            raise RuntimeError("device fault (simulated)")
        return self.inner.forward(batch, inputs)

    def open(self):
        self.closed = False
        self.opened.set()


class HeldDecode:
    """Wraps imaging.decode: counts calls, and while `held` the worker thread waits inside it."""

    def __init__(self, monkeypatch):
        self.real = imaging.decode
        self.calls = 0
        self.held = False
        self.inside = threading.Event()
        self.release = threading.Event()
        monkeypatch.setattr(imaging, "decode", self)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.held:
            self.inside.set()
            assert self.release.wait(timeout=120), "the test never let decoding go on"
        return self.real(*args, **kwargs)


def png(height: int, width: int, seed: int = 0) -> bytes:
    return encode_bgr(photo_like(height, width, seed=seed), ".png")


def upload(data: bytes):
    return {"files": {"image": ("photo.png", data, "image/png")}}


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, name
    return float(match.group(1))


class LeavingClient:
    """An upload driven at the ASGI level whose client disconnects when `leave()` is called."""

    BOUNDARY = "b0undary"

    def __init__(self, app, data: bytes):
        body = (
            f'--{self.BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n\r\n'.encode()
            + data
            + f"\r\n--{self.BOUNDARY}--\r\n".encode()
        )
        self.gone = asyncio.Event()
        self.sent: list = []
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": "/upscale", "raw_path": b"/upscale", "root_path": "", "query_string": b"",
            "headers": [(b"content-type", f"multipart/form-data; boundary={self.BOUNDARY}".encode()),
                        (b"content-length", str(len(body)).encode())],
            "client": ("test", 1), "server": ("test", 80),
        }  # fmt: skip
        delivered = []

        async def receive():
            if not delivered:
                delivered.append(True)
                return {"type": "http.request", "body": body, "more_body": False}
            await self.gone.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            self.sent.append(message)

        self.call = asyncio.create_task(app(scope, receive, send))

    def leave(self):
        self.gone.set()


@pytest.mark.anyio
async def test_an_upload_that_does_not_fit_gets_503_before_it_is_decoded(saved_model, monkeypatch):
    model = Gate(saved_model)
    app = create_app(make_settings(max_pixels_in_flight=60_000), models=serving(model))
    decodes = HeldDecode(monkeypatch)
    async with running_app(app) as c:
        budget = app.state.runtime.pixel_budget
        model.closed = True
        try:
            held = asyncio.create_task(c.post("/upscale", **upload(png(200, 200))))  # 40,000 px
            await asyncio.to_thread(model.entered.wait, 60)
            assert budget.in_flight == 40_000
            text = (await c.get("/metrics")).text
            assert metric(text, "enhancer_pixels_in_flight") == 40_000
            assert metric(text, "enhancer_max_pixels_in_flight") == 60_000

            refused = await c.post("/upscale", **upload(png(150, 150, seed=1)))  # 22,500 px: over
            assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
            assert "ENHANCER_MAX_PIXELS_IN_FLIGHT" in refused.json()["detail"]
            assert decodes.calls == 1  # refused from its header: never decoded

            fits = asyncio.create_task(c.post("/upscale", **upload(png(100, 100, seed=2))))  # 10,000 px: fits
            await until(lambda: budget.in_flight == 50_000)
        finally:
            model.open()
        assert (await held).status_code == 200 and (await fits).status_code == 200
    assert budget.in_flight == 0
    assert decodes.calls == 2  # the refused one never was


@pytest.mark.anyio
async def test_an_image_larger_than_the_budget_is_served_alone(saved_model):
    model = Gate(saved_model)
    app = create_app(make_settings(max_pixels_in_flight=5_000), models=serving(model))
    async with running_app(app) as c:
        budget = app.state.runtime.pixel_budget
        model.closed = True
        try:
            big = asyncio.create_task(c.post("/upscale", **upload(png(100, 120))))  # 12,000 px > 5,000
            await asyncio.to_thread(model.entered.wait, 60)
            small = await c.post("/upscale", **upload(png(20, 20, seed=1)))
            assert small.status_code == 503  # everything else waits while it runs
        finally:
            model.open()
        assert (await big).status_code == 200
        assert budget.in_flight == 0
        assert (await c.post("/upscale", **upload(png(20, 20, seed=1)))).status_code == 200


@pytest.mark.anyio
async def test_over_the_image_limits_is_413_not_503_even_when_the_budget_is_full(saved_model):
    model = Gate(saved_model)
    app = create_app(make_settings(max_pixels_in_flight=5_000, max_pixels=20_000), models=serving(model))
    async with running_app(app) as c:
        model.closed = True
        try:
            held = asyncio.create_task(c.post("/upscale", **upload(png(60, 60))))
            await asyncio.to_thread(model.entered.wait, 60)
            r = await c.post("/upscale", **upload(png(150, 150, seed=1)))  # 22,500 px > max_pixels
            assert r.status_code == 413  # retrying would not help: say so, not "busy"
        finally:
            model.open()
        assert (await held).status_code == 200


@pytest.mark.anyio
async def test_the_charge_returns_on_every_way_a_request_ends(saved_model, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    model = Gate(saved_model)
    app = create_app(make_settings(max_pixels_in_flight=1_000_000), models=serving(model))
    decodes = HeldDecode(monkeypatch)
    async with running_app(app) as c:
        budget = app.state.runtime.pixel_budget

        async def settled():  # the gauge agrees with the budget once every request has ended
            await until(lambda: budget.in_flight == 0)
            assert metric((await c.get("/metrics")).text, "enhancer_pixels_in_flight") == 0

        assert (await c.post("/upscale", **upload(png(90, 70)))).status_code == 200
        await settled()

        corrupt = png(64, 64)[:300]  # the header is whole, so it is charged; the data is cut short
        assert (await c.post("/upscale", **upload(corrupt))).status_code == 400
        await settled()

        model.failing = True  # the model fails on the batch holding its tiles
        assert (await c.post("/upscale", **upload(png(40, 40)))).status_code == 500
        model.failing = False
        await settled()

        # the client leaves while its tiles are queued
        model.closed = True
        try:
            blocker = asyncio.create_task(c.post("/upscale", **upload(png(30, 30, seed=4))))
            await asyncio.to_thread(model.entered.wait, 60)
            caplog.clear()
            leaving = LeavingClient(app, png(200, 300, seed=5))  # 12 tiles of 128 px, all queued
            await until(lambda: app.state.runtime.batcher.queued_tiles >= 12)
            leaving.leave()
            await asyncio.wait_for(leaving.call, 60)
            assert budget.in_flight == 900  # only the blocker's
            assert "client left before its image was ready" in caplog.text
            assert re.search(r"its 12 queued tiles were dropped", caplog.text)
        finally:
            model.open()
        assert (await blocker).status_code == 200
        await settled()

        # the client leaves while its image is being decoded: no tiles exist, none are said dropped,
        # and the charge is held until the worker thread has let go of the pixels
        caplog.clear()
        decodes.held = True
        leaving = LeavingClient(app, png(120, 100, seed=6))
        await asyncio.to_thread(decodes.inside.wait, 60)
        leaving.leave()
        await asyncio.sleep(0.2)
        assert not leaving.call.done() and budget.in_flight == 12_000  # the thread still decodes
        decodes.release.set()
        await asyncio.wait_for(leaving.call, 60)
        await settled()
        assert "client left before its image was ready" in caplog.text
        assert "dropped" not in caplog.text


@pytest.mark.anyio
async def test_the_charge_returns_when_the_request_times_out(saved_model):
    model = Gate(saved_model)
    app = create_app(make_settings(request_timeout_s=2), models=serving(model))
    async with running_app(app) as c:
        budget = app.state.runtime.pixel_budget
        model.closed = True
        try:
            assert (await c.post("/upscale", **upload(png(40, 40)))).status_code == 504
            assert budget.in_flight == 0
        finally:
            model.open()
        assert metric((await c.get("/metrics")).text, "enhancer_pixels_in_flight") == 0
