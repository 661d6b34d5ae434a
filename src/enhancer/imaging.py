"""Image bytes in and out: format sniffing, size limits, decoding to float RGB, encoding.

Decoding is OpenCV (fast, handles 8/16-bit, alpha, grey) with the file's EXIF orientation applied
ourselves, because OpenCV only honours it when it also throws alpha and 16-bit depth away. The
header is read first with the Pillow plugin of the sniffed format (size, orientation, frames, ICC
profile, colour mode) without decoding, so a small file that decompresses to gigapixels is refused
before it costs any memory; OpenCV's own limits (enhancer.limits) are the backstop.

How pictures as people have them come out (documented in the README's API section):

* EXIF orientation 1-8 is applied; the answer is upright and carries no EXIF.
* CMYK / YCCK JPEG (and CMYK TIFF) are converted to RGB with the plain inverse formula (as Pillow
  does); an embedded CMYK ICC profile is not applied and not carried (it cannot describe RGB).
* An ICC profile is carried to the answer (PNG iCCP, JPEG APP2, WebP ICCP) when it fits the
  answer's colour channels: an RGB profile for colour answers, a grey one for grey answers.
* Grey in, grey out; grey+alpha PNG (and TIFF, whose alpha OpenCV drops, so Pillow reads it) comes
  back grey+alpha (8-bit PNG) or as RGBA with equal colour channels (16-bit, WebP: they have no
  grey+alpha layout OpenCV can write).
* Alpha (RGBA, palette + tRNS, colour-key tRNS) is passed through unchanged; JPEG answers are
  composited over white.
* 16-bit PNG/TIFF in, 16-bit PNG out.
* Animated WebP and APNG are refused with 415; a multi-page TIFF gives its first page.
"""

from __future__ import annotations

import dataclasses
import io
import struct
import zlib
from dataclasses import dataclass
from enum import Enum

import cv2
import numpy as np
from PIL import BmpImagePlugin, Image, JpegImagePlugin, PngImagePlugin, TiffImagePlugin, WebPImagePlugin

from enhancer.errors import BadImageError, PayloadTooLargeError, UnsupportedMediaTypeError

SUPPORTED_INPUTS = ("jpeg", "png", "webp", "bmp", "tiff")
_FORMAT_NAMES = {"jpeg": "JPEG", "png": "PNG", "webp": "WebP", "bmp": "BMP", "tiff": "TIFF"}


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
    icc_profile: bytes | None = None  # carried to the answer where its colour space fits
    jpeg_quality: int | None = None  # a JPEG input's estimated quality (1-100), else None

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
        return dataclasses.replace(self, rgb=placeholder)


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


#: Formats we do not decode, recognised so the 415 can name what was sent.
_UNSUPPORTED_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"GIF87a", 0, "a GIF"),
    (b"GIF89a", 0, "a GIF"),
    (b"%PDF-", 0, "a PDF"),
    (b"ftypavif", 4, "an AVIF"),
    (b"ftypavis", 4, "an AVIF"),
    (b"ftypheic", 4, "a HEIC"),
    (b"ftypheix", 4, "a HEIC"),
    (b"ftypmif1", 4, "a HEIF"),
    (b"\x00\x00\x00\x0cjP  ", 0, "a JPEG 2000"),
    (b"\xff\x4f\xff\x51", 0, "a JPEG 2000"),
    (b"\xff\x0a", 0, "a JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", 0, "a JPEG XL"),
    (b"II\x2b\x00", 0, "a BigTIFF"),
    (b"MM\x00\x2b", 0, "a BigTIFF"),
    (b"\x00\x00\x01\x00", 0, "an ICO"),
    (b"8BPS", 0, "a Photoshop"),
)


def _describe_unsupported(data: bytes) -> str:
    """'a GIF', 'an SVG', ... for the 415 message, or '' when the bytes are not recognised."""
    for magic, offset, name in _UNSUPPORTED_SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            return name
    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith((b"<svg", b"<?xml", b"<!doctype svg")) and b"<svg" in data[:4096].lower():
        return "an SVG"
    return ""


def _unsupported(data: bytes) -> UnsupportedMediaTypeError:
    what = _describe_unsupported(data)
    if what:
        return UnsupportedMediaTypeError(
            f"the upload is {what} file, which is not supported; send JPEG, PNG, WebP, BMP or TIFF"
        )
    return UnsupportedMediaTypeError("the upload is not a supported image; send JPEG, PNG, WebP, BMP or TIFF")


#: The Pillow plugin for each sniffed format. Opening through the plugin class (not Image.open)
#: reads only that format's header, so a polyglot cannot be parsed as something else, and it skips
#: Pillow's own decompression-bomb check: our limits are reported with the real dimensions.
_HEADER_READERS = {
    "jpeg": JpegImagePlugin.JpegImageFile,
    "png": PngImagePlugin.PngImageFile,
    "webp": WebPImagePlugin.WebPImageFile,
    "bmp": BmpImagePlugin.BmpImageFile,
    "tiff": TiffImagePlugin.TiffImageFile,
}


@dataclass(frozen=True)
class ImageHeader:
    """What the header says, read without decoding the pixels."""

    width: int
    height: int
    orientation: int = 1  # EXIF orientation 1-8
    mode: str = ""  # Pillow's mode name ("RGB", "LA", "CMYK", "P", ...)
    animated: bool = False  # more than one frame (animated WebP/PNG, multi-page TIFF)
    icc_profile: bytes | None = None
    transparency: object = None  # PNG colour-key tRNS (grey value or RGB tuple), if any
    jpeg_quality: int | None = None  # estimated from a JPEG's luminance quantisation table


def read_header(data: bytes, fmt: str | None = None) -> ImageHeader | None:
    """The header of `data` (format `fmt`, sniffed if None), or None if Pillow cannot parse it."""
    fmt = fmt or sniff_format(data)
    reader = _HEADER_READERS.get(fmt or "")
    if reader is None:
        return None
    try:
        with reader(io.BytesIO(data)) as im:
            try:
                if fmt == "png":
                    # PngImageFile.getexif() decodes the whole image to look for an eXIf chunk
                    # after the pixels: a bomb would be decompressed right here. Use only an eXIf
                    # before IDAT (where the PNG spec puts it), which the header read has seen.
                    exif = Image.Exif()
                    if im.info.get("exif"):
                        exif.load(im.info["exif"])
                else:
                    exif = im.getexif()
                orientation = int(exif.get(0x0112, 1))
            except Exception:  # a broken EXIF block must not block an otherwise fine image
                orientation = 1
            icc = im.info.get("icc_profile")
            return ImageHeader(
                width=int(im.size[0]),
                height=int(im.size[1]),
                orientation=orientation if 1 <= orientation <= 8 else 1,
                mode=im.mode,
                animated=bool(getattr(im, "is_animated", False)),
                icc_profile=bytes(icc) if isinstance(icc, (bytes, bytearray)) and icc else None,
                transparency=im.info.get("transparency") if fmt == "png" else None,
                jpeg_quality=estimate_jpeg_quality(getattr(im, "quantization", None) or {}),
            )
    except Exception:
        return None  # OpenCV gets the final word on whether it is decodable


#: The JPEG standard's example luminance table (Annex K), which libjpeg scales by its quality.
_IJG_LUMINANCE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
])  # fmt: skip


def _ijg_table(quality: int) -> np.ndarray:
    """libjpeg's luminance table at `quality` (jpeg_quality_scaling + baseline clamp)."""
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return np.clip((_IJG_LUMINANCE * scale + 50) // 100, 1, 255)


#: Sorted log-tables of qualities 1-100, built once: every JPEG upload is compared with them.
_IJG_LOG_TABLES = np.log(np.stack([np.sort(_ijg_table(q)) for q in range(1, 101)]))


def estimate_jpeg_quality(quantization: dict) -> int | None:
    """The libjpeg quality (1-100) whose luminance table is closest to the file's, or None.

    Exact for libjpeg/OpenCV/Pillow files; for other encoders (cameras, editors) the nearest IJG
    quality, which is what the number means to a user. Tables are compared sorted, so the
    coefficient order a decoder reports them in does not matter.
    """
    table = quantization.get(0)
    if table is None or len(table) != 64:
        return None
    errors = np.abs(_IJG_LOG_TABLES - np.log(np.sort(np.asarray(table, dtype=np.float64)))).sum(axis=1)
    return int(np.argmin(errors)) + 1


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


def check_size(width: int, height: int, max_pixels: int | None, max_side: int | None = None) -> None:
    """Raise PayloadTooLargeError if the image is over the pixel or side limit."""
    if max_pixels is not None and width * height > max_pixels:
        raise PayloadTooLargeError(
            f"the image is {width}x{height} = {width * height:,} pixels, more than the "
            f"{max_pixels:,} pixel limit; downscale or crop it and try again"
        )
    if max_side is not None and max(width, height) > max_side:
        raise PayloadTooLargeError(
            f"the image is {width}x{height}, and {max(width, height):,} px is longer than the "
            f"{max_side:,} px limit for a side; downscale or crop it and try again"
        )


_check_pixels = check_size  # the name used before max_side existed


def _icc_colour_space(profile: bytes | None) -> bytes | None:
    """The profile's data colour space (b'RGB ', b'GRAY', b'CMYK', ...), None if not a profile."""
    if profile is None or len(profile) < 128 or profile[36:40] != b"acsp":
        return None
    return profile[16:20]


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
    """Decode upload bytes to float32 RGB [0, 1], upright, refusing unsupported or huge images."""
    if not data:
        raise BadImageError("the uploaded file is empty; attach an image in the 'image' field")
    fmt = sniff_format(data)
    if fmt is None:
        raise _unsupported(data)
    header = read_header(data, fmt)
    if header is not None:
        check_size(header.width, header.height, max_pixels, max_side)
        if header.animated and fmt in ("webp", "png"):
            raise UnsupportedMediaTypeError(
                f"the upload is an animated {'WebP' if fmt == 'webp' else 'PNG (APNG)'}; animated "
                "images are not supported: send a single still frame as JPEG, PNG, WebP, BMP or TIFF"
            )
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
        raise BadImageError(
            f"the file looks like {_FORMAT_NAMES[fmt]} but could not be decoded (truncated or corrupt?)"
        )
    check_size(pixels.shape[1], pixels.shape[0], max_pixels, max_side)

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

    values, depth = _to_unit_float(pixels)
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

    icc = header.icc_profile if header is not None else None
    if _icc_colour_space(icc) not in (b"RGB ", b"GRAY") or mode == "CMYK":
        icc = None  # a CMYK (or unreadable) profile does not describe the RGB we hand on
    return DecodedImage(
        rgb=np.ascontiguousarray(rgb, dtype=np.float32),
        alpha=alpha,
        grayscale=grayscale,
        bit_depth=depth,
        source_format=fmt,
        icc_profile=icc,
        jpeg_quality=header.jpeg_quality if header is not None else None,
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
    """Encode float RGB [0, 1] as `fmt`, restoring the input's alpha, greyness, PNG bit depth and
    ICC profile (where it fits the answer's colour channels).

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
        Image.fromarray(pixels).save(buffer, "PNG", compress_level=1)
        return _with_icc(buffer.getvalue(), fmt, like.icc_profile, grey=True, size=(width, height), alpha=True)
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
    grey_out = pixels.ndim == 2 and fmt is not OutputFormat.webp  # WebP is always colour
    icc = like.icc_profile if like is not None else None
    return _with_icc(buffer.tobytes(), fmt, icc, grey=grey_out, size=(width, height), alpha=alpha is not None)


# --- ICC profiles in encoded files --------------------------------------------------------------

#: Largest profile payload of one JPEG APP2 segment (65535 - 2 length bytes - 14 header bytes).
_JPEG_ICC_CHUNK = 65519


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _riff_chunk(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("<I", len(payload)) + payload + (b"\x00" if len(payload) % 2 else b"")


def _with_icc(
    data: bytes, fmt: OutputFormat, profile: bytes | None, *, grey: bool, size: tuple[int, int], alpha: bool
) -> bytes:
    """`data` with `profile` embedded, if the profile's colour space matches the encoded channels.

    Done on the encoded bytes because OpenCV cannot write profiles: PNG gets an iCCP chunk after
    IHDR, JPEG APP2 ICC_PROFILE segments after SOI/JFIF, WebP an ICCP chunk (in the extended VP8X
    layout, which is created when the encoder wrote a simple one).
    """
    if _icc_colour_space(profile) != (b"GRAY" if grey else b"RGB "):
        return data
    if fmt is OutputFormat.png:
        if data[12:16] != b"IHDR":
            return data
        iccp = _png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(profile))
        return data[:33] + iccp + data[33:]
    if fmt is OutputFormat.jpeg:
        chunks = [profile[i : i + _JPEG_ICC_CHUNK] for i in range(0, len(profile), _JPEG_ICC_CHUNK)]
        if len(chunks) > 255 or data[:2] != b"\xff\xd8":
            return data
        at = 2
        if data[2:4] == b"\xff\xe0":  # keep JFIF's APP0 first
            at = 4 + struct.unpack(">H", data[4:6])[0]
        segments = b"".join(
            b"\xff\xe2" + struct.pack(">H", 16 + len(chunk)) + b"ICC_PROFILE\x00" + bytes((i + 1, len(chunks))) + chunk
            for i, chunk in enumerate(chunks)
        )
        return data[:at] + segments + data[at:]
    # WebP: RIFF <size> WEBP, then chunks
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return data
    body = data[12:]
    iccp = _riff_chunk(b"ICCP", profile)
    if body[:4] == b"VP8X":
        vp8x = bytearray(body[:18])
        vp8x[8] |= 0x20  # ICC flag
        body = bytes(vp8x) + iccp + body[18:]
    else:
        width, height = size
        flags = 0x20 | (0x10 if alpha else 0)
        canvas = struct.pack("<I", width - 1)[:3] + struct.pack("<I", height - 1)[:3]
        body = _riff_chunk(b"VP8X", bytes((flags, 0, 0, 0)) + canvas) + iccp + body
    return b"RIFF" + struct.pack("<I", len(body) + 4) + b"WEBP" + body


def read_image_size(data: bytes) -> tuple[int, int] | None:
    """Upright (width, height) from the header without decoding, or None if unreadable."""
    header = read_header(data)
    if header is None:
        return None
    size = (header.width, header.height)
    return (size[1], size[0]) if header.orientation in (5, 6, 7, 8) else size
