"""The one body reader: a message body out of a Channel, piece by piece, whatever its framing.

Request uploads, response relays and the pass-through of large bodies all read through
`BodyReader.read()`, which returns whatever body bytes are available now (so an SSE event
is forwarded the moment it arrives) and b"" once the body is complete. Nothing is
buffered here beyond what the Channel already holds.
"""

from __future__ import annotations

import re

from .channel import Channel, ChannelClosed, HeadTooLarge
from .errors import bad_request
from .http1 import _FIELD_VALUE_RE, _METHOD_RE, _TCHAR, CHUNKED, LENGTH, UNTIL_CLOSE, filter_fields

#: Largest piece handed out at once for a close-delimited body.
_PIECE = 1 << 20
#: Largest total size of a chunked body's trailer section.
_MAX_TRAILERS = 65536
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e]|\\[\t \x21-\x7e])*"'
#: A chunk-size line as strict llhttp accepts it (a subset: llhttp also takes `;=v` and `;n=`).
_CHUNK_LINE_RE = re.compile(rb"([0-9A-Fa-f]{1,15})(?:;" + _TCHAR + rb"+(?:=(?:" + _TCHAR + rb"+|" + _QUOTED + rb"))?)*")

#: Fields that frame or route a message: strict llhttp rejects a message whose trailers carry
#: Content-Length or Transfer-Encoding, so the proxy refuses them (and Host) there too.
_NOT_IN_TRAILERS = frozenset({b"content-length", b"transfer-encoding", b"host"})


class BodyReader:
    """Reads a Content-Length, chunked or close-delimited body (`http1` framing constants).

    `strict` for request bodies: chunk-size lines and trailers as strict llhttp reads them,
    since the upstream must frame the request exactly as the proxy did. Response bodies are
    read leniently. `trailers` holds a chunked body's trailer fields once it is complete.
    """

    __slots__ = ("ch", "done", "framing", "max_line", "remaining", "strict", "trailers")

    def __init__(self, ch: Channel, framing: int, length: int = 0, strict: bool = True, max_line: int = 8192) -> None:
        self.ch = ch
        self.framing = framing
        self.remaining = length if framing == LENGTH else 0  # bytes left (of the body or current chunk)
        self.done = framing not in (LENGTH, CHUNKED, UNTIL_CLOSE) or (framing == LENGTH and not length)
        self.trailers: list[tuple[bytes, bytes]] = []
        self.max_line = max_line
        self.strict = strict

    async def read(self) -> bytes:
        """The next piece of the body; b"" once it is complete. ChannelClosed if the stream ends early."""
        if self.done:
            return b""
        framing = self.framing
        if framing == CHUNKED and self.remaining == 0:
            size = await self._chunk_line()
            if size == 0:
                await self._read_trailers()
                self.done = True
                return b""
            self.remaining = size
        ch = self.ch
        if not ch.buf:
            await ch.wait_data()
            if not ch.buf:
                if framing == UNTIL_CLOSE:
                    self.done = True
                    return b""
                raise ChannelClosed("stream ended inside the body")
        if framing == UNTIL_CLOSE:
            return ch.take(_PIECE)
        data = ch.take(self.remaining)
        self.remaining -= len(data)
        if self.remaining == 0:
            if framing == LENGTH:
                self.done = True
            elif await ch.read_exactly(2) != b"\r\n":
                raise bad_request("chunk data not followed by CRLF")
        return data

    async def _chunk_line(self) -> int:
        try:
            line = await self.ch.read_line(self.max_line)
        except HeadTooLarge:
            raise bad_request("chunk size line too long") from None
        return chunk_size(line, self.strict)

    async def _read_trailers(self) -> None:
        total = 0
        while True:
            try:
                line = await self.ch.read_line(self.max_line)
            except HeadTooLarge:
                raise bad_request("trailer line too long") from None
            if not line:
                return
            total += len(line)
            if total > _MAX_TRAILERS:
                raise bad_request("trailers too large")
            self.trailers.append(trailer_field(line, self.strict))


def chunk_size(line: bytes, strict: bool) -> int:
    """The size on a chunk-size line; `strict` (requests) as llhttp reads it, else leniently (responses)."""
    if strict:
        m = _CHUNK_LINE_RE.fullmatch(line)
        if m is None:  # no whitespace, no bare CR/LF, extensions as tokens or quoted strings only
            raise bad_request("invalid chunk size")
        return int(m.group(1), 16)
    size_text = line.split(b";", 1)[0].strip(b" \t")
    if not size_text or len(size_text) > 15 or size_text.strip(b"0123456789abcdefABCDEF"):
        raise bad_request("invalid chunk size")
    return int(size_text, 16)


def trailer_field(line: bytes, strict: bool) -> tuple[bytes, bytes]:
    """(name, value) of one trailer line; framing and routing fields are refused in `strict` mode."""
    name, sep, value = line.partition(b":")
    if not sep or not _METHOD_RE.fullmatch(name) or not _FIELD_VALUE_RE.fullmatch(value):
        raise bad_request("malformed trailer field")
    if strict and name.lower() in _NOT_IN_TRAILERS:
        raise bad_request("framing or routing field in trailers")
    return name, value.strip(b" \t")


def ChunkedDecoder(ch: Channel, max_line: int = 8192, strict: bool = True) -> BodyReader:
    """A reader of a chunked body (the name the unit tests know)."""
    return BodyReader(ch, CHUNKED, strict=strict, max_line=max_line)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


def serialize_trailers(trailers: list[tuple[bytes, bytes]]) -> bytes:
    """The last chunk with (filtered) trailer fields."""
    kept = filter_fields(trailers, frozenset())
    return b"0\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in kept) + b"\r\n"
