"""Float RGB pixels to answer bytes that look like the input: alpha, greyness, PNG depth, ICC profile.

Only the input's ImageInfo is needed, not its pixels, so a caller can drop the decoded pixels as
soon as they are cut into tiles. JPEG cannot store transparency, so a transparent input is
composited over white there; grey+alpha is written as RGBA where OpenCV has no grey+alpha layout
(16-bit PNG, WebP).
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

from enhancer.imaging import icc
from enhancer.imaging.decode import ImageInfo
from enhancer.imaging.formats import OutputFormat

#: Values per chunk when quantizing: bounds the float temporaries whatever the image size.
_QUANTIZE_CHUNK = 1 << 22


def _quantize(values: np.ndarray, depth: int) -> np.ndarray:
    """Clip to [0, 1] and round to 8 or 16 bit, a band of rows at a time.

    Whole-image temporaries (clip, scale) would cost 8 bytes a value on top of the input; in bands
    the only full-size allocation is the integer result.
    """
    top = 65535.0 if depth == 16 else 255.0
    dtype = np.uint16 if depth == 16 else np.uint8
    out = np.empty(values.shape, dtype)
    rows = max(1, _QUANTIZE_CHUNK // max(1, values[0].size)) if len(values) else 1
    for y in range(0, len(values), rows):
        band = np.clip(values[y : y + rows], 0.0, 1.0)
        band *= top
        band += 0.5
        np.copyto(out[y : y + rows], band, casting="unsafe")  # truncates, as astype did
    return out


def encode(
    rgb: np.ndarray, fmt: OutputFormat, *, quality: int = 95, info: ImageInfo | None = None,
    png_compression: int | None = None,
) -> bytes:  # fmt: skip
    """Encode float RGB [0, 1] as `fmt`, like the input `info` describes (plain RGB if None).

    `quality` (1-100) applies to JPEG and WebP; PNG is lossless and ignores it. `png_compression`
    is the PNG's zlib level (0-9; same pixels, smaller file, more CPU); None is OpenCV's preset
    for speed (zlib level 1, the "sub" filter, run-length strategy).
    """
    if png_compression is not None and not 0 <= png_compression <= 9:
        raise ValueError(f"png_compression must be between 0 and 9 (or None), got {png_compression}")
    fmt = OutputFormat(fmt)
    alpha = info.alpha if info is not None else None
    grayscale = info.grayscale if info is not None else False
    depth = info.bit_depth if (info is not None and fmt is OutputFormat.png) else 8
    profile = info.icc_profile if info is not None else None
    if grayscale or alpha is not None:
        values = np.clip(rgb, 0.0, 1.0).astype(np.float32, copy=False)
    else:  # plain RGB: no full-size copy, _quantize clips band by band
        values = np.asarray(rgb, dtype=np.float32)
    height, width = values.shape[:2]

    if grayscale:
        values = values.mean(axis=2, keepdims=True)
    if alpha is not None and fmt is OutputFormat.jpeg:
        values = values * alpha[:, :, None] + (1.0 - alpha[:, :, None])
        alpha = None
    if grayscale and alpha is not None and fmt is OutputFormat.png and depth == 8:
        # grey+alpha PNG: OpenCV cannot write it, Pillow can (8-bit only)
        pixels = _quantize(np.concatenate([values, alpha[:, :, None]], axis=2), 8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "PNG", compress_level=1 if png_compression is None else png_compression)
        return icc.embed(buffer.getvalue(), fmt, profile, grey=True, size=(width, height), alpha=True)
    if grayscale and alpha is not None:
        values = np.repeat(values, 3, axis=2)  # OpenCV writes alpha only with three colour channels

    if values.shape[2] == 3:
        values = values[:, :, ::-1]  # RGB -> OpenCV's BGR
    if alpha is not None:
        values = np.concatenate([values, alpha[:, :, None]], axis=2)
    pixels = _quantize(values, depth)
    if pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]

    params: list[int] = []
    if fmt is OutputFormat.jpeg:
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    elif fmt is OutputFormat.webp:
        params = [cv2.IMWRITE_WEBP_QUALITY, int(quality)]
    elif png_compression is not None:
        params = [cv2.IMWRITE_PNG_COMPRESSION, int(png_compression)]
    ok, buffer = cv2.imencode("." + fmt.extension, np.ascontiguousarray(pixels), params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {pixels.shape} image as {fmt.value}")
    grey_out = pixels.ndim == 2 and fmt is not OutputFormat.webp  # WebP is always colour
    return icc.embed(buffer.tobytes(), fmt, profile, grey=grey_out, size=(width, height), alpha=alpha is not None)
