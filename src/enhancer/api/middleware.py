"""ASGI middleware: request metrics, and the upload size limit enforced while the body streams in.

Both are plain ASGI (not BaseHTTPMiddleware) so they add no task hop and never buffer bodies.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from enhancer.api.errors import enhancer_error_response
from enhancer.errors import PayloadTooLargeError
from enhancer.metrics import Metrics

#: Room for multipart boundaries and part headers on top of the image bytes themselves.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


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


class _BodyTooLarge(Exception):
    """Raised into the app's body reader when the upload passes the limit."""


class UploadLimitMiddleware:
    """Refuses request bodies over the limit: by Content-Length up front, else while reading.

    A declared length over the limit is answered with 413 before any byte is read. Otherwise bytes
    are counted as they arrive; past the limit, reading stops and whatever the app was about to
    answer (it sees a failed body read) is replaced by the same 413.
    """

    def __init__(self, app: ASGIApp, max_upload_bytes: int):
        self.app = app
        self.max_upload_bytes = max_upload_bytes
        self.max_body_bytes = max_upload_bytes + MULTIPART_OVERHEAD_BYTES

    def _error(self) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f"the upload is larger than the {self.max_upload_bytes:,} byte limit "
            "(ENHANCER_MAX_UPLOAD_BYTES); send a smaller file"
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
                    await enhancer_error_response(self._error())(scope, receive, send)
                    return

        received = 0
        exceeded = False
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if exceeded:
                return  # the app's answer to the aborted read is replaced below
            response_started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not response_started:
            await enhancer_error_response(self._error())(scope, receive, send)
