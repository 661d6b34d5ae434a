"""The one place where failures become HTTP answers: `{"detail": "<what to do>"}` plus status.

Pipeline errors carry their own status (enhancer.errors); FastAPI's validation errors are
rewritten into one readable sentence; anything unexpected becomes a 500 without a stack trace.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from enhancer.errors import EnhancerError, ServiceUnavailableError

log = logging.getLogger(__name__)

_LOCATIONS = {"query": "query parameter", "body": "form field", "path": "path parameter", "header": "header"}


def error_response(status_code: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON error body every failure answers with."""
    return JSONResponse({"detail": detail}, status_code=status_code, headers=headers)


def enhancer_error_response(exc: EnhancerError) -> JSONResponse:
    """Answer for a pipeline error: its status, message and headers (e.g. Retry-After)."""
    return error_response(exc.status_code, exc.detail, exc.headers)


def describe_validation_error(exc: RequestValidationError) -> str:
    """Turn FastAPI's list of validation errors into one sentence naming each bad input."""
    parts = []
    for error in exc.errors():
        loc = [str(p) for p in error.get("loc", ())]
        where = _LOCATIONS.get(loc[0], loc[0]) if loc else "request"
        name = loc[-1] if len(loc) > 1 else ""
        message = error.get("msg", "is invalid")
        if error.get("type") == "missing" and where == "form field":
            message = "is required: send the image as multipart/form-data in this field"
        elif where == "form field" and "Expected UploadFile" in str(message):
            message = "must be a file upload, not a text value (e.g. curl -F image=@photo.jpg)"
        parts.append(f"{where} '{name}': {message}" if name else f"{where}: {message}")
    return "; ".join(parts) or "the request is invalid"


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that map every failure to the JSON error body."""

    @app.exception_handler(EnhancerError)
    async def _enhancer_error(request: Request, exc: EnhancerError) -> JSONResponse:
        if exc.status_code >= 500 and not isinstance(exc, ServiceUnavailableError):
            # 503s (warming up, queue full) are expected load-shedding: not worth a warning each
            log.warning("%s %s -> %d: %s", request.method, request.url.path, exc.status_code, exc.detail)
        return enhancer_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, describe_validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = str(exc.detail)
        if exc.status_code == 400 and request.method == "POST":
            # the form parser's own words ("Too many fields...", "Invalid multipart data.")
            detail = f"the multipart/form-data body could not be parsed: {detail}"
        return error_response(exc.status_code, detail, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal server error; the failure was logged on the server")
