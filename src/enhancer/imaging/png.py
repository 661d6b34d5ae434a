"""A PNG writer that compresses bands of rows on several threads, as pigz does for gzip.

Why not only OpenCV's writer: it compresses on one thread, and for a large answer the encode is the
last thing a user waits for, on a machine whose cores the model has just let go of. This writer
makes the same file OpenCV's speed preset makes (the "sub" filter on every row, zlib level 1 with
the run-length strategy; benchmarks/RESULTS.md, "PNG compression level") in pieces: each band of
rows is filtered and deflated on its own thread and ends on a byte boundary (a sync flush), so
the pieces joined are one deflate stream; their Adler-32 checksums are combined arithmetically.
zlib and numpy release the GIL while they work, so the threads run in parallel.

Only plain grey or RGB (8- or 16-bit) is written here; enhancer.imaging.encode keeps OpenCV and
Pillow for the other layouts and for an explicit compression level.
"""

from __future__ import annotations

import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: zlib header for a 32 KiB window and the fastest level (RFC 1950: CMF 0x78, FLG with FLEVEL 0).
_ZLIB_HEADER = b"\x78\x01"
#: The largest prime below 2**16: the modulus of Adler-32 (RFC 1950).
_ADLER_BASE = 65521
#: Pixels per band at least: below this a thread costs more than it saves.
MIN_BAND_PIXELS = 1 << 20
#: Sample bytes filtered and handed to zlib at a time within a band.
CHUNK_BYTES = 1 << 22
#: PNG colour types by channel count (grey, RGB).
_COLOUR_TYPES = {1: 0, 3: 2}


def adler32_concat(first: int, second: int, second_length: int) -> int:
    """The Adler-32 of two byte strings joined, from each one's checksum and the second's length.

    Adler-32 is A + 65536 * B with A = 1 + the sum of the bytes and B = the sum of A after each
    byte (both mod 65521). Appended bytes continue A from the first string's A instead of 1, so
    A = A1 + A2 - 1, and each of the `second_length` running A's gains A1 - 1, which B sums.
    """
    a1, b1 = first & 0xFFFF, first >> 16
    a2, b2 = second & 0xFFFF, second >> 16
    a = (a1 + a2 - 1) % _ADLER_BASE
    b = (b1 + b2 + second_length * (a1 - 1)) % _ADLER_BASE
    return a | (b << 16)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def _filtered(rows: np.ndarray, bytes_per_pixel: int) -> np.ndarray:
    """PNG scanlines with the "sub" filter: a filter-type byte (1), then each byte minus the byte
    one pixel to its left (mod 256)."""
    count, length = rows.shape
    out = np.empty((count, length + 1), np.uint8)
    out[:, 0] = 1
    out[:, 1 : 1 + bytes_per_pixel] = rows[:, :bytes_per_pixel]
    np.subtract(rows[:, bytes_per_pixel:], rows[:, :-bytes_per_pixel], out=out[:, 1 + bytes_per_pixel :])
    return out


def _deflate_band(samples: np.ndarray, last: bool) -> tuple[bytes, int, int]:
    """One band of rows [rows, W, C] -> (raw deflate ending on a byte boundary, Adler-32 of its
    scanlines, their length). Filtered CHUNK_BYTES of rows at a time, so a band costs a few MiB
    beyond its compressed bytes, not a copy of itself (two for 16-bit samples)."""
    rows, width, channels = samples.shape
    bytes_per_pixel = channels * samples.dtype.itemsize
    compressor = zlib.compressobj(1, zlib.DEFLATED, -15, 8, zlib.Z_RLE)
    pieces, checksum, length = [], 1, 0
    step = max(1, CHUNK_BYTES // (width * bytes_per_pixel))
    for start in range(0, rows, step):
        chunk = samples[start : start + step]
        if chunk.dtype == np.uint16:
            chunk = chunk.astype(">u2")  # PNG stores 16-bit samples most significant byte first
        scanlines = _filtered(np.ascontiguousarray(chunk).view(np.uint8).reshape(len(chunk), -1), bytes_per_pixel)
        pieces.append(compressor.compress(scanlines))
        checksum = zlib.adler32(scanlines, checksum)
        length += scanlines.nbytes
    pieces.append(compressor.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH))
    return b"".join(pieces), checksum, length


def band_count(height: int, width: int, threads: int | None = None) -> int:
    """Bands (and threads) for an image: one per MIN_BAND_PIXELS, at most one per core."""
    threads = threads or os.cpu_count() or 1
    return max(1, min(threads, height, height * width // MIN_BAND_PIXELS))


def write_png(pixels: np.ndarray, *, threads: int | None = None) -> bytes:
    """PNG bytes of grey [H, W] / [H, W, 1] or RGB [H, W, 3] samples (uint8 or uint16, RGB order),
    compressed in `band_count` bands at once (`threads`: most threads to use; default one per core)."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    height, width, channels = pixels.shape
    if channels not in _COLOUR_TYPES or pixels.dtype not in (np.uint8, np.uint16) or height < 1 or width < 1:
        raise ValueError(f"write_png takes grey or RGB uint8/uint16 samples, got {pixels.dtype} {pixels.shape}")
    bands = band_count(height, width, threads)
    bounds = [height * i // bands for i in range(bands + 1)]
    work = [(pixels[bounds[i] : bounds[i + 1]], i == bands - 1) for i in range(bands)]
    if bands == 1:
        parts = [_deflate_band(*work[0])]
    else:
        with ThreadPoolExecutor(bands, thread_name_prefix="png") as pool:
            parts = list(pool.map(lambda item: _deflate_band(*item), work))
    checksum = parts[0][1]
    for _, adler, length in parts[1:]:
        checksum = adler32_concat(checksum, adler, length)
    header = struct.pack(">IIBBBBB", width, height, 8 * pixels.dtype.itemsize, _COLOUR_TYPES[channels], 0, 0, 0)
    stream = b"".join([_ZLIB_HEADER, *(data for data, _, _ in parts), struct.pack(">I", checksum)])
    return b"".join([_SIGNATURE, _chunk(b"IHDR", header), _chunk(b"IDAT", stream), _chunk(b"IEND", b"")])
