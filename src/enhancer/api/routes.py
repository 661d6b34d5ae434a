"""HTTP routes: the enhancement endpoint, health/readiness, metrics and the web page.

Routes only translate between HTTP and `EnhanceService` (and the runtime's state); failures are
raised as `enhancer.errors` types and answered by the single handler in `enhancer.api.errors`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import unicodedata
from importlib import resources
from pathlib import PurePath
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response

from enhancer import imaging
from enhancer.api.client_limits import charge_upload
from enhancer.api.openapi import RETRY_AFTER, SUCCESS_HEADERS, example_image, upload_error_responses
from enhancer.api.pixel_budget import hold_pixels
from enhancer.api.schemas import ErrorBody, HealthBody, ReadyBody, ServedModel, ServingSettings
from enhancer.conditioning import Strength
from enhancer.errors import InvalidParameterError, PayloadTooLargeError
from enhancer.imaging import SUPPORTED_NAMES, OutputFormat
from enhancer.models.registry import UnknownModelError
from enhancer.models.contract import Model
from enhancer.models.registry import ModelRegistry
from enhancer.pipeline import STAGES, EnhanceResult, Scale
from enhancer.runtime import Runtime, ServingState

log = logging.getLogger(__name__)

router = APIRouter()

#: Routes taking an image upload: their bodies are checked (type, size, read deadline) before
#: parsing, and they are what a shutdown refuses and then waits for.
UPLOAD_PATHS = frozenset({"/upscale"})

_FALLBACK_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>enhancer</title></head>
<body><h1>enhancer</h1><p>Removes JPEG damage from photos. Try it at <a href="/docs">/docs</a>
(POST /upscale).</p></body></html>
"""


def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def _safe_stem(filename: str | None) -> str:
    """The upload's file name without folders or extension, reduced to letters, digits and `._-`
    (any script; everything else becomes `_`), so it cannot break the header or name a path."""
    stem = PurePath((filename or "").replace("\\", "/")).stem
    stem = re.sub(r"[^\w.-]+", "_", unicodedata.normalize("NFC", stem)).strip("._-")
    return stem[:100]


def content_disposition(filename: str | None, fmt: OutputFormat, scale: int = 1) -> str:
    """`inline` with the download name `<stem>_enhanced.<ext>` (`<stem>_x2.<ext>` for an answer
    enlarged 2x, and so on): an ASCII `filename` (accents dropped, other letters replaced) and,
    when that lost characters, the full name in UTF-8 as `filename*` (RFC 6266, RFC 8187), which
    browsers prefer."""
    stem = _safe_stem(filename)
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode("ascii")
    ascii_stem = re.sub(r"[^A-Za-z0-9._-]+", "_", ascii_stem).strip("._-") or "image"
    suffix = "_enhanced" if scale == 1 else f"_x{scale}"
    name, ascii_name = f"{stem or 'image'}{suffix}.{fmt.extension}", f"{ascii_stem}{suffix}.{fmt.extension}"
    header = f'inline; filename="{ascii_name}"'
    if name != ascii_name:
        header += f"; filename*=UTF-8''{quote(name, safe='')}"
    return header


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
    """Await `work`, but cancel it (dropping its queued tiles) if the client disconnects first;
    then wait for it to end, so its pixels are let go before the request's pixel charge is."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
    if task.cancelled():
        # the batcher logs any tiles it dropped
        log.info("client left before its image was ready; its work was cancelled (499)")
        return None
    return task.result()


def choose_model(models: ModelRegistry, name: str | None, scale: Scale | None) -> Model:
    """The model a request gets: the one it names (whose scale must be the one asked for, if it
    asked), else the one for the scale it asks (1 when it asks none). 422 for a model or a scale
    this server does not serve."""
    if name is not None:
        try:
            chosen = models.select(name)
        except UnknownModelError as exc:
            raise InvalidParameterError(f"query parameter 'model': {exc}") from None
        if scale is not None and chosen.spec.scale != scale:
            others = [n for n, m in models.items() if m.spec.scale == scale]
            hint = f"name {', '.join(others)}" if others else f"the scales served are {', '.join(map(str, models.scales))}"
            raise InvalidParameterError(
                f"query parameter 'scale': model {name!r} has scale {chosen.spec.scale}, not {int(scale)}; "
                f"leave out 'scale', or for scale {int(scale)} {hint}"
            )
        return chosen
    try:
        return models.for_scale(int(scale or Scale.x1))
    except UnknownModelError as exc:
        raise InvalidParameterError(f"query parameter 'scale': {exc}") from None


@router.post(
    "/upscale",
    summary="Remove JPEG damage from an image, and enlarge it 2x or 4x if asked",
    response_class=Response,
    # a tiny BMP whose bytes are all ASCII, so that it survives being JSON text
    openapi_extra={"requestBody": {"content": {"multipart/form-data": {"example": {"image": example_image()}}}}},
    responses={
        200: {
            "description": "The enhanced image: `scale` times the input's width and height (the same size at scale 1).",
            "headers": SUCCESS_HEADERS,
            "content": {f.media_type: {"schema": {"type": "string", "format": "binary"}} for f in OutputFormat},
        },
        **upload_error_responses(),
    },
)
async def upscale(
    request: Request,
    image: Annotated[UploadFile, File(description=f"The image to enhance: {SUPPORTED_NAMES}.")],
    format: Annotated[
        OutputFormat,
        Query(description="Encoding of the answer; PNG is lossless. Any case; `jpg` is the same as `jpeg`."),
    ] = OutputFormat.png,
    quality: Annotated[
        int, Query(ge=1, le=100, description="Quality 1-100 for JPEG and WebP answers (PNG ignores it).")
    ] = 95,
    scale: Annotated[
        Scale,
        Query(
            description=(
                "Enlarge the answer to this many times the input's width and height: 1 (the same size), 2 or 4. "
                "At 2 and 4 an upscaling model restores and enlarges in one pass, and always runs (strength `off`: "
                "enlarged only, not restored). Default 1, or the scale of the model named in `model`. A scale no "
                "served model has is refused (422, naming the scales served); so is an answer of more than "
                "ENHANCER_MAX_OUTPUT_PIXELS pixels (413, naming the largest input that fits)."
            ),
            examples=[2],
        ),
    ] = Scale.x1,
    model: Annotated[
        str | None,
        Query(description="The model to run, by name (see /readyz); default: the server's model for the `scale` asked."),
    ] = None,
    strength: Annotated[
        Strength,
        Query(
            description=(
                "How hard to restore. `auto`: as the JPEG file's own compression says (a good JPEG is described "
                "with somewhat smaller steps than its own, so grain and fine detail stay); other images as the "
                "model judges. `light` / `strong`: as if the file had been saved with half / twice "
                "the quantisation steps `auto` tells (an image that is not a JPEG: as if saved at JPEG quality 75 / 25); "
                "`off`: the input's own pixels, re-encoded in the asked format (at scale 2 or 4: enlarged without "
                "restoring, the model told the image has no compression damage)."
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
    asked = scale if "scale" in request.query_params else None  # not asked: the named model's scale
    chosen = choose_model(runtime.models, model, asked)
    if len((await request.form()).getlist("image")) > 1:
        raise InvalidParameterError(
            "form field 'image': send exactly one file; this request has several in that field"
        )
    data = await image.read()
    await image.close()
    size = await asyncio.to_thread(imaging.read_image_size, data)  # the header only: nothing decoded yet
    if chosen.spec.scale > 1 and size is not None:  # the answer's size, before it is charged (413)
        imaging.check_output_size(*size, chosen.spec.scale, runtime.settings.max_output_pixels)
    hold_pixels(request, data, size, chosen.spec.scale)  # the answer's pixels in flight, until answered
    charge_upload(request, size)  # this client's megapixels per minute
    result = await _cancel_if_client_leaves(request, service.enhance(data, chosen.spec, format, quality, strength))
    if result is None:  # nobody is listening; this status only shows up in logs and metrics
        return Response(status_code=499)
    headers = {
        "Content-Disposition": content_disposition(image.filename, format, result.scale),
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


@router.get(
    "/readyz",
    response_model=ReadyBody,
    responses={503: {"model": ErrorBody, "description": "Not ready (yet, or any more).", "headers": RETRY_AFTER}},
    tags=["ops"],
)
async def readyz(request: Request):
    """Readiness: 200, listing the models, once every model is loaded and warmed up; 503 while
    the models cannot run (several batches failed in a row) and while shutting down."""
    runtime = _runtime(request)
    error = runtime.readiness_error()  # warming up, models failing, shutting down
    if error is not None:
        raise error
    models = runtime.models
    s = runtime.settings  # resolved for the device at start-up
    served = [
        ServedModel(
            name=name, scale=m.spec.scale, default=name == models.default, precision=m.precision,
            **s.tiling_for(m.spec)._asdict(),
            solo_tile_size=s.solo_tile_for(m.spec),
        )  # fmt: skip
        for name, m in models.items()
    ]
    settings = ServingSettings(**{
        **{name: getattr(s, name) for name in ServingSettings.model_fields},
        "solo_tile_size": s.solo_tile_size if s.uses_solo_tiles else 0,  # what runs, not the unused setting
    })  # fmt: skip
    return ReadyBody(status="ready", device=models.device, precision=models.precision, models=served, settings=settings)


@router.get(
    "/metrics",
    tags=["ops"],
    response_class=Response,
    responses={200: {"description": "The metrics.", "content": {"text/plain": {"schema": {"type": "string"}}}}},
)
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


# Uptime checkers probe with HEAD: the same answers, whose bodies the server does not send.
for _path, _endpoint in (("/healthz", healthz), ("/readyz", readyz), ("/", index)):
    router.add_api_route(_path, _endpoint, methods=["HEAD"], include_in_schema=False)
