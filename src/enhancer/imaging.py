"""Image bytes in and out: format sniffing, size limits, decoding to float RGB, encoding.

Decoding is OpenCV (fast, handles 8/16-bit, alpha, grey) with the file's EXIF orientation applied
ourselves, because OpenCV only honours it when it also throws alpha and 16-bit depth away. The
pixel limit is checked from the header with Pillow, which reads the size without decoding, so a
small file that decompresses to gigapixels is refused before it costs any memory.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from enum import Enum

import cv2
import numpy as np
from PIL import Image

from enhancer.errors import BadImageError, PayloadTooLargeError, UnsupportedMediaTypeError

SUPPORTED_INPUTS = ("jpeg", "png", "webp", "bmp", "tiff")


class OutputFormat(str, Enum):
    """Formats an answer can be encoded in; PNG is lossless so the restoration is not re-damaged."""

    png = "png"
    jpeg = "jpeg"
    webp = "webp"

    @property
    def media_type(self) -> str:
        return f"image/{self.value}"

    @property
    def extension(self) -> str:
        return {"png": "png", "jpeg": "jpg", "webp": "webp"}[self.value]


@dataclass(frozen=True)
class DecodedImage:
    """An image ready for the model, plus what is needed to encode the answer like the input."""

    rgb: np.ndarray  # H x W x 3 float32 in [0, 1]
    alpha: np.ndarray | None  # H x W float32 in [0, 1], passed through unchanged
    grayscale: bool  # the input had one colour channel: answer with one too
    bit_depth: int  # 8 or 16: PNG answers keep 16-bit precision
    source_format: str  # one of SUPPORTED_INPUTS

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    def without_pixels(self) -> DecodedImage:
        """This image's metadata and alpha for `encode(like=...)`, without its colour pixels.

        Once the pixels are cut into tiles the float copy is dead weight (12 bytes a pixel, 0.6 GB
        for 48 MP); `rgb` becomes a zero-byte read-only placeholder of the same shape.
        """
        placeholder = np.broadcast_to(np.zeros((), np.float32), self.rgb.shape)
        return DecodedImage(placeholder, self.alpha, self.grayscale, self.bit_depth, self.source_format)


def sniff_format(data: bytes) -> str | None:
    """Name the image format from its magic bytes (never trust the filename or Content-Type)."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data.startswith(b"BM"):
        return "bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    return None


def _read_header(data: bytes) -> tuple[tuple[int, int] | None, int]:
    """(width, height) and EXIF orientation from the header, or (None, 1) if Pillow can't tell."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            size = im.size
            try:
                orientation = int(im.getexif().get(0x0112, 1))
            except Exception:  # a broken EXIF block must not block an otherwise fine image
                orientation = 1
            return size, orientation if 1 <= orientation <= 8 else 1
    except Image.DecompressionBombError:
        return (2**31, 2**31), 1  # far beyond any limit: reported as too large by the caller
    except Exception:
        return None, 1  # OpenCV gets the final word on whether it is decodable


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


def _to_unit_float(pixels: np.ndarray) -> tuple[np.ndarray, int]:
    """Scale any integer or float pixel type to float32 [0, 1]; also report 8 or 16 bit depth."""
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / 255.0, 8
    if np.issubdtype(pixels.dtype, np.integer):
        info = np.iinfo(pixels.dtype)
        scaled = (pixels.astype(np.float32) - info.min) / float(info.max - info.min)
        return scaled, 16
    return np.clip(np.nan_to_num(pixels.astype(np.float32)), 0.0, 1.0), 16


def _check_pixels(width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise PayloadTooLargeError(
            f"the image is {width}x{height} = {width * height:,} pixels, more than the "
            f"{max_pixels:,} pixel limit; downscale or crop it and try again"
        )


def decode(data: bytes, *, max_pixels: int | None = None) -> DecodedImage:
    """Decode upload bytes to float32 RGB [0, 1], upright, refusing unsupported or huge images."""
    if not data:
        raise BadImageError("the uploaded file is empty; attach an image in the 'image' field")
    fmt = sniff_format(data)
    if fmt is None:
        raise UnsupportedMediaTypeError(
            "the upload is not a supported image; send JPEG, PNG, WebP, BMP or TIFF"
        )
    size, orientation = _read_header(data)
    if size is not None:
        _check_pixels(size[0], size[1], max_pixels)

    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.size == 0:
        raise BadImageError(
            f"the file looks like {fmt.upper()} but could not be decoded (truncated or corrupt?)"
        )
    _check_pixels(pixels.shape[1], pixels.shape[0], max_pixels)
    pixels = _apply_orientation(pixels, orientation)

    values, depth = _to_unit_float(pixels)
    if values.ndim == 2:
        values = values[:, :, None]
    channels = values.shape[2]
    alpha = None
    if channels in (2, 4):
        alpha = np.ascontiguousarray(values[:, :, -1])
        values = values[:, :, :-1]
        channels -= 1
    grayscale = channels == 1
    if grayscale:
        rgb = np.repeat(values, 3, axis=2)
    else:
        rgb = values[:, :, 2::-1]  # OpenCV's BGR -> RGB
    return DecodedImage(
        rgb=np.ascontiguousarray(rgb, dtype=np.float32),
        alpha=alpha,
        grayscale=grayscale,
        bit_depth=depth,
        source_format=fmt,
    )


#: Values per chunk when quantizing: bounds the float temporaries to ~16 MB whatever the image size.
_QUANTIZE_CHUNK = 1 << 22


def _quantize(values: np.ndarray, depth: int) -> np.ndarray:
    """Clip to [0, 1] and round to 8 or 16 bit, a band of rows at a time.

    Whole-image temporaries (clip, scale) would cost 8 bytes a value on top of the input: 1.2 GB
    for a 48 MP RGB image. In bands the only full-size allocation is the integer result.
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
    rgb: np.ndarray,
    fmt: OutputFormat,
    *,
    quality: int = 95,
    like: DecodedImage | None = None,
) -> bytes:
    """Encode float RGB [0, 1] as `fmt`, restoring the input's alpha, greyness and PNG bit depth.

    JPEG cannot store transparency, so a transparent input is composited over white there.
    `quality` (1-100) applies to JPEG and WebP; PNG is lossless and ignores it.
    """
    fmt = OutputFormat(fmt)
    alpha = like.alpha if like is not None else None
    grayscale = like.grayscale if like is not None else False
    depth = like.bit_depth if (like is not None and fmt is OutputFormat.png) else 8
    if grayscale or alpha is not None:
        values = np.clip(rgb, 0.0, 1.0).astype(np.float32, copy=False)
    else:  # plain RGB: no full-size copy, _quantize clips band by band
        values = np.asarray(rgb, dtype=np.float32)

    if grayscale:
        values = values.mean(axis=2, keepdims=True)
    if alpha is not None and fmt is OutputFormat.jpeg:
        values = values * alpha[:, :, None] + (1.0 - alpha[:, :, None])
        alpha = None
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
    ok, buffer = cv2.imencode("." + fmt.extension, np.ascontiguousarray(pixels), params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {pixels.shape} image as {fmt.value}")
    return buffer.tobytes()


def read_image_size(data: bytes) -> tuple[int, int] | None:
    """Upright (width, height) from the header without decoding, or None if unreadable."""
    size, orientation = _read_header(data)
    if size is None:
        return None
    return (size[1], size[0]) if orientation in (5, 6, 7, 8) else size
