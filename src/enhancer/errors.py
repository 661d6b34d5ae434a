"""Errors a request can end in, each carrying its HTTP status and a message the user can act on.

The pipeline raises these without knowing about HTTP responses; the API turns every one of them
into `{"detail": ...}` with its status in a single handler (`enhancer.api.errors`).
"""

from __future__ import annotations

import math


class EnhancerError(Exception):
    """Base class: `status_code` is the HTTP status, `detail` the message shown to the client."""

    status_code: int = 500

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.detail = detail
        self.headers = dict(headers or {})


class MalformedRequestError(EnhancerError):
    """The request itself is broken (e.g. multipart without a usable boundary)."""

    status_code = 400


class UnauthorizedError(EnhancerError):
    """No valid API key: `WWW-Authenticate` names the Bearer scheme the client must use (RFC 6750)."""

    status_code = 401

    def __init__(self, detail: str, *, invalid_token: bool = False):
        challenge = 'Bearer realm="enhancer"'
        if invalid_token:  # a key was sent but is not one of ours
            challenge += ', error="invalid_token"'
        super().__init__(detail, headers={"WWW-Authenticate": challenge})


class BadImageError(EnhancerError):
    """The bytes claim to be a supported image but cannot be decoded (truncated, corrupt)."""

    status_code = 400


class RequestBodyTimeoutError(EnhancerError):
    """The client did not send its whole request body within `ENHANCER_REQUEST_READ_TIMEOUT_S`."""

    status_code = 408


class PayloadTooLargeError(EnhancerError):
    """The upload or the image's pixel count is over the configured limit."""

    status_code = 413


class UnsupportedMediaTypeError(EnhancerError):
    """The upload is not one of the image formats we decode."""

    status_code = 415


class InvalidParameterError(EnhancerError):
    """A request parameter is missing or out of range."""

    status_code = 422


class TooManyRequestsError(EnhancerError):
    """This client is over one of its own limits (uploads in flight, megapixels per minute);
    others are still served. `Retry-After` says when this client may try again."""

    status_code = 429

    def __init__(self, detail: str, *, retry_after_s: float):
        super().__init__(detail, headers={"Retry-After": str(max(1, math.ceil(retry_after_s)))})
        self.retry_after_s = retry_after_s


class InferenceFailedError(EnhancerError):
    """The model raised while running the batch that held this request's tiles."""

    status_code = 500


class ServiceUnavailableError(EnhancerError):
    """The service cannot take the request now; `Retry-After` says when to try again."""

    status_code = 503

    def __init__(self, detail: str, *, retry_after_s: float):
        super().__init__(detail, headers={"Retry-After": str(max(1, math.ceil(retry_after_s)))})
        self.retry_after_s = retry_after_s


class OverloadedError(ServiceUnavailableError):
    """The tile queue is full."""


class PixelBudgetError(ServiceUnavailableError):
    """The pixels in flight are at the budget (ENHANCER_MAX_PIXELS_IN_FLIGHT): admitting this image
    now could take more memory than the server has."""


class NotReadyError(ServiceUnavailableError):
    """The model is still loading or warming up, or cannot run (see /readyz)."""


class ShuttingDownError(ServiceUnavailableError):
    """The server got SIGTERM: it finishes what it has and takes nothing new."""


class RequestTimeoutError(EnhancerError):
    """The request waited longer than `ENHANCER_REQUEST_TIMEOUT_S` for its result."""

    status_code = 504
