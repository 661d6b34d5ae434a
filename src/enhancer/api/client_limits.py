"""The per-client limits over HTTP: who the client is, its uploads in flight, and its megapixels.

A client is its API key when keys are on (ApiKeyMiddleware has accepted it by then), else its
address (X-Forwarded-For believed only from ENHANCER_FORWARDED_ALLOW_IPS). Both limits are checked
before the image is decoded and before any tile is queued, so a client over a limit costs little:
the in-flight limit before the body is read, the megapixel budget from the image header once the
body has arrived (`charge_upload`, called by the route with the size it read).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from fastapi import FastAPI, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from enhancer.api.auth import KEY_CLIENT_STATE
from enhancer.api.errors import enhancer_error_response
from enhancer.api.forwarded import TrustedProxies
from enhancer.api.openapi import RETRY_AFTER, error_response_schema
from enhancer.api.route_match import check_guardable, mark_route
from enhancer.config import Settings
from enhancer.errors import TooManyRequestsError
from enhancer.limits_per_client import ClientLimits, Clock
from enhancer.metrics import Metrics

log = logging.getLogger(__name__)

#: `scope["state"]` entry naming the client an upload is counted against.
CLIENT_STATE = "enhancer_client"


class ClientLimitMiddleware:
    """Names the client of each upload and holds one of its in-flight slots while it runs (429
    before the body is read when it has none left)."""

    def __init__(
        self,
        app: ASGIApp,
        limits: ClientLimits,
        proxies: TrustedProxies,
        paths: frozenset[str],
    ):
        self.app = app
        self.limits = limits
        self.proxies = proxies
        self.paths = paths

    def client_of(self, scope: Scope) -> str:
        state = scope.setdefault("state", {})
        return state.get(KEY_CLIENT_STATE) or "address:" + self.proxies.client_host(scope)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        client = self.client_of(scope)
        try:
            finished = self.limits.start_upload(client)
        except TooManyRequestsError as error:
            mark_route(scope)  # counted under its route in the metrics
            response = enhancer_error_response(error)
            response.headers["Connection"] = "close"  # the body is not worth reading
            await response(scope, receive, send)
            return
        scope["state"][CLIENT_STATE] = client
        try:
            await self.app(scope, receive, send)
        finally:
            finished()


def charge_upload(request: Request, size: tuple[int, int] | None) -> None:
    """Charge the upload's megapixels to its client (429 when over budget); `size` is the
    (width, height) its header declares, read once the body has arrived and before decoding.

    A header Pillow cannot read (None) is not charged: decoding then refuses the file in almost
    every case.
    """
    limits: ClientLimits | None = getattr(request.app.state, "client_limits", None)
    client = request.scope.get("state", {}).get(CLIENT_STATE)
    if limits is None or limits.bucket is None or client is None:
        return
    if size is not None:
        limits.charge_pixels(client, size[0] * size[1])


def _document(app: FastAPI, paths: Iterable[str]) -> None:
    """Add the 429 answer to the OpenAPI document of `paths`."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        for path in paths:
            for operation in schema.get("paths", {}).get(path, {}).values():
                responses = operation.setdefault("responses", {})
                responses["429"] = error_response_schema(
                    "This client is over ENHANCER_MAX_CONCURRENT_PER_CLIENT uploads in flight or "
                    "ENHANCER_RATE_LIMIT_MPX_PER_MINUTE; `Retry-After` says when to retry.",
                    "this client already has 1 upload(s) in progress, the most one client may have "
                    "(ENHANCER_MAX_CONCURRENT_PER_CLIENT); wait for one to finish, then retry",
                    RETRY_AFTER,
                )
                operation["responses"] = dict(sorted(responses.items()))
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_client_limits(
    app: FastAPI, settings: Settings, metrics: Metrics, upload_paths: Iterable[str], clock: Clock | None = None
) -> ClientLimits | None:
    """Enforce the per-client limits on the upload paths when either is set; otherwise do nothing."""
    limits = ClientLimits(
        max_concurrent=settings.max_concurrent_per_client,
        mpx_per_minute=settings.rate_limit_mpx_per_minute,
        clock=clock or time.monotonic,
    )
    if not limits.active:
        app.state.client_limits = None
        return None
    limits.on_refusal = metrics.track_client_limits(limits.recently_limited)
    app.state.client_limits = limits
    paths = check_guardable(frozenset(upload_paths))
    app.add_middleware(
        ClientLimitMiddleware,
        limits=limits,
        proxies=TrustedProxies(settings.forwarded_allow_ips),
        paths=paths,
    )
    _document(app, sorted(paths))
    log.info(
        "per-client limits: %s uploads in flight, %s megapixels per minute; X-Forwarded-For "
        "believed from %s",
        settings.max_concurrent_per_client or "any number of",
        f"{settings.rate_limit_mpx_per_minute:g}" if settings.rate_limit_mpx_per_minute else "any number of",
        settings.forwarded_allow_ips or "no peer",
    )
    return limits
