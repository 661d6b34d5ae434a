"""ASGI middleware: request metrics, the shutdown gate, and the limits enforced while a body streams in.

All are plain ASGI (not BaseHTTPMiddleware) so they add no task hop and never buffer bodies.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from enhancer.api.errors import enhancer_error_response
from enhancer.api.route_match import mark_route
from enhancer.errors import (
    EnhancerError,
    MalformedRequestError,
    PayloadTooLargeError,
    RequestBodyTimeoutError,
    ShuttingDownError,
    UnsupportedMediaTypeError,
)
from enhancer.metrics import Metrics

#: Room for multipart boundaries and part headers on top of the image bytes themselves.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
#: RFC 2046 section 5.1.1: a multipart boundary is 1 to 70 characters.
MAX_BOUNDARY_LENGTH = 70


async def _answer(error: EnhancerError, scope: Scope, receive: Receive, send: Send, *, close: bool) -> None:
    """Send `error` as the JSON error body; `close` asks the server to drop the connection after it
    (the rest of an unread body is not worth reading, and a trickling client is cut off)."""
    response = enhancer_error_response(error)
    if close:
        response.headers["Connection"] = "close"
    await response(scope, receive, send)


class MetricsMiddleware:
    """Counts every answered request by route template (not raw path) and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # if the app dies before answering, that is what the client sees

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            # Label by the matched template so random 404 paths cannot blow up cardinality.
            route = getattr(scope.get("route"), "path", None) or "<unmatched>"
            self.metrics.observe_request(route, scope["method"], status, time.perf_counter() - started)


class _BodyRejected(Exception):
    """Raised into the app's body reader when the upload passes the size limit or the deadline."""


class UploadLimitMiddleware:
    """Refuses request bodies over the size limit or slower than the read deadline.

    A declared length over the limit is answered with 413 before any byte is read. Otherwise bytes
    are counted as they arrive; past the limit reading stops. Each read of the body is also given
    only what is left of `read_timeout_s` counted from the start of the request, so a client that
    trickles its upload cannot hold a connection (and its buffered bytes) forever: 408. In both
    cases whatever the app was about to answer (it sees a failed body read) is replaced by the
    error, sent with `Connection: close` so the server stops reading the rest. A refusal on one
    of `paths` (exact paths) is counted in the metrics under its route also when it comes before
    routing.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_upload_bytes: int,
        read_timeout_s: float | None = None,
        paths: frozenset[str] = frozenset(),
    ):
        self.app = app
        self.paths = paths
        self.max_upload_bytes = max_upload_bytes
        self.max_body_bytes = max_upload_bytes + MULTIPART_OVERHEAD_BYTES
        self.read_timeout_s = read_timeout_s

    def _too_large(self) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f"the upload is larger than the {self.max_upload_bytes:,} byte limit "
            "(ENHANCER_MAX_UPLOAD_BYTES); send a smaller file"
        )

    def _too_slow(self) -> RequestBodyTimeoutError:
        return RequestBodyTimeoutError(
            f"the request body was not received within {self.read_timeout_s:g} s "
            "(ENHANCER_REQUEST_READ_TIMEOUT_S); the connection is too slow or stalled: retry, "
            "or send a smaller file"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_body_bytes:
                    if scope["path"] in self.paths:
                        mark_route(scope)
                    await _answer(self._too_large(), scope, receive, send, close=True)
                    return

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.read_timeout_s if self.read_timeout_s else None
        received = 0
        body_done = False
        failure: EnhancerError | None = None
        response_started = False

        async def guarded_receive() -> Message:
            nonlocal received, body_done, failure
            if body_done or failure is not None:  # after the body: disconnect watching, no deadline
                return await receive()
            try:
                if deadline is None:
                    message = await receive()
                else:
                    async with asyncio.timeout(max(0.0, deadline - loop.time())):
                        message = await receive()
            except TimeoutError:
                failure = self._too_slow()
                raise _BodyRejected from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    failure = self._too_large()
                    raise _BodyRejected
                body_done = not message.get("more_body", False)
            else:
                body_done = True  # http.disconnect: nothing more will come
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if failure is not None:
                return  # the app's answer to the aborted read is replaced below
            response_started = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception:
            if failure is None:
                raise
        if failure is not None and not response_started:
            if scope["path"] in self.paths:
                mark_route(scope)
            await _answer(failure, scope, receive, send, close=True)


class UploadGateMiddleware:
    """Checks an upload request before its body is read: the server is taking uploads, and the body
    is multipart/form-data with a usable boundary. Counts the uploads in flight for the drain.

    `refuse` returns the error to answer new uploads with (e.g. while shutting down), or None;
    `tracker` is told when an admitted upload starts and ends.
    """

    def __init__(
        self,
        app: ASGIApp,
        paths: frozenset[str],
        refuse: Callable[[], EnhancerError | None],
        tracker=None,
    ):
        self.app = app
        self.paths = paths
        self.refuse = refuse
        self.tracker = tracker

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        error = self.refuse() or content_type_error(scope)
        if error is not None:
            mark_route(scope)  # counted under its route in the metrics
            await _answer(error, scope, receive, send, close=True)
            return
        if self.tracker is None:
            await self.app(scope, receive, send)
            return
        response_started = False

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        self.tracker.upload_started()
        try:
            await self.app(scope, receive, tracking_send)
        except asyncio.CancelledError:
            # The server cancels what is still running at the shutdown deadline; it would answer
            # a bare 500. Say what happened instead, and end the request task normally: it is
            # answered, and nothing waits for it any more.
            if response_started or self.refuse() is None:
                raise
            await _answer(
                ShuttingDownError(
                    "the server shut down before this upload was finished (it did not arrive or "
                    "was not processed within ENHANCER_SHUTDOWN_TIMEOUT_S); retry",
                    retry_after_s=1,
                ),
                scope,
                receive,
                send,
                close=True,
            )
        finally:
            self.tracker.upload_finished()


def content_type_error(scope: Scope) -> EnhancerError | None:
    """Why the request's Content-Type cannot carry the upload, or None if it is multipart/form-data
    with a boundary the parser accepts."""
    raw = next((value for name, value in scope.get("headers", ()) if name == b"content-type"), b"")
    text = raw.decode("latin-1").strip()
    media_type, _, params = text.partition(";")
    media_type = media_type.strip().lower()
    if media_type != "multipart/form-data":
        got = f"Content-Type {media_type}" if media_type else "no Content-Type"
        return UnsupportedMediaTypeError(
            f"the request must be multipart/form-data with the image in the field 'image' (got "
            f"{got}); e.g. curl -F image=@photo.jpg"
        )
    boundary = None
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "boundary":
            boundary = value.strip().strip('"')
    if not boundary:
        return MalformedRequestError("the multipart/form-data Content-Type has no boundary parameter")
    if len(boundary) > MAX_BOUNDARY_LENGTH:
        return MalformedRequestError(
            f"the multipart boundary is {len(boundary)} characters long; at most "
            f"{MAX_BOUNDARY_LENGTH} are allowed (RFC 2046)"
        )
    return None
