"""Upload bytes to RGB pixels plus everything else about the image, kept apart (ImageInfo).

The pixels keep the sample type they were decoded in (uint8 for 8-bit images, uint16 for 16-bit
ones; floating-point TIFFs as float32 in [0, 1]): an image waiting to be tiled, and its tiles,
cost one byte per sample instead of a float's four (enhancer.samples converts a batch at a time).

Decoding is OpenCV (fast, handles 8/16-bit, alpha, grey) with the file's EXIF orientation applied
here, because OpenCV only honours it when it also throws alpha and 16-bit depth away. The header is
read first (enhancer.imaging.formats), so limits, animation and undecodable layouts are refused
before any pixel is decoded; OpenCV's own limits (enhancer.limits) are the backstop.

How pictures as people have them come out (documented in the README's API section):

* EXIF orientation 1-8 is applied; the answer is upright and carries no EXIF.
* CMYK / YCCK JPEG (and CMYK TIFF) are converted to RGB with the plain inverse formula (as Pillow
  does); an embedded CMYK ICC profile is not applied and not carried (it cannot describe RGB).
* An ICC profile is kept when it describes RGB or grey (enhancer.imaging.icc).
* Grey in, grey out; grey+alpha PNG (and TIFF, whose alpha OpenCV drops, so Pillow reads it) keep
  their alpha.
* Alpha (RGBA, palette + tRNS, colour-key tRNS) is passed through unchanged.
* 16-bit PNG/TIFF (and floating-point TIFF) give bit depth 16, so PNG answers keep the precision.
* Animated WebP and APNG are refused with 415; a multi-page TIFF gives its first page.
* A JPEG whose coded data is cut short is refused (enhancer.imaging.jpeg), not filled with grey.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from enhancer.errors import BadImageError, PayloadTooLargeError, UnsupportedMediaTypeError
from enhancer.imaging import icc, jpeg
from enhancer.imaging.formats import (
    SUPPORTED_NAMES,
    check_size,
    check_tiff_layout,
    format_name,
    read_header,
    sniff_format,
    unsupported_error,
)
from enhancer.imaging.jpeg import JpegInfo


@dataclass(frozen=True, eq=False)
class ImageInfo:
    """Everything about an image except its colour pixels: what an answer needs to look like it."""

    width: int  # upright, after EXIF orientation
    height: int
    grayscale: bool  # the input had one colour channel: answer with one too
    bit_depth: int  # 8 or 16: PNG answers keep 16-bit precision
    source_format: str  # the sniffed input format ("jpeg", "png", ...)
    alpha: np.ndarray | None  # H x W samples of the pixels' type, passed through unchanged
    icc_profile: bytes | None  # an RGB or grey profile, carried to answers it fits
    jpeg: JpegInfo | None  # a JPEG input's quantisation tables, sampling and quality
    orientation: int = 1  # the EXIF orientation (1-8) applied to make the pixels upright


@dataclass(frozen=True, eq=False)
class DecodedImage:
    """An upload decoded for the model: the pixels, and the rest apart so the pixels can be dropped."""

    pixels: np.ndarray  # H x W x 3 RGB: uint8 or uint16 over their full range, or float32 in [0, 1]
    info: ImageInfo


def _apply_orientation(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Turn stored pixels upright as EXIF orientation 1-8 says (same mapping as PIL exif_transpose)."""
    if orientation == 2:
        return pixels[:, ::-1]
    if orientation == 3:
        return pixels[::-1, ::-1]
    if orientation == 4:
        return pixels[::-1, :]
    if orientation == 5:
        return pixels.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(pixels, k=-1)
    if orientation == 7:
        return pixels.swapaxes(0, 1)[::-1, ::-1]
    if orientation == 8:
        return np.rot90(pixels, k=1)
    return pixels


def _check_samples(pixels: np.ndarray) -> tuple[np.ndarray, int]:
    """Keep 8/16-bit unsigned samples as they are and bring floating-point ones to float32 [0, 1];
    also report 8 or 16 bits (what a PNG answer keeps).

    Other sample types are refused here too, in case the header check could not read the file.
    """
    if pixels.dtype == np.uint8:
        return pixels, 8
    if pixels.dtype == np.uint16:
        return pixels, 16
    if np.issubdtype(pixels.dtype, np.floating):
        return np.clip(np.nan_to_num(pixels.astype(np.float32)), 0.0, 1.0), 16
    raise UnsupportedMediaTypeError(
        f"the image stores {pixels.dtype.itemsize * 8}-bit "
        f"{'signed' if np.issubdtype(pixels.dtype, np.signedinteger) else 'unsigned'} integer samples, "
        "which have no agreed brightness scale; save it with 8- or 16-bit unsigned integer samples"
    )


def _colour_key_alpha(pixels: np.ndarray, key: object) -> np.ndarray | None:
    """Alpha (0 where a pixel equals the PNG tRNS colour key) for grey/RGB pixels OpenCV left opaque."""
    top = np.iinfo(pixels.dtype).max
    if pixels.ndim == 2 and isinstance(key, int):
        return np.where(pixels == key, 0, top).astype(pixels.dtype)
    if pixels.ndim == 3 and pixels.shape[2] == 3 and isinstance(key, tuple) and len(key) == 3:
        bgr = np.array(key[::-1], dtype=pixels.dtype)
        return np.where((pixels == bgr).all(axis=2), 0, top).astype(pixels.dtype)
    return None


def _tiff_alpha(data: bytes, grey: np.ndarray) -> np.ndarray | None:
    """The alpha of a grey+alpha TIFF (first page), which OpenCV decodes as plain grey; via Pillow."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            alpha = np.asarray(image.getchannel("A"))
    except (OSError, ValueError):
        return None
    if alpha.shape != grey.shape or alpha.dtype != grey.dtype:
        return None  # not the plain 8-bit layout Pillow reads; keep the grey without alpha
    return alpha


def decode(data: bytes, *, max_pixels: int | None = None, max_side: int | None = None) -> DecodedImage:
    """Decode upload bytes to upright RGB pixels in their own sample type (see DecodedImage),
    refusing unsupported, huge or broken images."""
    if not data:
        raise BadImageError("the uploaded file is empty; attach an image in the 'image' field")
    fmt = sniff_format(data)
    if fmt is None:
        raise unsupported_error(data)
    header = read_header(data, fmt)
    if header is not None:
        check_size(header.width, header.height, max_pixels, max_side)
        if header.animated and fmt in ("webp", "png"):
            raise UnsupportedMediaTypeError(
                f"the upload is an animated {'WebP' if fmt == 'webp' else 'PNG (APNG)'}; animated "
                f"images are not supported: send a single still frame as {SUPPORTED_NAMES}"
            )
        if fmt == "jpeg":
            jpeg.check_plausible_size(len(data), header.width, header.height)
    if fmt == "tiff":
        check_tiff_layout(data)
    orientation = header.orientation if header is not None else 1

    try:
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # OpenCV's own limits (enhancer.limits) or a decoder assertion
        if "CV_IO_MAX_IMAGE" in str(exc):
            raise PayloadTooLargeError(
                "the image is larger than the decoder's limit (ENHANCER_MAX_PIXELS / "
                "ENHANCER_MAX_IMAGE_SIDE); downscale or crop it and try again"
            ) from None
        pixels = None
    if pixels is None or pixels.size == 0:
        raise BadImageError(f"the file looks like {format_name(fmt)} but could not be decoded (truncated or corrupt?)")
    check_size(pixels.shape[1], pixels.shape[0], max_pixels, max_side)
    if fmt == "jpeg" and header is not None:  # the check decodes with Pillow, which read the header
        jpeg.check_complete(data, pixels)

    mode = header.mode if header is not None else ""
    extra_alpha = None
    if header is not None and header.transparency is not None and pixels.ndim in (2, 3):
        if pixels.ndim == 2 or pixels.shape[2] == 3:  # OpenCV ignored a colour-key tRNS
            extra_alpha = _colour_key_alpha(pixels, header.transparency)
    if fmt == "tiff" and mode == "LA" and pixels.ndim == 2:  # OpenCV dropped the alpha
        extra_alpha = _tiff_alpha(data, pixels)
    if mode == "CMYK" and pixels.ndim == 3 and pixels.shape[2] == 4:
        pixels = pixels[:, :, :3]  # libtiff's CMYK -> RGBA conversion adds an opaque alpha
    if extra_alpha is not None:
        pixels = np.dstack([pixels, extra_alpha])
    pixels = _apply_orientation(pixels, orientation)

    values, depth = _check_samples(pixels)
    del pixels
    if values.ndim == 2:
        values = values[:, :, None]
    channels = values.shape[2]
    alpha = None
    if channels in (2, 4):
        alpha = np.ascontiguousarray(values[:, :, -1])
        values = values[:, :, :-1]
        channels -= 1
    # OpenCV hands grey+alpha PNG over as BGRA with three equal channels
    grey_alpha_png = fmt == "png" and len(data) > 25 and data[25] == 4
    grayscale = channels == 1 or (channels == 3 and (mode in ("LA", "La") or grey_alpha_png))
    if channels == 1:
        rgb = np.repeat(values, 3, axis=2)
    else:
        rgb = values[:, :, 2::-1]  # OpenCV's BGR -> RGB

    profile = header.icc_profile if header is not None else None
    if icc.colour_space(profile) not in (b"RGB ", b"GRAY") or mode == "CMYK":
        profile = None  # a CMYK (or unreadable) profile does not describe the RGB we hand on
    rgb = np.ascontiguousarray(rgb)
    info = ImageInfo(
        width=int(rgb.shape[1]),
        height=int(rgb.shape[0]),
        grayscale=grayscale,
        bit_depth=depth,
        source_format=fmt,
        alpha=alpha,
        icc_profile=profile,
        jpeg=header.jpeg if header is not None else None,
        orientation=orientation,
    )
    return DecodedImage(pixels=rgb, info=info)
