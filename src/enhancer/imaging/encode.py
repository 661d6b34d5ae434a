"""RGB pixels to answer bytes that look like the input: alpha, greyness, PNG depth, ICC profile.

Pixels may be in any sample type enhancer.samples knows (the decoder's uint8/uint16 for an image
passed through, the pipeline's 16-bit stitched result, or float [0, 1]); plain RGB is converted a
band of rows at a time, so no float copy of the whole image is made.

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
from enhancer.imaging.png import write_png
from enhancer.samples import dtype_for_depth, from_unit_float, to_unit_float

#: Values per chunk when quantizing: bounds the float temporaries whatever the image size.
_QUANTIZE_CHUNK = 1 << 22


def answer_depth(fmt: OutputFormat, info: ImageInfo | None) -> int:
    """Bits per sample of the answer: PNG keeps a 16-bit input's depth, everything else is 8-bit."""
    return info.bit_depth if (info is not None and OutputFormat(fmt) is OutputFormat.png) else 8


def _quantize(values: np.ndarray, depth: int) -> np.ndarray:
    """Clip to [0, 1] and round to 8 or 16 bit, a band of rows at a time (samples of that depth
    already are: they are copied).

    Whole-image temporaries (float conversion, clip, scale) would cost 8 bytes a value on top of
    the input; in bands the only full-size allocation is the integer result.
    """
    dtype = dtype_for_depth(depth)
    if values.dtype == dtype:  # the formula below would give each sample back unchanged
        return np.array(values, copy=True)
    out = np.empty(values.shape, dtype)
    rows = max(1, _QUANTIZE_CHUNK // max(1, values[0].size)) if len(values) else 1
    for y in range(0, len(values), rows):
        from_unit_float(to_unit_float(values[y : y + rows]), dtype, out=out[y : y + rows])
    return out


def _grey_or_alpha_samples(
    rgb: np.ndarray, alpha: np.ndarray | None, *, grayscale: bool, composite: bool, pillow_la: bool, depth: int
) -> np.ndarray:
    """The answer's samples for a grey and/or transparent answer, a band of rows at a time: float
    [0, 1] only per band (grey is the channels' mean; `composite` puts the colour over white by
    `alpha`), then the layout the writer wants: grey+alpha for Pillow (`pillow_la`), else OpenCV's
    grey, BGR or BGRA (grey+alpha as three equal channels plus alpha)."""
    keep_alpha = alpha is not None and not composite
    if pillow_la:
        channels = 2
    elif grayscale:
        channels = 4 if keep_alpha else 1
    else:
        channels = 4 if keep_alpha else 3
    out = np.empty((*rgb.shape[:2], channels), dtype_for_depth(depth))
    rows = max(1, _QUANTIZE_CHUNK // max(1, rgb[0].size)) if len(rgb) else 1
    for y in range(0, len(rgb), rows):
        band = to_unit_float(rgb[y : y + rows])
        values = np.clip(band, 0.0, 1.0, out=None if np.may_share_memory(band, rgb) else band)  # never the caller's
        if grayscale:
            values = values.mean(axis=2, keepdims=True)
        opacity = None
        if alpha is not None:
            opacity = np.clip(to_unit_float(alpha[y : y + rows]), 0.0, 1.0)[:, :, None]
        if composite:
            values = values * opacity + (1.0 - opacity)
            opacity = None
        if grayscale and opacity is not None and not pillow_la:
            values = np.repeat(values, 3, axis=2)  # OpenCV writes alpha only with three colour channels
        elif values.shape[2] == 3:
            values = values[:, :, ::-1]  # RGB -> OpenCV's BGR
        if opacity is not None:
            values = np.concatenate([values, opacity], axis=2)
        from_unit_float(values, out.dtype, out=out[y : y + rows])
    return out


def encode(
    rgb: np.ndarray, fmt: OutputFormat, *, quality: int = 95, info: ImageInfo | None = None,
    png_compression: int | None = None,
) -> bytes:  # fmt: skip
    """Encode RGB pixels (uint8, uint16 or float [0, 1]) as `fmt`, like the input `info` describes
    (plain RGB if None).

    `quality` (1-100) applies to JPEG and WebP; PNG is lossless and ignores it. `png_compression`
    is the PNG's zlib level (0-9; same pixels, smaller file, more CPU, written by OpenCV); None is
    the preset for speed (zlib level 1, the "sub" filter, run-length strategy), which a plain RGB
    or grey answer gets from enhancer.imaging.png on every core.
    """
    if png_compression is not None and not 0 <= png_compression <= 9:
        raise ValueError(f"png_compression must be between 0 and 9 (or None), got {png_compression}")
    fmt = OutputFormat(fmt)
    rgb = np.asarray(rgb)
    alpha = info.alpha if info is not None else None
    grayscale = info.grayscale if info is not None else False
    depth = answer_depth(fmt, info)
    profile = info.icc_profile if info is not None else None
    height, width = rgb.shape[:2]
    plain = not grayscale and alpha is None
    preset_png = fmt is OutputFormat.png and png_compression is None
    if not plain:
        composite = alpha is not None and fmt is OutputFormat.jpeg  # JPEG has no alpha: over white
        # grey+alpha PNG: OpenCV cannot write it, Pillow can (8-bit only)
        pillow_la = grayscale and alpha is not None and fmt is OutputFormat.png and depth == 8
        pixels = _grey_or_alpha_samples(rgb, alpha, grayscale=grayscale, composite=composite, pillow_la=pillow_la, depth=depth)
        if pillow_la:
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, "PNG", compress_level=1 if png_compression is None else png_compression)
            return icc.embed(buffer.getvalue(), fmt, profile, grey=True, size=(width, height), alpha=True)
        if composite:
            alpha = None
    elif preset_png:  # plain RGB, kept in RGB order for enhancer.imaging.png
        pixels = rgb if rgb.dtype == dtype_for_depth(depth) else _quantize(rgb, depth)
    else:  # plain RGB: converted band by band, no float copy of the whole image
        pixels = _quantize(rgb[:, :, ::-1], depth)  # RGB -> OpenCV's BGR
    if pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if preset_png and (plain or pixels.ndim == 2):  # plain RGB or grey: the writer on every core
        return icc.embed(write_png(pixels), fmt, profile, grey=pixels.ndim == 2, size=(width, height), alpha=False)

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
