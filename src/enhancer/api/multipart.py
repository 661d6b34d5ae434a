"""The framing of a multipart/form-data upload, checked and mended while the body streams in.

Starlette's form parser (python-multipart) is stricter than RFC 2046 in one place and silent about
a broken body in another; this layer sits between the server and it and only looks at the boundary
lines and the part headers, never at the file bytes between them:

* A preamble before the first boundary (RFC 2046 section 5.1.1 allows one, and it carries nothing)
  is dropped, where the parser would refuse the whole body.
* A part that names its file only with `filename*=` (the RFC 8187 form, which RFC 7578 section 4.2
  rules out for form data but some clients send for non-ASCII names) also gets a plain `filename`,
  so it is read as the file it is and not as a text field.
* A body that ends before its closing boundary line was cut short: 400 saying so, where the parser
  would drop the unfinished part and the request would fail as if the field were missing. A body in
  which the boundary never occurs gets its own 400.
"""

from __future__ import annotations

import email.message
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from enhancer.api.errors import enhancer_error_response
from enhancer.errors import MalformedRequestError

#: Most bytes of preamble dropped before the first boundary line.
MAX_PREAMBLE_BYTES = 64 * 1024
#: Part headers longer than this are passed on unread (the parser then judges them).
MAX_HEADER_BLOCK_BYTES = 16 * 1024

_CRLF = b"\r\n"
_END_OF_HEADERS = b"\r\n\r\n"
_DISPOSITION = re.compile(rb"^content-disposition\s*:", re.IGNORECASE)
_PLAIN_FILENAME = re.compile(rb";\s*filename\s*=", re.IGNORECASE)
_EXTENDED_FILENAME = re.compile(rb";\s*filename\*\s*=", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def multipart_boundary(scope: Scope) -> str | None:
    """The boundary parameter of a multipart/form-data Content-Type, or None if it is not one or
    has none."""
    raw = next((value for name, value in scope.get("headers", ()) if name == b"content-type"), b"")
    media_type, _, params = raw.decode("latin-1").partition(";")
    if media_type.strip().lower() != "multipart/form-data":
        return None
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "boundary":
            return value.strip().strip('"') or None
    return None


def _with_plain_filename(header_block: bytes) -> bytes:
    """`header_block` (a part's headers up to the blank line), with `filename="<name>"` added to a
    Content-Disposition that names its file only as `filename*`."""
    lines = header_block.split(_CRLF)
    for index, line in enumerate(lines):
        if not _DISPOSITION.match(line) or _PLAIN_FILENAME.search(line) or not _EXTENDED_FILENAME.search(line):
            continue
        parsed = email.message.Message()
        parsed["Content-Disposition"] = line.split(b":", 1)[1].decode("latin-1").strip()
        name = _CONTROL.sub("", parsed.get_filename() or "") or "upload"
        quoted = name.replace("\\", "\\\\").replace('"', '\\"').encode("utf-8")
        lines[index] = line + b'; filename="' + quoted + b'"'
    return _CRLF.join(lines)


class MultipartFraming:
    """Follows one body's boundary lines as its chunks pass (`feed`), and returns the bytes the form
    parser should see; `finish` at the end of the body says whether it was whole."""

    def __init__(self, boundary: str):
        self._delimiter = b"--" + boundary.encode("latin-1")
        self._inner = _CRLF + self._delimiter  # a boundary line after the first starts a new line
        self._held = bytearray()  # bytes not passed on yet: they may be part of a boundary or headers
        self._phase = "preamble"  # preamble, delimiter, headers, body, epilogue
        self._at_start = True  # nothing of the body dropped or passed on yet
        self._dropped = 0

    def feed(self, data: bytes) -> bytes:
        """Take the next chunk of the body; return what can be passed on now."""
        held = self._held
        held += data
        out = bytearray()
        while True:
            if self._phase == "preamble":
                if self._at_start and len(held) < len(self._delimiter) and self._delimiter.startswith(held):
                    break  # too short to tell whether the body starts with its boundary
                if self._at_start and held.startswith(self._delimiter):
                    self._phase = "delimiter"
                    continue
                found = held.find(self._inner)
                cut = found + len(_CRLF) if found >= 0 else max(0, len(held) - len(self._inner) + 1)
                self._dropped += cut
                self._at_start = self._at_start and cut == 0
                del held[:cut]
                if self._dropped > MAX_PREAMBLE_BYTES:
                    raise MalformedRequestError(
                        f"the multipart/form-data body has more than {MAX_PREAMBLE_BYTES:,} bytes before its first "
                        "boundary line; the boundary in the Content-Type does not match the body"
                    )
                if found < 0:
                    break
                self._phase = "delimiter"
            elif self._phase == "delimiter":  # `held` starts with a boundary line
                if len(held) < len(self._delimiter) + 2:
                    break
                self._phase = "epilogue" if held[len(self._delimiter) :].startswith(b"--") else "headers"
            elif self._phase == "headers":
                end = held.find(_END_OF_HEADERS, len(self._delimiter))
                if end < 0:
                    if len(held) <= MAX_HEADER_BLOCK_BYTES:
                        break
                    out += held  # too long to be looked at: passed on as it is
                    held.clear()
                else:
                    out += _with_plain_filename(bytes(held[:end])) + _END_OF_HEADERS
                    del held[: end + len(_END_OF_HEADERS)]
                self._phase = "body"
            elif self._phase == "body":
                found = held.find(self._inner)
                if found < 0:
                    keep = len(self._inner) - 1  # the start of a boundary line split across chunks
                    if len(held) > keep:
                        out += held[:-keep]
                        del held[:-keep]
                    break
                out += held[: found + len(_CRLF)]
                del held[: found + len(_CRLF)]
                self._phase = "delimiter"
            else:  # epilogue: after the closing boundary line nothing is looked at
                out += held
                held.clear()
                break
        return bytes(out)

    def finish(self) -> None:
        """The body has ended: raise MalformedRequestError unless its closing boundary line came."""
        if self._phase == "epilogue":
            return
        if self._phase == "preamble":
            raise MalformedRequestError(
                "the multipart/form-data body holds no part: the boundary given in its Content-Type does not "
                "occur in it"
            )
        raise MalformedRequestError(
            "the multipart/form-data body is incomplete: it ends before its closing boundary line, so the "
            "upload was cut short; send the whole request again"
        )


class _FramingFailed(Exception):
    """Raised into the app's body reader when the body's framing is refused."""


class MultipartFramingMiddleware:
    """Runs the upload body of `paths` through `MultipartFraming` on its way to the app; a refused
    body is answered 400 with the reason in place of whatever the app made of the failed read."""

    def __init__(self, app: ASGIApp, paths: frozenset[str]):
        self.app = app
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        boundary = None
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.paths:
            boundary = multipart_boundary(scope)
        if boundary is None:  # not an upload, or the gate in front has refused it already
            await self.app(scope, receive, send)
            return
        framing = MultipartFraming(boundary)
        failure: MalformedRequestError | None = None

        async def framed_receive() -> Message:
            nonlocal failure
            message = await receive()
            if message["type"] != "http.request" or failure is not None:
                return message
            try:
                body = framing.feed(message.get("body", b""))
                if not message.get("more_body", False):
                    framing.finish()
            except MalformedRequestError as error:
                failure = error
                raise _FramingFailed from None
            return {**message, "body": body}

        async def guarded_send(message: Message) -> None:
            if failure is None:
                await send(message)

        try:
            await self.app(scope, framed_receive, guarded_send)
        except Exception:
            if failure is None:
                raise
        if failure is not None:
            await enhancer_error_response(failure)(scope, receive, send)
