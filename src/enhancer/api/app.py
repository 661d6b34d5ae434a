"""The FastAPI application factory.

`create_app(settings)` builds a self-contained app: its own metrics registry, its own runtime,
no module-level globals, so tests can build several apps with different settings side by side.
The app holds the runtime only (`app.state.runtime`); the settings in force are the runtime's,
resolved for the device at start-up.
`factory()` is the zero-argument form uvicorn needs (`uvicorn --factory enhancer.api:factory`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from enhancer import __version__
from enhancer.api.auth import install_api_keys
from enhancer.api.client_limits import install_client_limits
from enhancer.api.docs import install_docs
from enhancer.api.errors import install_error_handlers
from enhancer.api.middleware import MetricsMiddleware, UploadGateMiddleware, UploadLimitMiddleware
from enhancer.api.multipart import MultipartFramingMiddleware
from enhancer.api.pixel_budget import install_pixel_budget
from enhancer.api.routes import UPLOAD_PATHS, router, static_dir
from enhancer.config import Settings
from enhancer.metrics import Metrics
from enhancer.models.registry import ModelRegistry
from enhancer.runtime import Runtime

DESCRIPTION = """
Removes JPEG compression damage from photos with a trained network.

Upload an image to **POST /upscale** (field `image`); the answer is the enhanced image with the
same width and height. Large images are split into overlapping tiles, and tiles from concurrent
requests share model batches.
"""


def create_app(
    settings: Settings | None = None, *, models: ModelRegistry | None = None, clock: Callable[[], float] | None = None
) -> FastAPI:
    """Build the app. `models` lets a caller share already-loaded models between apps; without
    it the app loads the models the settings name when it starts. `clock` (monotonic seconds)
    drives the per-client limits, for tests that move time."""
    settings = settings or Settings()
    metrics = Metrics()
    runtime = Runtime(settings, metrics, models=models)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(
        title="enhancer",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served by install_docs, from local assets
        redoc_url=None,
    )
    app.state.runtime = runtime
    install_error_handlers(app)
    app.include_router(router)
    static = static_dir()
    if static.is_dir():
        app.mount("/static", StaticFiles(directory=str(static)), name="static")
    install_docs(app, favicon_path="/static/favicon.svg" if (static / "favicon.svg").is_file() else None)
    # Added first = innermost: the pixel charges are released once the route's answer is sent.
    install_pixel_budget(app, UPLOAD_PATHS)
    # Next: the form parser reads the body through the framing check.
    app.add_middleware(MultipartFramingMiddleware, paths=UPLOAD_PATHS)
    # Added last = outermost: metrics also see the 413/408/415/503s the middleware answers itself.
    app.add_middleware(
        UploadLimitMiddleware,
        max_upload_bytes=settings.max_upload_bytes,
        read_timeout_s=settings.request_read_timeout_s,
        paths=UPLOAD_PATHS,
    )
    app.add_middleware(
        UploadGateMiddleware, paths=UPLOAD_PATHS, refuse=runtime.refuse_upload, tracker=runtime
    )
    # Per-client limits inside the key check: only a client with a valid key can take a slot.
    install_client_limits(app, settings, metrics, UPLOAD_PATHS, clock=clock)
    install_api_keys(app, settings, UPLOAD_PATHS)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def factory() -> FastAPI:
    """App configured from the environment, for `uvicorn --factory`."""
    return create_app(Settings())
