"""Helpers shared by the tests: paths, test settings, test images, the in-process app runner, the
bounded `until`, and raw-socket HTTP for the real-server tests. Imported as a module
(`from helpers import ...`): pyproject puts tests/ on the test run's import path.

Tests of the HTTP path run the app in-process through httpx's ASGI transport with its lifespan,
on the committed SavedModel in weights/dejpeg, with small tiles so everything fits a busy CPU.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from contextlib import asynccontextmanager
from pathlib import Path

import enhancer  # noqa: F401  (first: it sets OpenCV's decode limits, read when cv2 is loaded)

import cv2  # noqa: E402
import numpy as np  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = REPO_ROOT / "weights" / "dejpeg"

#: Small tiles keep CPU tests fast while still cutting most test images into several tiles.
TEST_TILE_SIZE = 128
TEST_TILE_OVERLAP = 32


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


class NearestModel:
    """A fake model that keeps the contract: upsamples by `scale` (nearest neighbour) and records its calls."""

    def __init__(self, scale: int = 1, inputs=None):
        from enhancer.models.contract import ModelSpec

        self.spec = ModelSpec(name=f"nearest{scale}x", reach=0, scale=scale, inputs=inputs or {})
        self.calls: list[tuple[int, dict]] = []

    def forward(self, batch, inputs=None):
        self.calls.append((len(batch), {k: np.array(v) for k, v in (inputs or {}).items()}))
        s = self.spec.scale
        return np.repeat(np.repeat(batch, s, axis=1), s, axis=2)


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
        # no upscaling model unless a test names some (weights/upscale-x* are served by default)
        upscale_model_dirs=[],
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


# --- raw sockets, for the real-server tests (tests/system/) ---------------------------------------

BOUNDARY = "enhancer-socket-test"
UPLOAD_HEADERS = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 at the moment of asking."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def multipart_head(filename: str = "photo.png") -> bytes:
    """The start of a one-file multipart body (field `image`), up to the file's bytes."""
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()


def multipart_body(data: bytes) -> bytes:
    """A whole one-file multipart body for `UPLOAD_HEADERS`."""
    return multipart_head() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def read_response(sock: socket.socket, timeout: float = 120.0) -> tuple[int, dict, bytes]:
    """Read one HTTP/1.1 response (Content-Length framed) from a raw socket."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", 0))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed in the middle of the response body"
        body += chunk
    return status, headers, body
