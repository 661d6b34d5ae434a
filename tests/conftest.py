"""Shared fixtures: the real SavedModel (loaded once per session), settings, test images, app runner.

Tests of the HTTP path run the app in-process through httpx's ASGI transport with its lifespan,
on the committed SavedModel in weights/dejpeg, with small tiles so everything fits a busy CPU.
"""

from __future__ import annotations

import asyncio
import re
import time
from contextlib import asynccontextmanager
from pathlib import Path

import enhancer  # noqa: F401  (first: it sets OpenCV's decode limits, read when cv2 is loaded)

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = REPO_ROOT / "weights" / "dejpeg"

#: Small tiles keep CPU tests fast while still cutting most test images into several tiles.
TEST_TILE_SIZE = 128
TEST_TILE_OVERLAP = 32


@pytest.fixture(scope="session")
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="session")
def saved_model():
    """The real SavedModel runner, loaded once for the whole session."""
    from enhancer.config import Settings
    from enhancer.models.saved_model import SavedModelRunner, configure_device

    # float32 as the tests' tolerances assume, whatever `auto` would pick on this machine
    return SavedModelRunner(MODEL_DIR, device=configure_device(Settings(_env_file=None, precision="float32")))


class WrappedModel:
    """Keeps the model contract by delegating to a real model; tests override `forward` or
    `warm_up` to hold, slow or fail it while every answered tile still goes through the model."""

    def __init__(self, inner):
        self.inner = inner
        self.spec = inner.spec
        self.device = inner.device
        self.device_kind = inner.device_kind
        self.precision = inner.precision

    def forward(self, batch, inputs=None):
        return self.inner.forward(batch, inputs)

    def warm_up(self, shapes, max_batch_size):
        return self.inner.warm_up(shapes, max_batch_size)


def serving(*models, default=None):
    """A ModelRegistry of already loaded models, for `create_app(..., models=...)`."""
    from enhancer.models.registry import ModelRegistry

    return ModelRegistry(models, default)


async def until(condition, timeout: float = 60.0, interval: float = 0.005) -> None:
    """Poll `condition` until it is true; one that never holds fails the test instead of hanging it."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout:g} s")
        await asyncio.sleep(interval)


def make_settings(**overrides):
    """Settings for tests: the real weights, small tiles, no .env file influence, and the model run
    on every image (test JPEGs are often saved at OpenCV's default quality 95, which the default
    settings would pass through unchanged; tests of that behaviour set it back)."""
    from enhancer.config import Settings

    values = dict(
        model_dir=MODEL_DIR,
        tile_size=TEST_TILE_SIZE,
        tile_overlap=TEST_TILE_OVERLAP,
        # the tiling module's own default, which the tests' expected outputs and tile counts use
        # (the server's default is no context: tests/test_border_and_png_settings.py)
        border_context=TEST_TILE_OVERLAP,
        max_batch_size=4,
        max_batch_delay_ms=2,
        max_queue_tiles=512,
        request_timeout_s=120,
        shutdown_timeout_s=10,
        pass_through_jpeg_quality=101,
        precision="float32",
    )
    values.update(overrides)
    return Settings(_env_file=None, **values)


def photo_like(height: int, width: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    """A uint8 image with smooth gradients, edges and some noise (compresses like a photo)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = []
    for c in range(channels):
        fy, fx = rng.uniform(0.01, 0.08, 2)
        phase = rng.uniform(0, 2 * np.pi)
        base.append(0.5 + 0.35 * np.sin(fy * yy + fx * xx + phase))
    img = np.stack(base, axis=-1)
    img[(yy // 17 + xx // 23) % 2 == 0] *= 0.8  # hard edges
    img += rng.normal(0, 0.03, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def encode_bgr(pixels: np.ndarray, ext: str, *params: int) -> bytes:
    """Encode pixels (OpenCV channel order) to file bytes, e.g. encode_bgr(img, '.png')."""
    ok, buf = cv2.imencode(ext, pixels, list(params))
    assert ok, ext
    return buf.tobytes()


def decode_bytes(data: bytes) -> np.ndarray:
    """Decode answer bytes exactly as stored (channels, depth)."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert img is not None, "answer is not a decodable image"
    return img


@asynccontextmanager
async def running_app(app, *, wait_ready: bool = True):
    """Run `app`'s lifespan and yield an httpx client talking to it in-process."""
    import httpx

    async with app.router.lifespan_context(app):
        if wait_ready:
            await asyncio.wait_for(app.state.runtime.wait_ready(), timeout=300)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=300) as client:
            yield client


def assert_documented(spec: dict, status: int, detail: str, path: str = "/upscale") -> None:
    """`detail` is the example the OpenAPI document `spec` gives for `status` on POST `path`, up to
    the numbers in it (limits and waits that depend on the settings and the moment)."""
    example = spec["paths"][path]["post"]["responses"][str(status)]["content"]["application/json"]["example"]["detail"]
    number = r"\d(?:[\d,.]*\d)?"
    pattern = "".join(number if i % 2 else re.escape(piece) for i, piece in enumerate(re.split(f"({number})", example)))
    assert re.fullmatch(pattern, detail), f"the {status} answer differs from its documented example:\n{detail}\n{example}"
