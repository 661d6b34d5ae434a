"""What the OpenAPI document says about an upload beyond what FastAPI reads from the code.

One example answer per error status, each the words the server really answers with (the numbers
are those of the default settings; the test suite checks every example against a real answer),
the headers each answer carries, and a small valid image as the upload's example so that
schema-driven tools (schemathesis, Swagger UI's examples) can get a 200.
"""

from __future__ import annotations

import struct
from typing import Any

from enhancer.api.schemas import ErrorBody
from enhancer.imaging import SUPPORTED_NAMES

#: Error statuses of POST /upscale: (when it is answered, the example answer's detail).
#: 401 and 429 are declared by the API key check and the per-client limits when they are on.
UPLOAD_ERRORS: dict[int, tuple[str, str]] = {
    400: (
        "The file is a supported type but empty, corrupt or truncated; or the multipart body is malformed "
        "or incomplete (no boundary, a boundary over 70 characters, no closing boundary, too many parts).",
        "the file looks like JPEG but could not be decoded (truncated or corrupt?)",
    ),
    408: (
        "The request body was not received within ENHANCER_REQUEST_READ_TIMEOUT_S; the connection is closed.",
        "the request body was not received within 120 s (ENHANCER_REQUEST_READ_TIMEOUT_S); the connection "
        "is too slow or stalled: retry, or send a smaller file",
    ),
    413: (
        "The upload exceeds ENHANCER_MAX_UPLOAD_BYTES, or the image exceeds ENHANCER_MAX_PIXELS or has a side "
        "longer than ENHANCER_MAX_IMAGE_SIDE, or its answer at the asked `scale` (scale² x its pixels) would exceed "
        "ENHANCER_MAX_OUTPUT_PIXELS (the message names the largest input that fits at that scale).",
        "the upload is larger than the 52,428,800 byte limit (ENHANCER_MAX_UPLOAD_BYTES); send a smaller file",
    ),
    415: (
        f"The file is not {SUPPORTED_NAMES}, is animated, or is a TIFF whose channels or sample type are not "
        "supported; or the body is not multipart/form-data.",
        f"the upload is not a supported image; send {SUPPORTED_NAMES}",
    ),
    422: (
        "The `image` field is missing, is text, or holds more than one file; or a query parameter is invalid "
        "(e.g. an unknown `model`, a `scale` other than 1, 2 or 4, or one no served model has).",
        "form field 'image': is required: send the image as multipart/form-data in this field",
    ),
    500: (
        "The model failed on the batch holding this image; the server keeps serving.",
        "the model failed while processing this image (RuntimeError); the server is still running, so "
        "retrying may succeed; details are in the server log",
    ),
    503: (
        "The pixels in flight are at ENHANCER_MAX_PIXELS_IN_FLIGHT, the queue is full, the model is still "
        "warming up, or the server is shutting down; see `Retry-After`.",
        "the server is busy: 510 tiles are queued (limit 512) and this image needs 4; retry in about 2.5 s",
    ),
    504: (
        "The image was not enhanced within ENHANCER_REQUEST_TIMEOUT_S.",
        "the image was not enhanced within 300 s (ENHANCER_REQUEST_TIMEOUT_S); the server is busy or the "
        "image is very large: retry later or send a smaller image",
    ),
}


def header(description: str, example: str | int, *, required: bool = True, integer: bool = False) -> dict[str, Any]:
    """One response header's OpenAPI declaration."""
    schema: dict[str, Any] = {"type": "integer", "minimum": 1} if integer else {"type": "string"}
    return {"description": description, "required": required, "schema": schema, "example": example}


RETRY_AFTER = {"Retry-After": header("Seconds to wait before trying again.", 3, integer=True)}

#: Headers of a 200 answer.
SUCCESS_HEADERS = {
    "Content-Disposition": header(
        "`inline`, with the download name `<stem>_enhanced.<ext>` (`<stem>_x2.<ext>`, `<stem>_x4.<ext>` for "
        "an enlarged answer): an ASCII `filename` and, for names with other characters, their UTF-8 form in "
        "`filename*` (RFC 6266).",
        "inline; filename=\"foto_enhanced.png\"; filename*=UTF-8''f%C3%B6to_enhanced.png",
    ),
    "Server-Timing": header(
        "Milliseconds spent in each stage of the pipeline.",
        "decode;dur=3.1, tile;dur=0.4, queue;dur=0.2, infer;dur=180.5, encode;dur=6.0",
    ),
    "X-Enhancer-Model": header("The model the image was sent to.", "dejpeg"),
    "X-Enhancer-Passed-Through": header(
        "Present when the model was not run and the answer holds the input's own pixels: "
        "`jpeg-quality=<q>` for a JPEG of at least ENHANCER_PASS_THROUGH_JPEG_QUALITY, `resaved-jpeg` for a JPEG "
        "that was a coarser JPEG before, saved again at the same block grid (strength auto only), `strength=off` "
        "when asked.",
        "jpeg-quality=95",
        required=False,
    ),
}

#: Headers of error answers, by status.
ERROR_HEADERS = {503: RETRY_AFTER}


def error_response(description: str, example: str, headers: dict | None = None) -> dict[str, Any]:
    """An error answer's declaration for FastAPI's `responses=`: the JSON body with its example."""
    declared: dict[str, Any] = {
        "model": ErrorBody,
        "description": description,
        "content": {"application/json": {"example": {"detail": example}}},
    }
    if headers:
        declared["headers"] = headers
    return declared


def error_response_schema(description: str, example: str, headers: dict | None = None) -> dict[str, Any]:
    """The same declaration as plain OpenAPI, for a document patched after FastAPI built it."""
    declared: dict[str, Any] = {
        "description": description,
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/ErrorBody"},
                "example": {"detail": example},
            }
        },
    }
    if headers:
        declared["headers"] = headers
    return declared


def upload_error_responses() -> dict[int, dict[str, Any]]:
    """`responses=` entries for the error statuses of an upload route."""
    return {
        status: error_response(description, example, ERROR_HEADERS.get(status))
        for status, (description, example) in UPLOAD_ERRORS.items()
    }


def example_image() -> str:
    """A 4x4 24-bit BMP whose every byte is below 0x80, as a string: the text of the JSON example is
    the file itself, so a tool that sends the example (as UTF-8 or Latin-1) sends a valid image."""
    width = height = 4
    pixels = bytes(
        value
        for y in range(height)
        for x in range(width)
        for value in (0x20 + 0x10 * x, 0x30 + 0x0C * y, 0x70 - 0x08 * (x + y))  # blue, green, red
    )
    header_size, info_size = 14, 40
    data = (
        b"BM"
        + struct.pack("<IHHI", header_size + info_size + len(pixels), 0, 0, header_size + info_size)
        + struct.pack("<IiiHHIIiiII", info_size, width, height, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
        + pixels
    )
    assert max(data) < 0x80, "the example must be plain ASCII"
    return data.decode("ascii")
