"""Which formats exist here, how an upload's format is recognised, and what its header says.

The list of input formats is written once, in `INPUT_FORMATS`; every message and docstring that names
the supported formats derives from it (`SUPPORTED_NAMES`). The header is read with the Pillow plugin
of the sniffed format, without decoding, so a small file that claims gigapixels (or a layout we cannot
decode) is refused before it costs any memory or time.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from PIL import BmpImagePlugin, Image, ImageFile, JpegImagePlugin, PngImagePlugin, TiffImagePlugin, WebPImagePlugin

from enhancer.errors import PayloadTooLargeError, UnsupportedMediaTypeError
from enhancer.imaging.jpeg import JpegInfo, jpeg_info


@dataclass(frozen=True)
class InputFormat:
    """One format uploads may be in."""

    key: str  # the name used in code ("jpeg")
    name: str  # the name users know ("JPEG")
    matches: Callable[[bytes], bool]  # the file's leading bytes are this format's signature
    #: Opening through the plugin class (not Image.open) reads only this format's header, so a
    #: polyglot cannot be parsed as something else, and skips Pillow's own decompression-bomb check:
    #: our limits are reported with the real dimensions.
    header_reader: type[ImageFile.ImageFile]


INPUT_FORMATS: tuple[InputFormat, ...] = (
    InputFormat("jpeg", "JPEG", lambda d: d.startswith(b"\xff\xd8\xff"), JpegImagePlugin.JpegImageFile),
    InputFormat("png", "PNG", lambda d: d.startswith(b"\x89PNG\r\n\x1a\n"), PngImagePlugin.PngImageFile),
    InputFormat("webp", "WebP", lambda d: d[:4] == b"RIFF" and d[8:12] == b"WEBP", WebPImagePlugin.WebPImageFile),
    InputFormat("bmp", "BMP", lambda d: d.startswith(b"BM"), BmpImagePlugin.BmpImageFile),
    InputFormat("tiff", "TIFF", lambda d: d[:4] in (b"II*\x00", b"MM\x00*"), TiffImagePlugin.TiffImageFile),
)
_BY_KEY = {f.key: f for f in INPUT_FORMATS}

#: "JPEG, PNG, WebP, BMP or TIFF": the supported formats as messages and documentation name them.
SUPPORTED_NAMES = ", ".join(f.name for f in INPUT_FORMATS[:-1]) + " or " + INPUT_FORMATS[-1].name


def format_name(key: str) -> str:
    """'JPEG' for 'jpeg': the name a message uses for a sniffed format."""
    return _BY_KEY[key].name


class OutputFormat(str, Enum):
    """Formats an answer can be encoded in; PNG is lossless so the restoration is not re-damaged."""

    png = "png"
    jpeg = "jpeg"
    webp = "webp"

    @classmethod
    def _missing_(cls, value: object) -> OutputFormat | None:
        """Names in any case, and `jpg` (the extension the answer is named with) for `jpeg`."""
        if not isinstance(value, str):
            return None
        name = value.strip().lower()
        return cls.__members__.get("jpeg" if name == "jpg" else name)

    @property
    def media_type(self) -> str:
        return f"image/{self.value}"

    @property
    def extension(self) -> str:
        return {"png": "png", "jpeg": "jpg", "webp": "webp"}[self.value]


def sniff_format(data: bytes) -> str | None:
    """Name the image format from its magic bytes (never trust the filename or Content-Type)."""
    return next((f.key for f in INPUT_FORMATS if f.matches(data)), None)


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


def unsupported_error(data: bytes) -> UnsupportedMediaTypeError:
    """The 415 for bytes that are none of INPUT_FORMATS, naming what they are when we can tell."""
    what = _describe_unsupported(data)
    if what:
        return UnsupportedMediaTypeError(f"the upload is {what} file, which is not supported; send {SUPPORTED_NAMES}")
    return UnsupportedMediaTypeError(f"the upload is not a supported image; send {SUPPORTED_NAMES}")


@dataclass(frozen=True)
class ImageHeader:
    """What the header says, read without decoding the pixels."""

    width: int  # as stored, before EXIF orientation
    height: int
    orientation: int = 1  # EXIF orientation 1-8
    mode: str = ""  # Pillow's mode name ("RGB", "LA", "CMYK", "P", ...)
    animated: bool = False  # more than one frame (animated WebP/PNG, multi-page TIFF)
    icc_profile: bytes | None = None
    transparency: object = None  # PNG colour-key tRNS (grey value or RGB tuple), if any
    jpeg: JpegInfo | None = None  # a JPEG's quantisation tables, sampling and estimated quality


def read_header(data: bytes, fmt: str | None = None) -> ImageHeader | None:
    """The header of `data` (format `fmt`, sniffed if None), or None if Pillow cannot parse it."""
    fmt = fmt or sniff_format(data)
    if fmt not in _BY_KEY:
        return None
    try:
        with _BY_KEY[fmt].header_reader(io.BytesIO(data)) as im:
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
                jpeg=jpeg_info(im) if fmt == "jpeg" else None,
            )
    except Exception:
        return None  # OpenCV gets the final word on whether it is decodable


def read_image_size(data: bytes) -> tuple[int, int] | None:
    """Upright (width, height) from the header without decoding, or None if unreadable."""
    header = read_header(data)
    if header is None:
        return None
    size = (header.width, header.height)
    return (size[1], size[0]) if header.orientation in (5, 6, 7, 8) else size


def check_size(width: int, height: int, max_pixels: int | None, max_side: int | None = None) -> None:
    """Raise PayloadTooLargeError naming every limit the image is over (pixels, side, or both)."""
    over_pixels = max_pixels is not None and width * height > max_pixels
    over_side = max_side is not None and max(width, height) > max_side
    if not (over_pixels or over_side):
        return
    what = f"{width}x{height}"
    if over_pixels:
        what += f" = {width * height:,} pixels, more than the {max_pixels:,} pixel limit"
    if over_side:
        what += f", and {max(width, height):,} px is longer than the {max_side:,} px limit for a side"
    raise PayloadTooLargeError(f"the image is {what}; downscale or crop it and try again")


def largest_fitting_input(width: int, height: int, scale: int, max_output_pixels: int) -> tuple[int, int]:
    """The largest (width, height) of this image's shape whose answer at `scale` is at most
    `max_output_pixels` (each side at least 1)."""
    factor = math.sqrt(max_output_pixels / (scale * scale * width * height))
    fit_w, fit_h = max(1, math.floor(width * factor)), max(1, math.floor(height * factor))
    while fit_w * fit_h * scale * scale > max_output_pixels and max(fit_w, fit_h) > 1:  # float rounding
        if fit_w >= fit_h:
            fit_w -= 1
        else:
            fit_h -= 1
    return fit_w, fit_h


def check_output_size(width: int, height: int, scale: int, max_output_pixels: int) -> None:
    """Raise PayloadTooLargeError when the answer (`scale` times each side) would have more than
    `max_output_pixels` pixels, naming the largest input side that fits at this scale."""
    output = width * height * scale * scale
    if output <= max_output_pixels:
        return
    fit_w, fit_h = largest_fitting_input(width, height, scale, max_output_pixels)
    square = math.isqrt(max_output_pixels // (scale * scale))
    other = f"; a square one up to {square}x{square}" if (fit_w, fit_h) != (square, square) else ""
    raise PayloadTooLargeError(
        f"the answer at scale {scale} would be {width * scale}x{height * scale} = {output:,} pixels, more "
        f"than the {max_output_pixels:,} pixel limit for answers (ENHANCER_MAX_OUTPUT_PIXELS); at scale "
        f"{scale} an image of this shape fits up to {fit_w}x{fit_h} (longest side {max(fit_w, fit_h)} px"
        f"{other}): downscale or crop it, or ask for a smaller scale"
    )


# --- TIFF layouts OpenCV cannot (or should not) turn into a picture ---------------------------------

#: TIFF SampleFormat values (tag 339) and how a message names them.
_SAMPLE_KINDS = {1: "unsigned integer", 2: "signed integer", 3: "floating-point"}


def _tiff_tags(data: bytes) -> dict[int, object]:
    """The first image directory's tags, parsed without Pillow's check that it knows the layout."""
    try:
        ifd = TiffImagePlugin.ImageFileDirectory_v2(ifh=data[:8])
        fp = io.BytesIO(data)
        fp.seek(ifd.next)
        ifd.load(fp)
        return dict(ifd)
    except Exception:
        return {}


def _first(value: object, default: int) -> tuple[int, ...]:
    """A tag's values as a tuple of ints (Pillow gives one int or a tuple)."""
    if value is None:
        return (default,)
    values = value if isinstance(value, tuple) else (value,)
    return tuple(int(v) for v in values) or (default,)


def check_tiff_layout(data: bytes) -> None:
    """Refuse (415) a TIFF whose channel count or sample type we give no picture meaning.

    Unsigned integer samples of up to 16 bits are read full range (0 black, the type's maximum
    white, as the TIFF spec defines), 32/64-bit floats as 0 black to 1 white. Signed and 32-bit
    integers are measurements (elevations, counts) with no agreed brightness scale: their full range
    makes typical files flat grey or black, and a range guessed from the values would make one file
    brighter than another of the same type. So they are refused, with the sample type named.
    """
    tags = _tiff_tags(data)
    if not tags:
        return  # unreadable directory: OpenCV gets the final word
    channels = _first(tags.get(277), 1)[0]  # SamplesPerPixel
    if channels > 4:
        raise UnsupportedMediaTypeError(
            f"the TIFF has {channels} channels (samples per pixel); only grey, grey+alpha, RGB, RGBA "
            "and CMYK TIFFs (1 to 4 channels) are supported: save it with one of those layouts"
        )
    bits = max(_first(tags.get(258), 1))  # BitsPerSample
    kind = max(_first(tags.get(339), 1))  # SampleFormat: 1 unsigned (the default), 2 signed, 3 float
    if kind not in _SAMPLE_KINDS:
        return  # "undefined" (4) or complex samples: left to the decoder
    if kind == 3 and bits not in (32, 64):
        raise UnsupportedMediaTypeError(
            f"the TIFF stores {bits}-bit floating-point samples, which the decoder cannot read; save it "
            "with 8- or 16-bit unsigned integer samples (or 32-bit floating-point, 0 to 1)"
        )
    if kind == 2 or (kind == 1 and bits > 16):
        raise UnsupportedMediaTypeError(
            f"the TIFF stores {bits}-bit {_SAMPLE_KINDS[kind]} samples, which have no agreed brightness "
            "scale; save it with 8- or 16-bit unsigned integer samples (or 32-bit floating-point, 0 to 1)"
        )
