"""HTTP/1.1 message heads: strict parsing, hop-by-hop filtering, serialization, body framing.

Only heads are parsed; bodies are forwarded as they arrive (`ChunkedDecoder` tracks
chunked framing without buffering). Parsing is strict on purpose: the proxy sits between
an untrusted client and upstreams that may parse differently, so anything ambiguous
(bare LF, obs-fold, control characters, conflicting Content-Length/Transfer-Encoding)
is rejected rather than guessed at -- the classic request-smuggling openings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .channel import Channel, ChannelClosed, HeadTooLarge

_TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
# One header field line; the value may be empty and has no controls other than HTAB.
_FIELD_VALUE = rb"[\t\x20-\x7e\x80-\xff]*"
_FIELDS_RE = re.compile(rb"(?:" + _TCHAR + rb"+:" + _FIELD_VALUE + rb"\r\n)*")
_METHOD_RE = re.compile(_TCHAR + rb"+")
_TARGET_RE = re.compile(rb"[\x21-\x7e]+")
_FIELD_VALUE_RE = re.compile(_FIELD_VALUE)
_STATUS_RE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*))?")

#: Never forwarded in either direction (RFC 9110 7.6.1), plus the proxy-only fields.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade",
    b"proxy-connection", b"proxy-authorization", b"proxy-authenticate",
})

# Framing of a message body.
NO_BODY = 0
LENGTH = 1
CHUNKED = 2
UNTIL_CLOSE = 3


class HttpError(Exception):
    """A request the proxy refuses to parse; maps to an HTTP status and an error code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def bad_request(message: str) -> HttpError:
    return HttpError(400, "bad_request", message)


@dataclass(slots=True)
class RequestHead:
    method: bytes
    target: bytes
    version: bytes
    fields: list[tuple[bytes, bytes]]
    raw: bytes
    host: bytes | None = None
    framing: int = NO_BODY
    content_length: int = 0
    keep_alive: bool = True
    websocket: bool = False
    #: True when the raw head can be forwarded as-is (no hop-by-hop or proxy fields).
    clean: bool = True
    basic_auth: bool = False
    expect_continue: bool = False
    connection_tokens: frozenset[bytes] = field(default_factory=frozenset)


@dataclass(slots=True)
class ResponseHead:
    status: int
    reason: bytes
    minor: int
    fields: list[tuple[bytes, bytes]]
    raw: bytes
    framing: int = UNTIL_CLOSE
    content_length: int = 0
    keep_alive: bool = True
    content_encoded: bool = False
    clean: bool = True
    connection_tokens: frozenset[bytes] = field(default_factory=frozenset)


def _split_fields(raw: bytes, start: int) -> list[tuple[bytes, bytes]]:
    block = raw[start:-2]  # header lines, each ending in CRLF; drop the final empty line
    if raw.count(b"\n") != raw.count(b"\r\n") or raw.count(b"\r") != raw.count(b"\r\n"):
        raise bad_request("bare CR or LF in the header block")
    if not _FIELDS_RE.fullmatch(block):
        raise bad_request("malformed header field (invalid name, control character or line folding)")
    if not block:
        return []
    out = []
    for line in block[:-2].split(b"\r\n"):  # validated above: every line is "name:value"
        name, _, value = line.partition(b":")
        out.append((name, value.strip(b" \t")))
    return out


def _tokens(value: bytes) -> set[bytes]:
    return {t.strip().lower() for t in value.split(b",") if t.strip()}


def _content_length(value: bytes, current: int | None) -> int:
    if not value.isdigit() or len(value) > 18:
        raise bad_request("invalid Content-Length")
    n = int(value)
    if current is not None and current != n:
        raise bad_request("conflicting Content-Length fields")
    return n


def parse_request_head(raw: bytes) -> RequestHead:
    """Parse a complete request head (ending in CRLFCRLF) or raise HttpError(400)."""
    if not raw.endswith(b"\r\n\r\n"):
        raise bad_request("header lines must end in CRLF")
    eol = raw.find(b"\r\n")
    parts = raw[:eol].split(b" ")
    if len(parts) != 3:
        raise bad_request("malformed request line")
    method, target, version = parts
    if not _METHOD_RE.fullmatch(method) or not _TARGET_RE.fullmatch(target):
        raise bad_request("malformed request line")
    if version == b"HTTP/1.1":
        keep_alive = True
    elif version == b"HTTP/1.0":
        keep_alive = False
    else:
        raise HttpError(505, "http_version_not_supported", "only HTTP/1.0 and HTTP/1.1 are supported")
    fields = _split_fields(raw, eol + 2)
    req = RequestHead(method=method, target=target, version=version, fields=fields, raw=raw, keep_alive=keep_alive)
    length: int | None = None
    chunked = False
    upgrade = b""
    for name, value in fields:
        lname = name.lower()
        if lname == b"host":
            if req.host is not None:
                raise bad_request("more than one Host field")
            req.host = value
        elif lname == b"content-length":
            length = _content_length(value, length)
        elif lname == b"authorization":
            if value[:6].lower() == b"basic ":
                req.basic_auth = True
        elif lname == b"expect":
            req.expect_continue = value.lower() == b"100-continue"
        elif lname in HOP_BY_HOP or lname.startswith(b"proxy-"):
            req.clean = False
            if lname == b"transfer-encoding":
                if chunked or value.lower() != b"chunked":
                    raise HttpError(501, "not_implemented", "only Transfer-Encoding: chunked is supported")
                chunked = True
            elif lname == b"connection":
                req.connection_tokens = req.connection_tokens | _tokens(value)
            elif lname == b"upgrade":
                upgrade = value.lower()
    if chunked:
        if length is not None:
            raise bad_request("both Content-Length and Transfer-Encoding")
        req.framing = CHUNKED
    elif length:
        req.framing = LENGTH
        req.content_length = length
    tokens = req.connection_tokens
    if tokens:
        if b"close" in tokens:
            req.keep_alive = False  # HTTP/1.0 clients are always closed after one exchange
        if tokens - {b"close", b"keep-alive"}:
            req.clean = False
        if b"upgrade" in tokens and upgrade == b"websocket":
            req.websocket = True
    return req


def parse_response_head(raw: bytes, request_method: bytes) -> ResponseHead:
    """Parse an upstream response head; raises HttpError(502) on anything malformed."""
    eol = raw.find(b"\r\n")
    m = _STATUS_RE.fullmatch(raw[:eol])
    if m is None:
        raise HttpError(502, "upstream_protocol_error", "upstream sent a malformed status line")
    try:
        fields = _split_fields(raw, eol + 2)
    except HttpError:
        raise HttpError(502, "upstream_protocol_error", "upstream sent a malformed header block") from None
    status = int(m.group(2))
    resp = ResponseHead(status=status, reason=m.group(3) or b"", minor=int(m.group(1)), fields=fields, raw=raw,
                        keep_alive=m.group(1) == b"1")
    length: int | None = None
    chunked = False
    for name, value in fields:
        lname = name.lower()
        if lname == b"content-length":
            try:
                length = _content_length(value, length)
            except HttpError:
                raise HttpError(502, "upstream_protocol_error", "upstream sent an invalid Content-Length") from None
        elif lname == b"content-encoding":
            if value.lower() not in (b"identity", b""):
                resp.content_encoded = True
        elif lname in HOP_BY_HOP or lname.startswith(b"proxy-"):
            resp.clean = False
            if lname == b"transfer-encoding":
                codings = [c.strip() for c in value.lower().split(b",")]
                if codings != [b"chunked"]:
                    raise HttpError(502, "upstream_protocol_error",
                                    "upstream used a transfer coding other than chunked")
                chunked = True
            elif lname == b"connection":
                resp.connection_tokens = resp.connection_tokens | _tokens(value)
    if b"close" in resp.connection_tokens:
        resp.keep_alive = False
    elif b"keep-alive" in resp.connection_tokens and resp.minor == 0:
        resp.keep_alive = True
    if request_method == b"HEAD" or status < 200 or status in (204, 304):
        resp.framing = NO_BODY
    elif chunked:
        resp.framing = CHUNKED
    elif length is not None:
        resp.framing = LENGTH if length else NO_BODY
        resp.content_length = length
    else:
        resp.framing = UNTIL_CLOSE
        resp.keep_alive = False
    if status == 101 or (request_method == b"CONNECT" and 200 <= status < 300):
        resp.framing = NO_BODY
    return resp


def filter_fields(fields: list[tuple[bytes, bytes]], connection_tokens: frozenset[bytes],
                  keep: frozenset[bytes] = frozenset()) -> list[tuple[bytes, bytes]]:
    """Drop hop-by-hop fields, Proxy-* fields and fields named by Connection (except `keep`)."""
    out = []
    for name, value in fields:
        lname = name.lower()
        if lname in keep:
            out.append((name, value))
        elif lname in HOP_BY_HOP or lname.startswith(b"proxy-") or lname in connection_tokens:
            continue
        else:
            out.append((name, value))
    return out


def serialize_head(start_line: bytes, fields: list[tuple[bytes, bytes]], extra: bytes = b"") -> bytes:
    """Start line, fields and `extra` (pre-formatted "Name: value\\r\\n" lines) as a head."""
    parts = [start_line]
    for name, value in fields:
        parts.append(name + b": " + value)
    head = b"\r\n".join(parts) + b"\r\n"
    return head + extra + b"\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


class ChunkedDecoder:
    """Streams the data of a chunked body out of a Channel, piece by piece.

    `read()` returns whatever chunk data is available now (so an SSE event is forwarded
    the moment it arrives), b"" once the terminating chunk and trailers are consumed.
    """

    __slots__ = ("ch", "remaining", "done", "trailers", "max_line")

    def __init__(self, ch: Channel, max_line: int = 8192) -> None:
        self.ch = ch
        self.remaining = 0  # bytes left in the current chunk
        self.done = False
        self.trailers: list[tuple[bytes, bytes]] = []
        self.max_line = max_line

    async def read(self) -> bytes:
        if self.done:
            return b""
        ch = self.ch
        if self.remaining == 0:
            try:
                line = await ch.read_line(self.max_line)
            except HeadTooLarge:
                raise bad_request("chunk size line too long") from None
            size_text = line.split(b";", 1)[0].strip(b" \t")
            if not size_text or len(size_text) > 15 or size_text.strip(b"0123456789abcdefABCDEF"):
                raise bad_request("invalid chunk size")
            size = int(size_text, 16)
            if size == 0:
                await self._read_trailers()
                self.done = True
                return b""
            self.remaining = size
        if not ch.buf:
            await ch.wait_data()
            if not ch.buf:
                raise ChannelClosed("stream ended inside a chunk")
        data = ch.take(self.remaining)
        self.remaining -= len(data)
        if self.remaining == 0:
            crlf = await ch.read_exactly(2)
            if crlf != b"\r\n":
                raise bad_request("chunk data not followed by CRLF")
        return data

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
            if total > 65536:
                raise bad_request("trailers too large")
            name, sep, value = line.partition(b":")
            if not sep or not _METHOD_RE.fullmatch(name) or not _FIELD_VALUE_RE.fullmatch(value):
                raise bad_request("malformed trailer field")
            self.trailers.append((name, value.strip(b" \t")))


def serialize_trailers(trailers: list[tuple[bytes, bytes]]) -> bytes:
    """The last chunk with (filtered) trailer fields."""
    kept = filter_fields(trailers, frozenset())
    return b"0\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in kept) + b"\r\n"
