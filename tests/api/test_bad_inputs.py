"""Every bad input gets a clear JSON answer with the right status, never a 5xx, and the server goes on.

One app on the real SavedModel takes the whole suite (in file order); the last test checks that a
normal request still succeeds and that no request of the suite was answered with a 5xx.
"""

from __future__ import annotations

import io
import re
import struct
import zipfile
import zlib

import numpy as np
import pytest
import tifffile
from helpers import decode_bytes, encode_bgr, make_settings, photo_like, running_app, serving
from PIL import Image

from enhancer.api import create_app

pytestmark = pytest.mark.anyio

UNSUPPORTED = "; send JPEG, PNG, WebP, BMP or TIFF"
#: Starlette's (python-multipart's) per-field limit for non-file form fields.
MAX_TEXT_FIELD = 1024 * 1024
UPLOAD_LIMIT = 3_000_000


@pytest.fixture(scope="module")
async def client(saved_model):
    app = create_app(make_settings(max_upload_bytes=UPLOAD_LIMIT), models=serving(saved_model))
    async with running_app(app) as c:
        yield c


# --- crafted files ------------------------------------------------------------------------------


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_claiming(width: int, height: int, rows: int = 1) -> bytes:
    """A valid PNG header for width x height RGB, with pixel data for only `rows` rows (a few KB)."""
    raw = (b"\x00" + b"\x00" * (width * 3)) * rows
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + _png_chunk(b"IDAT", zlib.compress(raw, 9))
        + _png_chunk(b"IEND", b"")
    )


def small_jpeg() -> bytes:
    return encode_bgr(photo_like(40, 48, seed=5), ".jpg", 1, 90)  # cv2.IMWRITE_JPEG_QUALITY


def jpeg_with_size(width: int, height: int) -> bytes:
    data = bytearray(small_jpeg())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def jpeg_with_bad_quantisation_table() -> bytes:
    data = bytearray(small_jpeg())
    dqt = data.index(b"\xff\xdb")
    data[dqt + 4] = 0x07  # table id 7: JPEG allows 0-3
    return bytes(data)


def jpeg_with_broken_exif() -> bytes:
    data = small_jpeg()
    exif = b"Exif\x00\x00" + b"MM\x00\x2a\x00\x00\x00\x08\xff\xff" + b"\x00" * 10  # 65535 entries claimed
    return data[:2] + b"\xff\xe1" + struct.pack(">H", 2 + len(exif)) + exif + data[2:]


def jpeg_cut_with_end_marker(**options) -> bytes:
    """A JPEG cut at half with an end-of-image marker appended: libjpeg fills the rest with grey."""
    buf = io.BytesIO()
    Image.fromarray(photo_like(128, 160, seed=6)).save(buf, "JPEG", quality=85, **options)
    data = buf.getvalue()
    return data[: len(data) // 2] + b"\xff\xd9"


def _jpeg_12kb_claiming_8000x6000() -> dict:
    """The first 12 KB of a real 8000x6000 JPEG, with an end marker: 48 MP of grey if decoded."""
    data = encode_bgr(np.zeros((6000, 8000, 3), np.uint8), ".jpg", 1, 1)[:12_000] + b"\xff\xd9"
    return file_upload(data)


def tiff_of(dtype: str, channels: int = 1) -> bytes:
    """A small TIFF with `dtype` samples holding values 0-255, as the issue sent them."""
    values = (np.arange(8 * 10 * channels) % 256).reshape(8, 10, channels).squeeze()
    buf = io.BytesIO()
    options = {"photometric": "rgb", "extrasamples": [0] * (channels - 3), "planarconfig": "contig"} if channels > 3 else {}
    tifffile.imwrite(buf, values.astype(dtype), **options)
    return buf.getvalue()


def bmp_with_bit_depth(bits: int) -> bytes:
    data = bytearray(encode_bgr(photo_like(10, 12), ".bmp"))
    data[28:30] = struct.pack("<H", bits)
    return bytes(data)


def animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (16, 16), (40 * i, 90, 200 - 40 * i)) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


SVG_XXE = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<!DOCTYPE svg [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
    b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><text>&xxe;</text></svg>\n'
)


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "enhancer-bad-input") -> tuple[bytes, dict]:
    """A hand-made multipart body: (field name, filename or None for a text field, content)."""
    body = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}


def file_upload(data: bytes, name: str = "photo.jpg") -> dict:
    return {"files": {"image": (name, data, "image/jpeg")}}


def raw(body: bytes, content_type: str | None) -> dict:
    return {"content": body, "headers": {"content-type": content_type} if content_type else {}}


def _thousands_of_fields() -> dict:
    body, headers = multipart([("image", "a.png", encode_bgr(photo_like(8, 8), ".png"))] + [(f"f{i}", None, b"x") for i in range(3000)])
    return {"content": body, "headers": headers}


def _thousands_of_files() -> dict:
    body, headers = multipart([("image", "a.png", encode_bgr(photo_like(8, 8), ".png"))] + [(f"f{i}", f"{i}.txt", b"x") for i in range(1500)])
    return {"content": body, "headers": headers}


def _long_boundary() -> dict:
    b = "B" * 300
    body, headers = multipart([("image", "a.png", encode_bgr(photo_like(8, 8), ".png"))], boundary=b)
    return {"content": body, "headers": headers}


def _oversized_text_field() -> dict:
    body, headers = multipart(
        [("image", "a.png", encode_bgr(photo_like(8, 8), ".png")), ("comment", None, b"x" * (MAX_TEXT_FIELD + 10))]
    )
    return {"content": body, "headers": headers}


def _two_files() -> dict:
    png = encode_bgr(photo_like(8, 8), ".png")
    return {"files": [("image", ("a.png", png, "image/png")), ("image", ("b.png", png, "image/png"))]}


def _one_part(boundary: str = "enhancer-bad-input") -> tuple[bytes, dict]:
    """A body with the image part and no closing boundary line, and its headers."""
    body, headers = multipart([("image", "a.png", encode_bgr(photo_like(8, 8), ".png"))], boundary)
    return body[: -len(f"--{boundary}--\r\n")], headers


def _no_closing_boundary() -> dict:
    body, headers = _one_part()
    return {"content": body, "headers": headers}


def _cut_inside_the_file() -> dict:
    body, headers = _one_part()
    return {"content": body[:-20], "headers": headers}


def _ok_png() -> bytes:
    return encode_bgr(photo_like(24, 24, seed=9), ".png")


_PNG = encode_bgr(photo_like(64, 64, seed=2), ".png")
_WEBP = encode_bgr(photo_like(64, 64, seed=2), ".webp")
_TIFF = encode_bgr(photo_like(64, 64, seed=2), ".tiff")
_JPEG = encode_bgr(photo_like(64, 64, seed=2), ".jpg")
_UNDECODABLE = "but could not be decoded (truncated or corrupt?)"
_INCOMPLETE = (
    "the multipart/form-data body is incomplete: it ends before its closing boundary line, so the upload was "
    "cut short; send the whole request again"
)
_TOO_MANY = "pixel limit; downscale or crop it and try again"
_CUT_JPEG = "the file is a corrupt or truncated JPEG: its coded data ends before the whole image; send the complete file"
_NO_SCALE = (
    "samples, which have no agreed brightness scale; save it with 8- or 16-bit unsigned integer samples "
    "(or 32-bit floating-point, 0 to 1)"
)

#: (id, request kwargs (or a function making them), status, the message or a regex it must match)
CASES = [
    ("zero-byte file", file_upload(b""), 400, "the uploaded file is empty; attach an image in the 'image' field"),
    ("one-byte file", file_upload(b"\xff"), 415, "the upload is not a supported image" + UNSUPPORTED),
    ("two bytes of JPEG magic", file_upload(b"\xff\xd8"), 415, "the upload is not a supported image" + UNSUPPORTED),
    ("truncated JPEG", file_upload(_JPEG[: len(_JPEG) // 2]), 400, "the file looks like JPEG " + _UNDECODABLE),
    ("JPEG cut at half, end marker appended", file_upload(jpeg_cut_with_end_marker()), 400, _CUT_JPEG),
    ("progressive JPEG cut at half, end marker appended", file_upload(jpeg_cut_with_end_marker(progressive=True)), 400, _CUT_JPEG),
    (
        "12 KB JPEG claiming 8000x6000",
        _jpeg_12kb_claiming_8000x6000,
        400,
        "the file is a corrupt or truncated JPEG: it declares 8000x6000 pixels but has only 12,002 bytes, "
        "less than one bit per 8x8 block; send the complete file",
    ),
    ("truncated PNG", file_upload(_PNG[:100]), 400, "the file looks like PNG " + _UNDECODABLE),
    ("truncated WebP", file_upload(_WEBP[: len(_WEBP) // 2]), 400, "the file looks like WebP " + _UNDECODABLE),
    ("truncated TIFF", file_upload(_TIFF[: len(_TIFF) // 2]), 400, "the file looks like TIFF " + _UNDECODABLE),
    ("PNG header only, zero width", file_upload(png_claiming(0, 10)[:33]), 400, "the file looks like PNG " + _UNDECODABLE),
    (
        "header claiming 100000x100000",
        file_upload(png_claiming(100_000, 100_000)),
        413,
        "the image is 100000x100000 = 10,000,000,000 pixels, more than the 50,000,000 pixel limit, and "
        "100,000 px is longer than the 16,384 px limit for a side; downscale or crop it and try again",
    ),
    (
        "PNG bomb 16384x16384 of a few KB",
        file_upload(png_claiming(16384, 16384)),
        413,
        "the image is 16384x16384 = 268,435,456 pixels, more than the 50,000,000 " + _TOO_MANY,
    ),
    (
        "JPEG bomb 65000x65000",
        file_upload(jpeg_with_size(65000, 65000)),
        413,
        "the image is 65000x65000 = 4,225,000,000 pixels, more than the 50,000,000 pixel limit, and "
        "65,000 px is longer than the 16,384 px limit for a side; downscale or crop it and try again",
    ),
    (
        "side over the limit",
        file_upload(png_claiming(20000, 2, rows=2)),
        413,
        "the image is 20000x2, and 20,000 px is longer than the 16,384 px limit for a side; "
        "downscale or crop it and try again",
    ),
    (
        "over the pixel limit and a side",
        file_upload(png_claiming(20000, 3000)),
        413,
        "the image is 20000x3000 = 60,000,000 pixels, more than the 50,000,000 pixel limit, and 20,000 px is "
        "longer than the 16,384 px limit for a side; downscale or crop it and try again",
    ),
    ("int16 TIFF", file_upload(tiff_of("int16")), 415, "the TIFF stores 16-bit signed integer " + _NO_SCALE),
    ("uint32 TIFF", file_upload(tiff_of("uint32")), 415, "the TIFF stores 32-bit unsigned integer " + _NO_SCALE),
    (
        "5-channel TIFF",
        file_upload(tiff_of("uint8", channels=5)),
        415,
        "the TIFF has 5 channels (samples per pixel); only grey, grey+alpha, RGB, RGBA and CMYK TIFFs "
        "(1 to 4 channels) are supported: save it with one of those layouts",
    ),
    ("animated GIF", file_upload(animated("GIF")), 415, "the upload is a GIF file, which is not supported" + UNSUPPORTED),
    (
        "animated WebP",
        file_upload(animated("WEBP")),
        415,
        "the upload is an animated WebP; animated images are not supported: send a single still frame "
        "as JPEG, PNG, WebP, BMP or TIFF",
    ),
    (
        "animated PNG",
        file_upload(animated("PNG")),
        415,
        "the upload is an animated PNG (APNG); animated images are not supported: send a single still "
        "frame as JPEG, PNG, WebP, BMP or TIFF",
    ),
    ("SVG with an XXE payload", file_upload(SVG_XXE, "x.svg"), 415, "the upload is an SVG file, which is not supported" + UNSUPPORTED),
    ("text file renamed .jpg", file_upload(b"Dear diary,\nnot an image.\n", "photo.jpg"), 415, "the upload is not a supported image" + UNSUPPORTED),
    ("PDF", file_upload(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n"), 415, "the upload is a PDF file, which is not supported" + UNSUPPORTED),
    ("HEIC", file_upload(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00heicmif1"), 415, "the upload is a HEIC file, which is not supported" + UNSUPPORTED),
    (
        "polyglot: JPEG magic, HTML body",
        file_upload(b"\xff\xd8\xff\xe0<html><script>alert(1)</script></html>"),
        400,
        "the file looks like JPEG " + _UNDECODABLE,
    ),
    ("BMP with an invalid bit depth", file_upload(bmp_with_bit_depth(7)), 400, "the file looks like BMP " + _UNDECODABLE),
    ("JPEG with a bad quantisation table", file_upload(jpeg_with_bad_quantisation_table()), 400, "the file looks like JPEG " + _UNDECODABLE),
    ("wrong field name", {"files": {"picture": ("a.png", _PNG, "image/png")}}, 422, "form field 'image': is required: send the image as multipart/form-data in this field"),
    ("image sent as a text field", {"content": multipart([("image", None, b"photo.jpg")])[0], "headers": multipart([])[1]}, 422, "form field 'image': must be a file upload, not a text value (e.g. curl -F image=@photo.jpg)"),
    ("two files", _two_files, 422, "form field 'image': send exactly one file; this request has several in that field"),
    (
        "JSON body",
        {"json": {"image": "aGVsbG8="}},
        415,
        "the request must be multipart/form-data with the image in the field 'image' (got Content-Type "
        "application/json); e.g. curl -F image=@photo.jpg",
    ),
    (
        "raw image body",
        raw(_PNG, "image/png"),
        415,
        "the request must be multipart/form-data with the image in the field 'image' (got Content-Type "
        "image/png); e.g. curl -F image=@photo.jpg",
    ),
    (
        "no body, no Content-Type",
        {},
        415,
        "the request must be multipart/form-data with the image in the field 'image' (got no Content-Type); "
        "e.g. curl -F image=@photo.jpg",
    ),
    ("missing boundary", raw(b"--x\r\n", "multipart/form-data"), 400, "the multipart/form-data Content-Type has no boundary parameter"),
    ("boundary of 300 characters", _long_boundary, 400, "the multipart boundary is 300 characters long; at most 70 are allowed (RFC 2046)"),
    (
        "garbage multipart body",
        raw(b"garbage", "multipart/form-data; boundary=abc"),
        400,
        "the multipart/form-data body holds no part: the boundary given in its Content-Type does not occur in it",
    ),
    ("no closing boundary", _no_closing_boundary, 400, _INCOMPLETE),
    ("cut inside the file", _cut_inside_the_file, 400, _INCOMPLETE),
    (
        "part header without a colon",
        raw(b"--abc\r\nno colon in this header line\r\n\r\nx\r\n--abc--\r\n", "multipart/form-data; boundary=abc"),
        400,
        "the multipart/form-data body could not be parsed: Invalid multipart data.",
    ),
    ("thousands of fields", _thousands_of_fields, 400, "the multipart/form-data body could not be parsed: Too many fields. Maximum number of fields is 1000."),
    ("thousands of files", _thousands_of_files, 400, "the multipart/form-data body could not be parsed: Too many files. Maximum number of files is 1000."),
    ("oversized text field", _oversized_text_field, 400, re.compile(r"^the multipart/form-data body could not be parsed: \w+ exceeded maximum size of 1024KB\.$")),
    (
        "upload over the byte limit",
        file_upload(b"\x89PNG\r\n\x1a\n" + b"\x00" * (UPLOAD_LIMIT + 100_000)),
        413,
        f"the upload is larger than the {UPLOAD_LIMIT:,} byte limit (ENHANCER_MAX_UPLOAD_BYTES); send a smaller file",
    ),
    ("format=gif", {**file_upload(_PNG), "params": {"format": "gif"}}, 422, "query parameter 'format': Input should be 'png', 'jpeg' or 'webp'"),
    ("quality=0", {**file_upload(_PNG), "params": {"quality": 0}}, 422, "query parameter 'quality': Input should be greater than or equal to 1"),
    ("quality=101", {**file_upload(_PNG), "params": {"quality": 101}}, 422, "query parameter 'quality': Input should be less than or equal to 100"),
    ("quality=high", {**file_upload(_PNG), "params": {"quality": "high"}}, 422, "query parameter 'quality': Input should be a valid integer, unable to parse string as an integer"),
]


@pytest.mark.parametrize("kwargs,status,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_bad_input_gets_a_clear_answer(client, kwargs, status, message):
    kwargs = kwargs() if callable(kwargs) else kwargs
    r = await client.post("/upscale", **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    detail = r.json()["detail"]
    assert isinstance(detail, str)
    if isinstance(message, re.Pattern):
        assert message.match(detail), detail
    else:
        assert detail == message
    assert b"root:" not in r.content  # nothing of the XXE target leaks, whatever the case


def test_the_suite_is_big_enough():
    assert len(CASES) >= 30


# --- inputs that look odd but are fine -----------------------------------------------------------


async def test_broken_exif_is_ignored(client):
    r = await client.post("/upscale", **file_upload(jpeg_with_broken_exif()))
    assert r.status_code == 200, r.text
    assert decode_bytes(r.content).shape == (40, 48, 3)


async def test_polyglot_png_with_a_zip_appended_comes_back_without_the_payload(client):
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("evil.html", "<script>alert(1)</script>")
    data = _ok_png() + archive.getvalue()
    r = await client.post("/upscale", **file_upload(data, "photo.png"))
    assert r.status_code == 200, r.text
    assert b"PK\x03\x04" not in r.content and b"<script>" not in r.content  # the answer is re-encoded
    assert decode_bytes(r.content).shape == (24, 24, 3)


async def test_a_preamble_before_the_first_boundary_is_allowed(client):
    """RFC 2046 section 5.1.1: text before the first boundary line is to be ignored."""
    body, headers = multipart([("image", "photo.png", _ok_png())])
    r = await client.post("/upscale", content=b"This is a multi-part message in MIME format.\r\n" + body, headers=headers)
    assert r.status_code == 200, r.text
    assert decode_bytes(r.content).shape == (24, 24, 3)


async def test_a_file_named_only_with_filename_star_is_a_file(client):
    """RFC 7578 section 4.2 rules `filename*` out of form data, but clients send it for non-ASCII names."""
    boundary = "enhancer-bad-input"
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename*=UTF-8''%D1%84%D0%BE%D1%82%D0%BE.png\r\n"
        f"Content-Type: image/png\r\n\r\n"
    ).encode() + _ok_png() + f"\r\n--{boundary}--\r\n".encode()
    r = await client.post("/upscale", content=body, headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 200, r.text
    assert decode_bytes(r.content).shape == (24, 24, 3)
    assert r.headers["content-disposition"].endswith("filename*=UTF-8''%D1%84%D0%BE%D1%82%D0%BE_enhanced.png")


async def test_after_the_suite_the_server_still_serves_and_answered_no_5xx(client):
    r = await client.post("/upscale", **file_upload(_ok_png(), "photo.png"))
    assert r.status_code == 200
    assert decode_bytes(r.content).shape == (24, 24, 3)
    assert (await client.get("/readyz")).status_code == 200
    metrics = (await client.get("/metrics")).text
    statuses = re.findall(r'enhancer_http_requests_total\{method="POST",route="[^"]*",status="(\d+)"\}', metrics)
    assert statuses and not [s for s in statuses if s.startswith("5")]
