"""The multipart framing check on its own: what the form parser is handed, and which bodies are
refused, however the body is cut into chunks on the way in."""

from __future__ import annotations

import pytest
from python_multipart.multipart import parse_options_header

from enhancer.api.multipart import MAX_PREAMBLE_BYTES, MultipartFraming
from enhancer.errors import MalformedRequestError

BOUNDARY = "b0undary"
FILE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4 + b"\r\n--b0und" + b"\r\n-" * 3  # boundary-like bytes inside
CLOSE = f"--{BOUNDARY}--\r\n".encode()


def part(disposition: str, content: bytes = FILE) -> bytes:
    head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\nContent-Type: image/png\r\n\r\n"
    return head.encode("utf-8") + content + b"\r\n"


def framed(body: bytes, chunk: int) -> bytes:
    """The body passed through a framing check in chunks of `chunk` bytes, finished."""
    framing = MultipartFraming(BOUNDARY)
    out = b"".join(framing.feed(body[i : i + chunk]) for i in range(0, len(body), chunk))
    framing.finish()
    return out


CHUNKS = [1, 2, 3, 7, 13, 64, 1000, 1 << 20]


@pytest.mark.parametrize("chunk", CHUNKS)
def test_a_well_formed_body_passes_unchanged(chunk):
    body = part('form-data; name="image"; filename="a.png"') + part('form-data; name="note"', b"hi") + CLOSE
    assert framed(body, chunk) == body
    assert framed(body + b"an epilogue\r\n", chunk) == body + b"an epilogue\r\n"  # RFC 2046 allows one


@pytest.mark.parametrize("chunk", CHUNKS)
def test_a_preamble_is_dropped(chunk):
    body = part('form-data; name="image"; filename="a.png"') + CLOSE
    assert framed(b"This is a multi-part message in MIME format.\r\n" + body, chunk) == body
    assert framed(b"\r\n" + body, chunk) == body  # an empty preamble line


@pytest.mark.parametrize("chunk", CHUNKS)
def test_a_file_named_only_by_filename_star_gets_a_plain_filename(chunk):
    body = part("form-data; name=\"image\"; filename*=UTF-8''%D1%84%D0%BE%D1%82%D0%BE.png") + CLOSE
    out = framed(body, chunk)
    head = out.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    disposition = next(line for line in head if line.lower().startswith(b"content-disposition:"))
    _, options = parse_options_header(disposition.split(b":", 1)[1])  # as the form parser reads it
    assert options[b"filename"].decode("utf-8") == "фото.png"
    assert out.split(b"\r\n\r\n", 1)[1] == body.split(b"\r\n\r\n", 1)[1]  # the file bytes untouched


def test_a_filename_star_cannot_add_header_lines_or_break_the_quotes():
    body = part("form-data; name=\"image\"; filename*=UTF-8''a%0D%0AX-Evil%3A%201%22%5C.png") + CLOSE
    out = framed(body, 1 << 20)
    head = out.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nX-Evil" not in head
    disposition = head.split(b"\r\n")[1]
    _, options = parse_options_header(disposition.split(b":", 1)[1])
    assert options[b"filename"] == b'aX-Evil: 1"\\.png'


def test_a_plain_filename_wins_over_filename_star():
    body = part("form-data; name=\"image\"; filename=\"a.png\"; filename*=UTF-8''b.png") + CLOSE
    assert framed(body, 1 << 20) == body


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize(
    "body",
    [
        part('form-data; name="image"; filename="a.png"'),  # no closing boundary line
        part('form-data; name="image"; filename="a.png"')[:-2],
        part('form-data; name="image"; filename="a.png"')[:40],  # cut inside the headers
        part('form-data; name="image"; filename="a.png"') + CLOSE[:-4],  # cut inside the closing line
        f"--{BOUNDARY}".encode(),
    ],
    ids=["after a part", "inside the file", "inside the headers", "inside the closing line", "first line only"],
)
def test_a_body_without_its_closing_boundary_is_incomplete(body, chunk):
    with pytest.raises(MalformedRequestError, match=r"^the multipart/form-data body is incomplete: it ends before"):
        framed(body, chunk)


@pytest.mark.parametrize("body", [b"", b"garbage", b"--other\r\n\r\nx\r\n--other--\r\n"])
def test_a_body_without_the_boundary_holds_no_part(body):
    with pytest.raises(MalformedRequestError, match=r"^the multipart/form-data body holds no part"):
        framed(body, 3)


def test_a_long_preamble_is_refused_without_holding_it():
    framing = MultipartFraming(BOUNDARY)
    with pytest.raises(MalformedRequestError, match=r"before its first boundary line"):
        for _ in range(2 * MAX_PREAMBLE_BYTES // 1000):
            assert framing.feed(b"x" * 1000) == b""
