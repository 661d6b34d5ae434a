"""The JPEG bitstream: the file's quantisation tables and quality, and whether its coded data is whole.

Tables come from the header alone (Pillow's parser, no pixel decoding), because the model is given
the file's own quantisation. The quality is the libjpeg quality whose luma table is nearest.

libjpeg answers coded data that stops early (a cut file, with or without an end-of-image marker
added) with grey filler and only a warning, which neither OpenCV nor Pillow reports. So the
completeness of the data is read from the bitstream itself: a file smaller than any JPEG of its
declared size can be is refused before decoding, and after decoding the last scan must not have
needed bytes the file does not have.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np
from PIL import JpegImagePlugin

from enhancer.errors import BadImageError


@dataclass(frozen=True, eq=False)
class JpegInfo:
    """A JPEG's compression settings, read from its header.

    Tables are in natural row-major order, `[u, v]` being the step of the DCT coefficient in row u,
    column v, and describe the stored image (before any EXIF rotation). Arrays are read-only.
    """

    quality: int | None  # estimated IJG quality of the luma table
    luma_table: np.ndarray  # (8, 8) uint16: the table component 0 (Y) uses
    chroma_table: np.ndarray | None  # (8, 8) uint16: the table component 1 (Cb) uses; None if grey
    sampling: tuple[int, int]  # (horizontal, vertical) factor of luma over chroma: (2, 2) = 4:2:0


#: The JPEG standard's example tables (Annex K.1 and K.2), natural order; libjpeg scales them by quality.
IJG_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
]).reshape(8, 8)  # fmt: skip
IJG_CHROMA = np.array([
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99, *[99] * 32,
]).reshape(8, 8)  # fmt: skip


def ijg_table(quality: int, base: np.ndarray = IJG_LUMA) -> np.ndarray:
    """libjpeg's table at `quality` 1-100 (jpeg_quality_scaling, baseline clamp), (8, 8) uint16."""
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return np.clip((base * scale + 50) // 100, 1, 255).astype(np.uint16)


#: Sorted log-tables of qualities 1-100, built once: every JPEG upload is compared with them.
_IJG_LOG_TABLES = np.log(np.stack([np.sort(ijg_table(q), axis=None) for q in range(1, 101)]))


def estimate_quality(luma_table: np.ndarray) -> int:
    """The libjpeg quality (1-100) whose luma table is closest to `luma_table`.

    Exact for libjpeg/OpenCV/Pillow files; for other encoders (cameras, editors) the nearest IJG
    quality, which is what the number means to a user. Tables are compared sorted, so coefficient
    order does not matter.
    """
    table = np.sort(np.maximum(np.asarray(luma_table, dtype=np.float64), 1), axis=None)
    return int(np.argmin(np.abs(_IJG_LOG_TABLES - np.log(table)).sum(axis=1))) + 1


def _table(values: object) -> np.ndarray | None:
    table = np.asarray(values, dtype=np.uint16) if values is not None else None
    if table is None or table.size != 64:
        return None
    table = table.reshape(8, 8)
    table.setflags(write=False)
    return table


def jpeg_info(im: JpegImagePlugin.JpegImageFile) -> JpegInfo | None:
    """The JpegInfo of a header Pillow has parsed, or None if its tables are missing.

    Pillow's `layer` lists the frame's components as (id, h, v, table index); its `quantization`
    holds every table by index, already turned from zigzag to natural order.
    """
    components = getattr(im, "layer", None) or []
    tables = getattr(im, "quantization", None) or {}
    if not components:
        return None
    luma = _table(tables.get(components[0][3]))
    if luma is None:
        return None
    chroma, sampling = None, (1, 1)
    if len(components) > 1:
        chroma = _table(tables.get(components[1][3]))
        if chroma is None:
            return None
        (h_luma, v_luma), (h_chroma, v_chroma) = components[0][1:3], components[1][1:3]
        sampling = (max(1, h_luma // max(1, h_chroma)), max(1, v_luma // max(1, v_chroma)))
    return JpegInfo(quality=estimate_quality(luma), luma_table=luma, chroma_table=chroma, sampling=sampling)


def read_jpeg_info(data: bytes) -> JpegInfo | None:
    """The quantisation tables, sampling and quality of JPEG `data` (header only), or None."""
    try:
        with JpegImagePlugin.JpegImageFile(io.BytesIO(data)) as im:
            return jpeg_info(im)
    except Exception:
        return None


# --- is the coded data all there? -----------------------------------------------------------------

#: Huffman coding spends at least one bit on every 8x8 block of the full-resolution component (its
#: DC difference needs a code of at least one bit), so a JPEG holds at least one byte per this many
#: pixels. A file under that cannot be whole: it is refused before libjpeg turns it into grey.
MAX_PIXELS_PER_BYTE = 8 * 8 * 8


def check_plausible_size(size: int, width: int, height: int) -> None:
    """Refuse (400) a JPEG of `size` bytes too small to code `width` x `height` pixels."""
    if width * height > size * MAX_PIXELS_PER_BYTE:
        raise BadImageError(
            f"the file is a corrupt or truncated JPEG: it declares {width}x{height} pixels but has only "
            f"{size:,} bytes, less than one bit per 8x8 block; send the complete file"
        )


#: A marker: 0xFF (fill bytes may repeat it) and a code; FF00 is a coded 0xFF byte, not a marker.
_MARKER = re.compile(rb"\xff+([^\x00\xff])")
#: The end of a scan's coded data: a marker other than the restart markers RST0-RST7 inside it
#: (a single literal 0xFF first, so the search runs at memchr speed; fill bytes are stepped back over).
_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_STANDALONE = {0x01, 0xD8, *range(0xD0, 0xD8)}  # markers without a length field
_SEQUENTIAL_HUFFMAN = {0xC0, 0xC1}  # baseline and extended sequential, Huffman-coded


@dataclass(frozen=True)
class ScanLayout:
    """Where a JPEG's scans are, read from its markers without decoding anything."""

    frame: int | None  # the SOF marker's code (0xC0 baseline, 0xC2 progressive, ...)
    scans: int  # SOS segments before the end-of-image marker
    end: int  # offset where the last scan's coded data ends: its closing marker, or the file's end


def scan_layout(data: bytes) -> ScanLayout | None:
    """Walk the marker segments (by their lengths) and scans of `data`; None if it has no scan."""
    frame, scans, end, pos = None, 0, 0, 2
    while (m := _MARKER.search(data, pos)) is not None:
        code, pos = m.group(1)[0], m.end()
        if code == 0xD9:  # end of image
            break
        if code in _STANDALONE:
            continue
        if pos + 2 > len(data):
            break
        segment_end = pos + int.from_bytes(data[pos : pos + 2], "big")
        if 0xC0 <= code <= 0xCF and code not in (0xC4, 0xC8, 0xCC):  # SOFn, not DHT/JPG/DAC
            frame = code
        if code == 0xDA:  # start of scan: its coded data runs to the next marker
            scans += 1
            closing = _SCAN_END.search(data, segment_end)
            pos = end = closing.start() if closing else len(data)
            while end > segment_end and data[end - 1] == 0xFF:
                end -= 1
        else:
            pos = segment_end
    return ScanLayout(frame, scans, end) if scans else None


#: Bytes put after the last scan to see whether the decoder wants them. Zeros cannot form a
#: marker, and more than libjpeg's bit-buffer look-ahead of 8 bytes lets a whole scan finish.
_LOOK_AHEAD = bytes(16)
#: Bytes no marker can arise from (no 0xFF), varied so that decoding them gives noise.
_NOISE = np.random.default_rng(0).integers(0, 255, 1024, dtype=np.uint8).tobytes()


def _single_scan_needs_more(data: bytes, end: int) -> bool:
    """Whether the one scan of a sequential JPEG needs coded bytes past `end`.

    The scan is decoded (by Pillow, at 1/8 scale: the Huffman data is still read in full) from the
    file cut at `end` with a few zero bytes and no end marker after it: a complete scan finishes,
    one cut short makes the decoder ask for more input, which Pillow reports as truncation.
    """
    try:
        with JpegImagePlugin.JpegImageFile(io.BytesIO(data[:end] + _LOOK_AHEAD)) as im:
            im.draft(None, (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
    except (OSError, SyntaxError, ValueError):
        return True
    return False


def _pillow_bytes(data: bytes, like: np.ndarray | None = None) -> bytes | None:
    """`data` decoded by Pillow (whose libjpeg prints no warnings, where OpenCV's write to stderr),
    as raw bytes laid out like OpenCV's `like` (BGR or grey) when the mode allows, else Pillow's own."""
    try:
        with JpegImagePlugin.JpegImageFile(io.BytesIO(data)) as im:
            im.load()
            if like is not None and im.mode == "RGB" and like.ndim == 3 and like.shape[2] == 3:
                return im.tobytes("raw", "BGR")
            return im.tobytes()
    except (OSError, SyntaxError, ValueError):
        return None


def _last_scan_depends_on_more(data: bytes, end: int, pixels: np.ndarray) -> bool:
    """Whether the decoded pixels of a multi-scan JPEG depend on coded bytes past `end`.

    libjpeg decodes every scan before the first row comes out, so it cannot be stopped at the end
    of the data; instead the file is decoded again with noise between its last scan and the end
    marker. A complete last scan never reads that noise; one cut short decodes it into the image.
    The noisy copy is compared with OpenCV's `pixels` (the same libjpeg output, when the two
    libraries agree), else with Pillow's own decode of the untouched file.
    """
    probe = _pillow_bytes(data[:end] + _NOISE + b"\xff\xd9", like=pixels)
    if probe is None:
        return True
    if probe == np.ascontiguousarray(pixels).tobytes():
        return False
    return probe != _pillow_bytes(data, like=pixels)


def check_complete(data: bytes, pixels: np.ndarray) -> None:
    """Refuse (400) a JPEG whose last scan stops before its coded data is complete.

    `pixels` is what OpenCV decoded from `data`, where libjpeg filled the missing part with grey.
    """
    layout = scan_layout(data)
    if layout is None:
        return  # no scan found: the decode that succeeded got its data in a way we do not parse
    if layout.scans == 1 and layout.frame in _SEQUENTIAL_HUFFMAN:
        cut_short = _single_scan_needs_more(data, layout.end)
    else:
        cut_short = _last_scan_depends_on_more(data, layout.end, pixels)
    if cut_short:
        raise BadImageError(
            "the file is a corrupt or truncated JPEG: its coded data ends before the whole image; "
            "send the complete file"
        )
