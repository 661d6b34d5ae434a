"""Two different SavedModels served side by side by `enhancer serve`, over real HTTP.

The second model is added the way an operator would: a folder next to the shipped one and a
setting (ENHANCER_MODELS_DIR, ENHANCER_DEFAULT_MODEL); no code knows about it. It is a tiny
identity net exported by the project's own export code (the dejpeg architecture, untrained: its
last layer starts at zero, so it returns its input exactly). So a tile that ran through the wrong
model shows: an identity answer would not equal its input, a dejpeg answer would not match the
shipped model's own result. Waits poll with bounds; nothing asserts how fast anything is.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time

import cv2
import httpx
import numpy as np
import pytest
from helpers import MODEL_DIR, REPO_ROOT, decode_bytes, encode_bgr, free_port, photo_like

from enhancer import imaging, tiling

TILE, OVERLAP, MULTIPLE = 128, 32, 4  # both models' size multiple is 4 (their specs)
#: How the server tiles with these settings: no border context (the default), bucketed shapes (batch 2).
PLAN = dict(multiple=MULTIPLE, context=0, buckets=True)


def damaged_png(height: int, width: int, seed: int) -> bytes:
    """A photo-like image with JPEG q10 damage, stored losslessly: both models see these exact pixels."""
    jpeg = encode_bgr(photo_like(height, width, seed=seed), ".jpg", cv2.IMWRITE_JPEG_QUALITY, 10)
    return encode_bgr(decode_bytes(jpeg), ".png")


def metric_total(text: str, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            total += float(match.group(2))
    return total


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """weights/dejpeg plus a second model folder, as an operator would lay them out."""
    from enhancer.training.export import export_saved_model
    from enhancer.training.network import build_dejpeg

    root = tmp_path_factory.mktemp("models")
    (root / "dejpeg").symlink_to(MODEL_DIR, target_is_directory=True)
    export_saved_model(build_dejpeg(4, 8, 1, name="identity"), root / "identity", {"note": "test identity"})
    return root


@pytest.fixture(scope="module")
def server(models_dir, tmp_path_factory):
    """`enhancer serve` in its own process, serving every model folder under `models_dir`."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENHANCER_", "OPENCV_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "src"), env.get("PYTHONPATH", "")])
    env.update(
        ENHANCER_MODELS_DIR=str(models_dir),
        ENHANCER_DEFAULT_MODEL="dejpeg",
        ENHANCER_PORT=str(port),
        ENHANCER_TILE_SIZE=str(TILE),
        ENHANCER_TILE_OVERLAP=str(OVERLAP),
        ENHANCER_MAX_BATCH_SIZE="2",
        ENHANCER_MAX_BATCH_DELAY_MS="2",
        ENHANCER_PASS_THROUGH_JPEG_QUALITY="101",
        ENHANCER_LOG_LEVEL="info",
    )
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "enhancer.cli", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert process.poll() is None, f"the server exited:\n{log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"not ready within 300 s:\n{log_path.read_text()[-3000:]}"
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


async def post(client: httpx.AsyncClient, data: bytes, model: str | None = None) -> httpx.Response:
    params = {"model": model} if model else {}
    return await client.post("/upscale", params=params, files={"image": ("x.png", data, "image/png")}, timeout=300)


def test_readyz_lists_both_models_and_an_unknown_model_is_refused(server):
    r = httpx.get(f"{server}/readyz", timeout=30)
    assert r.status_code == 200
    models = r.json()["models"]
    assert [{k: v for k, v in m.items() if k != "precision"} for m in models] == [
        # batches of 2: no solo tiles
        {"name": "dejpeg", "scale": 1, "default": True, "tile_size": TILE, "tile_overlap": OVERLAP, "solo_tile_size": None},
        {"name": "identity", "scale": 1, "default": False, "tile_size": TILE, "tile_overlap": OVERLAP, "solo_tile_size": None},
    ]
    # neither records a bfloat16 graph-rewrite change, so each runs what the server says it runs
    assert [m["precision"] for m in models] == [r.json()["precision"]] * 2
    r = httpx.post(f"{server}/upscale", params={"model": "sr4"}, files={"image": ("x.png", damaged_png(20, 20, 0), "image/png")}, timeout=60)
    assert r.status_code == 422
    assert r.json()["detail"] == "query parameter 'model': unknown model 'sr4'; this server serves: dejpeg, identity"


def test_each_request_runs_on_its_own_model_and_batches_never_mix_them(server, saved_model):
    sizes = [(150, 210), (200, 300), (60, 60), (130, 170)]
    requests = [(damaged_png(*sizes[i % len(sizes)], seed=i), "identity" if i % 2 else None) for i in range(12)]

    async def send_all():
        async with httpx.AsyncClient(base_url=server) as client:
            before = (await client.get("/metrics")).text
            answers = await asyncio.gather(*(post(client, data, model) for data, model in requests))
            return before, answers, (await client.get("/metrics")).text

    before, answers, after = asyncio.run(send_all())
    tiles = {"dejpeg": 0, "identity": 0}
    for (data, model), answer in zip(requests, answers, strict=True):
        assert answer.status_code == 200, answer.text
        name = model or "dejpeg"  # no model named: the default
        assert answer.headers["x-enhancer-model"] == name
        sent, got = decode_bytes(data), decode_bytes(answer.content)
        image = imaging.decode(data)
        tiles[name] += tiling.plan_tiles(image.info.height, image.info.width, TILE, OVERLAP, **PLAN).num_tiles
        if name == "identity":
            np.testing.assert_array_equal(got, sent)  # every one of its tiles ran through the identity
        else:
            rgb = tiling.enhance_tiled(image.pixels, saved_model.forward, TILE, OVERLAP, 2, **PLAN)
            expected = decode_bytes(imaging.encode(rgb, imaging.OutputFormat.png, info=image.info))
            assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1  # ... through dejpeg
            assert np.abs(got.astype(int) - sent.astype(int)).mean() > 0.5  # which really changes pixels
    for name, count in tiles.items():  # each model's batches held exactly its own requests' tiles
        processed = metric_total(after, "enhancer_tiles_processed_total", model=name)
        assert processed - metric_total(before, "enhancer_tiles_processed_total", model=name) == count
    assert metric_total(after, "enhancer_batch_size_tiles_count", model="identity") > 0


def test_a_big_image_on_one_model_does_not_starve_small_requests_on_the_other(server):
    big = damaged_png(1100, 1100, seed=50)
    big_tiles = tiling.plan_tiles(1100, 1100, TILE, OVERLAP, **PLAN).num_tiles
    small = damaged_png(60, 60, seed=51)

    async def scenario():
        async with httpx.AsyncClient(base_url=server) as client:
            big_task = asyncio.create_task(post(client, big))  # the default model, dejpeg
            deadline = time.monotonic() + 120
            while metric_total((await client.get("/metrics")).text, "enhancer_queue_depth_tiles") < big_tiles / 2:
                assert not big_task.done() and time.monotonic() < deadline, "the big image's tiles never queued"
                await asyncio.sleep(0.05)
            smalls = []
            for _ in range(6):  # one after the other, each behind whatever the big image still has queued
                smalls.append(await post(client, small, "identity"))
            still_queued = metric_total((await client.get("/metrics")).text, "enhancer_queue_depth_tiles")
            big_done_before = big_task.done()
            return smalls, still_queued, big_done_before, await big_task

    smalls, still_queued, big_done_before, big_answer = asyncio.run(scenario())
    assert [r.status_code for r in smalls] == [200] * 6
    assert all(r.headers["x-enhancer-model"] == "identity" for r in smalls)
    np.testing.assert_array_equal(decode_bytes(smalls[0].content), decode_bytes(small))
    # all six were answered while the big image still had tiles waiting: they did not queue behind it
    assert not big_done_before and still_queued > 0
    assert big_answer.status_code == 200 and big_answer.headers["x-enhancer-model"] == "dejpeg"
