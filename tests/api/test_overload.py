"""Overload, a model that cannot run, and the shutdown drain, in-process on the real SavedModel.

The real model is wrapped where a test must hold a batch inside it (`Gate`) or make it fail
(`Faulty`); every answered tile still went through the SavedModel. No assertion depends on timing:
waits poll a condition with the bounded `until`, so a hang fails the test.
"""

from __future__ import annotations

import asyncio
import re
import threading

import pytest
from helpers import WrappedModel, decode_bytes, encode_bgr, make_settings, photo_like, running_app, serving, until

from enhancer import runtime as runtime_module
from enhancer.api import create_app
from enhancer.runtime import ServingState

pytestmark = pytest.mark.anyio


class Gate(WrappedModel):
    """The real model; while `closed`, a batch waits inside forward until the test opens it."""

    def __init__(self, inner):
        super().__init__(inner)
        self.closed = False
        self.opened = threading.Event()
        self.held = 0  # tiles of the batch waiting at the gate

    def forward(self, batch, inputs=None):
        if self.closed:
            self.held = len(batch)
            assert self.opened.wait(timeout=120), "the test never opened the gate"
            self.held = 0
        return self.inner.forward(batch, inputs)

    def open(self):
        self.closed = False
        self.opened.set()


class Faulty(WrappedModel):
    """The real model, except while `broken`: then every batch raises like a device fault."""

    def __init__(self, inner):
        super().__init__(inner)
        self.broken = False

    def forward(self, batch, inputs=None):
        if self.broken:
            raise RuntimeError("CUDA out of memory (simulated)")
        return self.inner.forward(batch, inputs)


def upload(data: bytes):
    return {"files": {"image": ("photo.png", data, "image/png")}}


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, name
    return float(match.group(1))


# --- flood -------------------------------------------------------------------------------------


async def test_flood_of_four_times_the_queue_ends_in_200_or_503_with_retry_after(saved_model):
    queue = 8
    model = Gate(saved_model)
    app = create_app(make_settings(max_queue_tiles=queue, max_batch_size=4), models=serving(model))
    one_tile = encode_bgr(photo_like(60, 60, seed=40), ".png")  # one 64 px tile at tile size 128
    async with running_app(app) as c:
        batcher = app.state.runtime.batcher
        model.closed = True
        try:
            tasks = [asyncio.create_task(c.post("/upscale", **upload(one_tile))) for _ in range(4 * queue)]
            # every request is either refused already, waiting in the queue, or in the held batch
            await until(lambda: sum(t.done() for t in tasks) + batcher.queued_tiles + model.held == 4 * queue)
            # The held batch closed at 4 tiles or at its deadline, whichever came first (under load,
            # fewer than 4 requests may have been decoded by then). Under load it may also have
            # taken tiles from the queue after the queue had filled and refused others, so what is
            # left queued is the limit less those: the queue did fill, and never held more.
            held, queued = model.held, batcher.queued_tiles
            assert 1 <= held <= 4
            assert queue - held <= queued <= queue

            # the operations endpoints answer while the queue is full
            assert (await c.get("/healthz")).status_code == 200
            assert (await c.get("/readyz")).status_code == 200
            metrics = await c.get("/metrics")
            assert metrics.status_code == 200
            assert metric(metrics.text, "enhancer_queue_depth_tiles") == queued
        finally:
            model.open()
        answers = await asyncio.wait_for(asyncio.gather(*tasks), 120)  # none hangs

        statuses = [r.status_code for r in answers]
        assert set(statuses) <= {200, 503}
        assert statuses.count(200) == queued + held  # the queue plus the batch that was in the model
        for r in answers:
            if r.status_code == 503:
                assert int(r.headers["retry-after"]) >= 1
                assert re.fullmatch(
                    r"the server is busy: 8 tiles are queued \(limit 8\) and this image needs 1; "
                    r"retry in about [\d.]+ s",
                    r.json()["detail"],
                )
            else:
                assert decode_bytes(r.content).shape == (60, 60, 3)

        assert (await c.get("/readyz")).status_code == 200  # ready afterwards
        assert batcher.queued_tiles == 0
        assert (await c.post("/upscale", **upload(one_tile))).status_code == 200


# --- a model that cannot run --------------------------------------------------------------------


async def test_failed_batches_fail_only_their_requests_then_readyz_reflects_the_model(saved_model, monkeypatch):
    model = Faulty(saved_model)
    app = create_app(make_settings(), models=serving(model))
    one_tile = encode_bgr(photo_like(40, 40, seed=41), ".png")
    async with running_app(app) as c:
        runtime = app.state.runtime
        runtime.probe_interval_s = 3600  # no probe yet: first show that real requests stay refused
        model.broken = True
        for attempt in range(runtime_module.FAILED_BATCHES_UNREADY):
            assert (await c.get("/readyz")).status_code == 200  # not yet: fewer failures in a row
            r = await c.post("/upscale", **upload(one_tile))
            assert r.status_code == 500
            assert r.json()["detail"].startswith("the model failed while processing this image (RuntimeError)")

        r = await c.get("/readyz")
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
        assert r.json()["detail"] == (
            "the model cannot run: its last 3 batches failed (RuntimeError: CUDA out of memory "
            "(simulated)); a probe batch retries every 3600 s, see the server log"
        )
        assert (await c.get("/healthz")).json() == {"status": "degraded"}  # alive: no restart
        assert metric((await c.get("/metrics")).text, "enhancer_ready") == 0

        # the device recovers; a real request (still accepted while unready) proves it
        model.broken = False
        assert (await c.post("/upscale", **upload(one_tile))).status_code == 200
        assert (await c.get("/readyz")).status_code == 200
        assert metric((await c.get("/metrics")).text, "enhancer_ready") == 1


async def test_the_probe_batch_makes_an_idle_replica_ready_again(saved_model):
    model = Faulty(saved_model)
    app = create_app(make_settings(), models=serving(model))
    async with running_app(app) as c:
        runtime = app.state.runtime
        runtime.probe_interval_s = 0.05
        model.broken = True
        one_tile = encode_bgr(photo_like(40, 40, seed=42), ".png")
        for _ in range(runtime_module.FAILED_BATCHES_UNREADY):
            assert (await c.post("/upscale", **upload(one_tile))).status_code == 500
        assert runtime.state is ServingState.DEGRADED and runtime.lifecycle.models_failing
        assert (await c.get("/readyz")).status_code == 503
        model.broken = False  # no traffic comes (the load balancer took us out): the probe notices
        await until(lambda: runtime.state is ServingState.READY)
        assert (await c.get("/readyz")).status_code == 200


# --- shutdown drain -----------------------------------------------------------------------------


async def test_drain_refuses_new_uploads_and_lets_those_in_flight_finish(saved_model):
    model = Gate(saved_model)
    app = create_app(make_settings(shutdown_timeout_s=120), models=serving(model))
    async with running_app(app) as c:
        runtime = app.state.runtime
        model.closed = True
        try:
            in_flight = [
                asyncio.create_task(c.post("/upscale", **upload(encode_bgr(photo_like(60, 90, seed=s), ".png"))))
                for s in range(3)
            ]
            await until(lambda: runtime.uploads_in_flight == 3 and model.held > 0)
            drain = asyncio.create_task(runtime.drain())
            await until(lambda: runtime.state is ServingState.DRAINING)

            r = await c.get("/readyz")
            assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
            assert r.json()["detail"] == "the server is shutting down and takes no new work; retry on another replica"
            r = await c.post("/upscale", **upload(encode_bgr(photo_like(20, 20), ".png")))
            assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
            assert r.headers["connection"] == "close"
            assert r.json()["detail"] == "the server is shutting down and takes no new uploads; retry in a moment"
            assert (await c.get("/healthz")).status_code == 200
            assert not drain.done()  # still waiting for the three
        finally:
            model.open()
        answers = await asyncio.wait_for(asyncio.gather(*in_flight), 120)
        assert [r.status_code for r in answers] == [200, 200, 200]
        assert await asyncio.wait_for(drain, 60) is True
        assert runtime.uploads_in_flight == 0
