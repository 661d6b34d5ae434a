"""Image size limits shared by the settings and OpenCV, and OpenCV's copy of them.

OpenCV reads `OPENCV_IO_MAX_IMAGE_PIXELS` / `OPENCV_IO_MAX_IMAGE_WIDTH` / `OPENCV_IO_MAX_IMAGE_HEIGHT`
once, when the `cv2` extension is loaded, and refuses to decode anything larger. `enhancer/__init__.py`
calls `configure_opencv()` before any module of the package can import cv2, so the limits OpenCV
enforces are the service's own (`ENHANCER_MAX_PIXELS`, `ENHANCER_MAX_IMAGE_SIDE` from the environment
or the working directory's `.env`, or their defaults)
instead of OpenCV's 1 GP / 1 M-pixel-side defaults. This module must not import cv2 itself.

The service checks the limits from the image header before decoding; OpenCV's copy is the backstop
for files whose header only OpenCV can read. If cv2 was already imported when the package was
(e.g. `import cv2` before `import enhancer`), OpenCV keeps what it read then; `OPENCV_LIMITS`
says so and the server logs a warning at start-up.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

#: Default pixel limit (imgproxy's default): a 50 MP image needs ~1.5 GB of working memory.
DEFAULT_MAX_PIXELS = 50_000_000
#: Default longest side. 16384 is also the largest side WebP can store (16383) rounded up.
DEFAULT_MAX_IMAGE_SIDE = 16384


@dataclass(frozen=True)
class OpenCVLimits:
    """The limits OpenCV's image codecs enforce in this process (None: unknown, cv2 came first)."""

    max_pixels: int | None
    max_side: int | None
    applied: bool  #: False if cv2 had been imported before enhancer set them


def _dotenv(name: str, path: str = ".env") -> str | None:
    """`name`'s value in the working directory's .env (as pydantic-settings would read it), if any."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                key, sep, value = line.strip().partition("=")
                if sep and key.strip().removeprefix("export ").strip() == name:
                    return value.strip().strip("'\"")
    except OSError:
        pass
    return None


def _positive_int(name: str, default: int, *, dotenv: bool = False) -> int:
    raw = os.environ.get(name)
    if raw is None and dotenv:
        raw = _dotenv(name)
    try:
        value = int(raw or "")
    except ValueError:
        return default
    return value if value > 0 else default


def configure_opencv() -> OpenCVLimits:
    """Export OpenCV's codec limits from the ENHANCER_* settings (environment, then the working
    directory's .env, then defaults) if cv2 is not loaded yet.

    An operator's explicit OPENCV_IO_MAX_* variable wins (setdefault). Returns what OpenCV will use.
    """
    if "cv2" in sys.modules:
        return OpenCVLimits(None, None, applied=False)
    # environment first, then .env: the precedence the settings themselves use
    pixels = _positive_int("ENHANCER_MAX_PIXELS", DEFAULT_MAX_PIXELS, dotenv=True)
    side = _positive_int("ENHANCER_MAX_IMAGE_SIDE", DEFAULT_MAX_IMAGE_SIDE, dotenv=True)
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(pixels))
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_WIDTH", str(side))
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_HEIGHT", str(side))
    return OpenCVLimits(
        max_pixels=_positive_int("OPENCV_IO_MAX_IMAGE_PIXELS", pixels),
        max_side=min(
            _positive_int("OPENCV_IO_MAX_IMAGE_WIDTH", side), _positive_int("OPENCV_IO_MAX_IMAGE_HEIGHT", side)
        ),
        applied=True,
    )


def mismatch(max_pixels: int, max_side: int, limits: OpenCVLimits) -> str | None:
    """A warning if OpenCV would refuse images the settings accept, else None."""
    if not limits.applied:
        return (
            "cv2 was imported before enhancer, so OpenCV's codec limits were not set from "
            "ENHANCER_MAX_PIXELS / ENHANCER_MAX_IMAGE_SIDE; import enhancer first"
        )
    if (limits.max_pixels or 0) < max_pixels or (limits.max_side or 0) < max_side:
        return (
            f"OpenCV decodes at most {limits.max_pixels:,} pixels and {limits.max_side} px a side "
            f"(read from the environment or .env at import), less than the settings allow "
            f"({max_pixels:,}, {max_side}); set ENHANCER_MAX_PIXELS / ENHANCER_MAX_IMAGE_SIDE in the "
            "environment or .env, not only in code, so both agree"
        )
    return None
