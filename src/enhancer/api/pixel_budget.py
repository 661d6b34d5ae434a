"""The pixel budget over HTTP (enhancer.pixel_budget): an upload is charged once its body has
arrived, from its image header and before anything is decoded, and the charge is released once
its answer has been sent, whatever the answer: an image, an error, a client that left, a shutdown.

The route charges (`hold_pixels`); `PixelHoldMiddleware`, around the route, releases when the
request is over, so no path through the route can keep a charge.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from enhancer import imaging
from enhancer.imaging.formats import check_size
from enhancer.pixel_budget import Charge

#: `scope["state"]` entry holding the charges of one upload request.
HOLDS_STATE = "enhancer_pixel_holds"


class PixelHoldMiddleware:
    """Releases every pixel charge an upload request took, once the request is over."""

    def __init__(self, app: ASGIApp, paths: frozenset[str]):
        self.app = app
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        holds: list[Charge] = []
        scope.setdefault("state", {})[HOLDS_STATE] = holds
        try:
            await self.app(scope, receive, send)
        finally:
            for charge in holds:
                charge.release()


def pixels_to_charge(
    data: bytes, size: tuple[int, int] | None, *, max_pixels: int, max_side: int, scale: int
) -> int:
    """The pixels an upload is charged: its header's width x height, times scale² (the answer's
    pixels). Over the image limits: 413 here, before the budget is asked. Not a supported format:
    nothing (decoding refuses it before decoding anything). A supported format whose header cannot
    be read: the largest image allowed, as the decoder may still make a picture of it."""
    if imaging.sniff_format(data) is None:
        return 0
    if size is None:
        return max_pixels * scale * scale
    check_size(size[0], size[1], max_pixels, max_side)
    return size[0] * size[1] * scale * scale


def hold_pixels(request: Request, data: bytes, size: tuple[int, int] | None, scale: int) -> None:
    """Charge the upload's pixels to the server's budget until its answer has been sent (413 over
    the image limits, 503 with Retry-After over the budget). `size` is the upright (width, height)
    its header declares, or None if unreadable."""
    runtime = request.app.state.runtime
    settings = runtime.settings
    pixels = pixels_to_charge(
        data, size, max_pixels=settings.max_pixels, max_side=settings.max_image_side, scale=scale
    )
    if pixels == 0:
        return
    holds = request.scope.get("state", {}).get(HOLDS_STATE)
    if holds is None:
        raise RuntimeError("hold_pixels needs PixelHoldMiddleware around the route (install_pixel_budget)")
    holds.append(runtime.pixel_budget.admit(pixels))


def install_pixel_budget(app: FastAPI, upload_paths: frozenset[str]) -> None:
    """Release the charges of uploads on `upload_paths` when their requests end."""
    app.add_middleware(PixelHoldMiddleware, paths=frozenset(upload_paths))
