"""ICC profiles: which colour space a profile describes, and embedding one in encoded bytes.

Done on the encoded bytes because OpenCV cannot write profiles: PNG gets an iCCP chunk after IHDR,
JPEG APP2 ICC_PROFILE segments after SOI/JFIF, WebP an ICCP chunk (in the extended VP8X layout,
which is created when the encoder wrote a simple one).
"""

from __future__ import annotations

import struct
import zlib

from enhancer.imaging.formats import OutputFormat

#: Largest profile payload of one JPEG APP2 segment (65535 - 2 length bytes - 14 header bytes).
_JPEG_ICC_CHUNK = 65519


def colour_space(profile: bytes | None) -> bytes | None:
    """The profile's data colour space (b'RGB ', b'GRAY', b'CMYK', ...), None if not a profile."""
    if profile is None or len(profile) < 128 or profile[36:40] != b"acsp":
        return None
    return profile[16:20]


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _riff_chunk(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("<I", len(payload)) + payload + (b"\x00" if len(payload) % 2 else b"")


def embed(
    data: bytes, fmt: OutputFormat, profile: bytes | None, *, grey: bool, size: tuple[int, int], alpha: bool
) -> bytes:
    """`data` with `profile` embedded, if the profile's colour space matches the encoded channels."""
    if colour_space(profile) != (b"GRAY" if grey else b"RGB "):
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
