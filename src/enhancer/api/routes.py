"""HTTP routes: the enhancement endpoint, health/readiness, metrics and the web page.

Routes only translate between HTTP and `EnhanceService` (and the runtime's state); failures are
raised as `enhancer.errors` types and answered by the single handler in `enhancer.api.errors`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from importlib import resources
from pathlib import PurePath
from typing import Annotated

from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response

from enhancer.api.client_limits import charge_upload
from enhancer.api.schemas import ErrorBody, HealthBody, ReadyBody, ServedModel
from enhancer.conditioning import Strength
from enhancer.errors import InvalidParameterError, PayloadTooLargeError
from enhancer.imaging import SUPPORTED_NAMES, OutputFormat
from enhancer.models.registry import UnknownModelError
from enhancer.pipeline import STAGES, EnhanceResult
from enhancer.runtime import Runtime, ServingState

log = logging.getLogger(__name__)

router = APIRouter()

#: Routes taking an image upload: their bodies are checked (type, size, read deadline) before
#: parsing, and they are what a shutdown refuses and then waits for.
UPLOAD_PATHS = frozenset({"/upscale"})

_ERRORS = {
    400: "The file is a supported type but corrupt or truncated, or the multipart body is malformed.",
    408: "The request body was not received within ENHANCER_REQUEST_READ_TIMEOUT_S.",
    413: (
        "The upload exceeds ENHANCER_MAX_UPLOAD_BYTES, or the image exceeds ENHANCER_MAX_PIXELS or has a side "
        "longer than ENHANCER_MAX_IMAGE_SIDE."
    ),
    415: (
        f"The file is not {SUPPORTED_NAMES}, is animated, or is a TIFF whose channels or sample type are not "
        "supported; or the body is not multipart/form-data."
    ),
    422: "The `image` field is missing or holds more than one file, or a query parameter is invalid (e.g. an unknown `model`).",
    500: "The model failed on the batch holding this image.",
    503: "The queue is full, the model is still warming up, or the server is shutting down; see `Retry-After`.",
    504: "The image was not enhanced within ENHANCER_REQUEST_TIMEOUT_S.",
}

_FALLBACK_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>enhancer</title></head>
<body><h1>enhancer</h1><p>Removes JPEG damage from photos. Try it at <a href="/docs">/docs</a>
(POST /upscale).</p></body></html>
"""


def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def _download_name(filename: str | None, fmt: OutputFormat) -> str:
    """`<stem>_enhanced.<ext>`, reduced to characters that are safe in a header."""
    stem = PurePath((filename or "").replace("\\", "/")).stem
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-") or "image"
    return f"{stem[:100]}_enhanced.{fmt.extension}"


def _server_timing(result: EnhanceResult) -> str:
    return ", ".join(
        f"{stage};dur={result.timings[stage] * 1000:.1f}" for stage in STAGES if stage in result.timings
    )


async def _until_disconnect(request: Request) -> None:
    """Return once the client has gone away (the body has already been read by then)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _cancel_if_client_leaves(request: Request, work):
    """Await `work`, but cancel it (dropping its queued tiles) if the client disconnects first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if task.cancelled() or not task.done():
        log.info("client left before its image was ready; its queued tiles were dropped")
        return None
    return task.result()


@router.post(
    "/upscale",
    summary="Remove JPEG damage from an image",
    response_class=Response,
    responses={
        200: {
            "description": "The enhanced image, same width and height as the input.",
            "content": {f.media_type: {"schema": {"type": "string", "format": "binary"}} for f in OutputFormat},
        },
        **{code: {"model": ErrorBody, "description": text} for code, text in _ERRORS.items()},
    },
)
async def upscale(
    request: Request,
    image: Annotated[UploadFile, File(description=f"The image to enhance: {SUPPORTED_NAMES}.")],
    format: Annotated[
        OutputFormat, Query(description="Encoding of the answer; PNG is lossless.")
    ] = OutputFormat.png,
    quality: Annotated[
        int, Query(ge=1, le=100, description="Quality 1-100 for JPEG and WebP answers (PNG ignores it).")
    ] = 95,
    model: Annotated[
        str | None,
        Query(description="The model to run, by name (see /readyz); default: the server's default model."),
    ] = None,
    strength: Annotated[
        Strength,
        Query(
            description=(
                "How hard to restore. `auto`: as the JPEG file's own compression says (for other images, "
                "as the model judges); `light` / `strong`: as if the file had been saved with half / twice its "
                "quantisation steps (an image that is not a JPEG: as if saved at JPEG quality 75 / 25); "
                "`off`: the input's own pixels, re-encoded in the asked format."
            ),
            examples=["auto"],
        ),
    ] = Strength.auto,
) -> Response:
    """Enhance one uploaded image; the answer is the image itself, with a `Server-Timing` header."""
    runtime = _runtime(request)
    limit = runtime.settings.max_upload_bytes
    if image.size is not None and image.size > limit:
        raise PayloadTooLargeError(
            f"the upload is {image.size:,} bytes, more than the {limit:,} byte limit "
            "(ENHANCER_MAX_UPLOAD_BYTES); send a smaller file"
        )
    service = runtime.require_service()
    try:
        chosen = runtime.models.select(model)
    except UnknownModelError as exc:
        raise InvalidParameterError(f"query parameter 'model': {exc}") from None
    if len((await request.form()).getlist("image")) > 1:
        raise InvalidParameterError(
            "form field 'image': send exactly one file; this request has several in that field"
        )
    data = await image.read()
    await image.close()
    await charge_upload(request, data)  # this client's megapixels per minute, before decoding
    result = await _cancel_if_client_leaves(request, service.enhance(data, chosen.spec, format, quality, strength))
    if result is None:  # nobody is listening; this status only shows up in logs and metrics
        return Response(status_code=499)
    headers = {
        "Content-Disposition": f'inline; filename="{_download_name(image.filename, format)}"',
        "Server-Timing": _server_timing(result),
        "X-Enhancer-Model": result.model,
    }
    if result.passed_through:
        headers["X-Enhancer-Passed-Through"] = result.passed_through
    return Response(content=result.body, media_type=format.media_type, headers=headers)


@router.get("/healthz", response_model=HealthBody, responses={503: {"model": ErrorBody}}, tags=["ops"])
async def healthz(request: Request):
    """Liveness: 200 while the process can serve (`degraded` if the last batch failed); 503 if
    start-up failed and only a restart can help."""
    lifecycle = _runtime(request).lifecycle
    if lifecycle.state is ServingState.FAILED:
        return JSONResponse({"detail": lifecycle.failure}, status_code=503)
    return HealthBody(status="degraded" if lifecycle.state is ServingState.DEGRADED else "ok")


@router.get("/readyz", response_model=ReadyBody, responses={503: {"model": ErrorBody}}, tags=["ops"])
async def readyz(request: Request):
    """Readiness: 200, listing the models, once every model is loaded and warmed up; 503 while
    the models cannot run (several batches failed in a row) and while shutting down."""
    runtime = _runtime(request)
    error = runtime.readiness_error()  # warming up, models failing, shutting down
    if error is not None:
        raise error
    models = runtime.models
    served = [ServedModel(name=name, scale=m.spec.scale, default=name == models.default) for name, m in models.items()]
    return ReadyBody(status="ready", device=models.device, precision=models.precision, models=served)


@router.get("/metrics", tags=["ops"], response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus metrics in text exposition format."""
    m = _runtime(request).metrics
    return Response(m.render(), media_type=m.content_type)


def static_dir():
    """The packaged `enhancer/static` folder (may not exist in a build without the web page)."""
    return resources.files("enhancer") / "static"


@router.get("/", include_in_schema=False)
async def index() -> HTMLResponse:
    """The web page, or a link to /docs if the package has no page."""
    page = static_dir() / "index.html"
    if page.is_file():
        return HTMLResponse(page.read_text(encoding="utf-8"))
    return HTMLResponse(_FALLBACK_PAGE)
