"""HTTP/1.1 message heads: strict parsing, hop-by-hop filtering, rewriting, body framing.

Only heads are parsed, and only as far as the proxy needs: one regex validates the whole
header block, a second finds the few fields that matter (framing, Host, Connection,
hop-by-hop, Proxy-*). An outgoing head is the incoming one with a handful of slice edits
(`edit_head`): lines dropped, values replaced, lines appended. Nothing walks every field
in Python on the hot path.

Parsing is strict on purpose: the proxy sits between an untrusted client and upstreams
that may parse differently, so anything ambiguous (bare CR/LF, obs-fold, control
characters, conflicting Content-Length/Transfer-Encoding, two Hosts) is rejected rather
than guessed at -- the classic request-smuggling openings. Bodies are read by body.py.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .errors import ProxyError, bad_request

_TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
# One header field line; the value may be empty and has no controls other than HTAB.
_FIELD_VALUE = rb"[\t\x20-\x7e\x80-\xff]*"
_FIELDS_RE = re.compile(rb"(?:" + _TCHAR + rb"+:" + _FIELD_VALUE + rb"\r\n)*")
_METHOD_RE = re.compile(_TCHAR + rb"+")
_TARGET_RE = re.compile(rb"[\x21-\x7e]+")
_FIELD_VALUE_RE = re.compile(_FIELD_VALUE)
_STATUS_RE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*))?")
_HOP = rb"connection|keep-alive|te|trailer|transfer-encoding|upgrade|proxy-" + _TCHAR + rb"*"
# The fields the proxy acts on; everything else passes through untouched.
_REQUEST_SPECIAL_RE = re.compile(
    rb"\r\n(host|content-length|expect|authorization|accept-encoding|" + _HOP + rb"):", re.I
)
_RESPONSE_SPECIAL_RE = re.compile(rb"\r\n(content-length|content-encoding|" + _HOP + rb"):", re.I)

#: Never forwarded in either direction (RFC 9110 7.6.1), plus the proxy-only fields.
HOP_BY_HOP = frozenset(
    b"connection keep-alive te trailer transfer-encoding upgrade proxy-connection proxy-authorization "
    b"proxy-authenticate".split()
)
#: Fields a Connection option can never remove: the proxy frames and routes the message by them,
#: so dropping one would let the peer read the body differently (`Connection: content-length`
#: turns the body into a second request the proxy never checked).
_FRAMING_FIELDS = frozenset({b"content-length", b"host"})
#: Connection options that do not name a field to drop (anything else a Connection field lists is dropped too).
_CONNECTION_OPTIONS = frozenset({b"close", b"keep-alive", b"upgrade"}) | HOP_BY_HOP | _FRAMING_FIELDS

# Framing of a message body.
NO_BODY = 0
LENGTH = 1
CHUNKED = 2
UNTIL_CLOSE = 3

Span = tuple[int, int]
Edit = tuple[int, int, bytes]
_NO_TOKENS: frozenset[bytes] = frozenset()


class RequestHead:
    """A validated request head: what the proxy decides on, and where in `raw` things are."""

    __slots__ = (
        "accept_encoding",
        "authorization",
        "connection_tokens",
        "content_length",
        "drop",
        "expect_continue",
        "framing",
        "host",
        "host_spans",
        "keep_alive",
        "length_spans",
        "line_end",
        "method",
        "raw",
        "target",
        "version",
        "websocket",
    )

    def __init__(self, method: bytes, target: bytes, version: bytes, raw: bytes, line_end: int) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.raw = raw
        self.line_end = line_end  # index of the CRLF that ends the request line
        self.host: bytes | None = None
        self.host_spans: Sequence[Span] = ()
        self.framing = NO_BODY
        self.content_length = 0
        self.length_spans: Sequence[Span] = ()  # Content-Length lines
        self.keep_alive = version == b"HTTP/1.1"  # HTTP/1.0 clients are closed after one exchange
        self.websocket = False
        self.expect_continue = False
        self.authorization: Span | None = None  # value span of an `Authorization: Basic` field
        self.accept_encoding: Sequence[Span] = ()
        self.drop: Sequence[Span] = ()  # hop-by-hop, Proxy-* and Connection-named lines: never forwarded
        self.connection_tokens: frozenset[bytes] = _NO_TOKENS

    @property
    def basic_auth(self) -> bool:
        return self.authorization is not None

    @property
    def clean(self) -> bool:
        """Nothing in the head that must not be forwarded."""
        return not self.drop

    @property
    def fields(self) -> list[tuple[bytes, bytes]]:
        """All fields as (name, value); not used on the hot path."""
        return split_fields(self.raw, self.line_end + 2)


class ResponseHead:
    """A validated upstream response head."""

    __slots__ = (
        "connection_tokens",
        "content_encoded",
        "content_length",
        "drop",
        "framing",
        "keep_alive",
        "length_spans",
        "line_end",
        "minor",
        "raw",
        "reason",
        "status",
    )

    def __init__(self, status: int, reason: bytes, minor: int, raw: bytes, line_end: int) -> None:
        self.status = status
        self.reason = reason
        self.minor = minor
        self.raw = raw
        self.line_end = line_end
        self.framing = UNTIL_CLOSE
        self.content_length = 0
        self.length_spans: list[Span] = []
        self.keep_alive = minor == 1
        self.content_encoded = False
        self.drop: list[tuple[int, int, bytes]] = []  # (start, end, lower-case name)
        self.connection_tokens: frozenset[bytes] = _NO_TOKENS

    @property
    def clean(self) -> bool:
        return not self.drop

    @property
    def fields(self) -> list[tuple[bytes, bytes]]:
        return split_fields(self.raw, self.line_end + 2)


def split_fields(raw: bytes, start: int) -> list[tuple[bytes, bytes]]:
    """(name, value) pairs of an already validated head, from `start` (first field line)."""
    block = raw[start:-4]
    if not block:
        return []
    out = []
    for line in block.split(b"\r\n"):
        name, _, value = line.partition(b":")
        out.append((name, value.strip(b" \t")))
    return out


def _validate_block(raw: bytes, start: int) -> None:
    if not _FIELDS_RE.fullmatch(raw, start, len(raw) - 2):
        raise bad_request("malformed header field (invalid name, control character, bare CR/LF or line folding)")


_TOKEN_CACHE: dict[bytes, frozenset[bytes]] = {}


def _tokens(value: bytes) -> frozenset[bytes]:
    """Connection options, lower-cased; the few distinct values seen in practice are cached."""
    tokens = _TOKEN_CACHE.get(value)
    if tokens is None:
        tokens = frozenset(t.strip().lower() for t in value.split(b",") if t.strip())
        if len(_TOKEN_CACHE) < 256:
            _TOKEN_CACHE[value] = tokens
    return tokens


def _content_length(value: bytes, current: int | None) -> int:
    if not value.isdigit() or len(value) > 18:
        raise bad_request("invalid Content-Length")
    n = int(value)
    if current is not None and current != n:
        raise bad_request("conflicting Content-Length fields")
    return n


def _named_spans(raw: bytes, start: int, names: frozenset[bytes]) -> list[Span]:
    """Spans of the lines whose field name is in `names` (rare path: Connection-named fields)."""
    spans = []
    pos = start
    end = len(raw) - 2
    while pos < end:
        le = raw.find(b"\r\n", pos)
        if raw[pos : raw.find(b":", pos, le)].lower() in names:
            spans.append((pos, le + 2))
        pos = le + 2
    return spans


def _request_line(raw: bytes) -> RequestHead:
    """The head with its request line and field block validated; fields not yet interpreted."""
    if not raw.endswith(b"\r\n\r\n"):
        raise bad_request("header lines must end in CRLF")
    eol = raw.find(b"\r\n")
    parts = raw[:eol].split(b" ")
    if len(parts) != 3:
        raise bad_request("malformed request line")
    method, target, version = parts
    if not _METHOD_RE.fullmatch(method) or not _TARGET_RE.fullmatch(target):
        raise bad_request("malformed request line")
    if version != b"HTTP/1.1" and version != b"HTTP/1.0":
        raise ProxyError("http_version_not_supported", "only HTTP/1.0 and HTTP/1.1 are supported")
    _validate_block(raw, eol + 2)
    return RequestHead(method, target, version, raw, eol)


def parse_request_head(raw: bytes) -> RequestHead:
    """Parse a complete request head (ending in CRLFCRLF) or raise ProxyError (400/501/505)."""
    req = _request_line(raw)
    eol = req.line_end
    length: int | None = None
    chunked = False
    upgrade: bytes | None = None
    tokens: frozenset[bytes] = _NO_TOKENS
    drop: list[Span] = []
    for m in _REQUEST_SPECIAL_RE.finditer(raw, eol):
        name = m.group(1).lower()
        vs = m.end()
        ve = raw.find(b"\r\n", vs)
        span = (m.start() + 2, ve + 2)
        value = raw[vs:ve].strip(b" \t")
        if name == b"host":
            if req.host is not None:
                raise bad_request("more than one Host field")
            req.host = value
            req.host_spans = (span,)
        elif name == b"content-length":
            if length is not None:  # even an equal one: strict llhttp refuses duplicates
                raise bad_request("more than one Content-Length field")
            length = _content_length(value, length)
            req.length_spans = (span,)
        elif name == b"authorization":
            if value[:6].lower() == b"basic ":
                req.authorization = (vs, ve)
        elif name == b"accept-encoding":
            req.accept_encoding = (*req.accept_encoding, span)
        elif name == b"expect":
            req.expect_continue = value.lower() == b"100-continue"
        else:  # hop-by-hop or Proxy-*
            drop.append(span)
            if name == b"transfer-encoding":
                if chunked or value.lower() != b"chunked":
                    raise ProxyError("not_implemented", "only Transfer-Encoding: chunked is supported")
                chunked = True
            elif name == b"connection":
                tokens = tokens | _tokens(value)
            elif name == b"upgrade":
                upgrade = value.lower()
    if chunked:
        if length is not None:
            raise bad_request("both Content-Length and Transfer-Encoding")
        req.framing = CHUNKED
    elif length:
        req.framing = LENGTH
        req.content_length = length
    if tokens:
        _connection_options(req, tokens, upgrade, drop)
    if drop:
        req.drop = drop
    return req


def _connection_options(req: RequestHead, tokens: frozenset[bytes], upgrade: bytes | None, drop: list[Span]) -> None:
    req.connection_tokens = tokens
    if b"close" in tokens:
        req.keep_alive = False
    if b"upgrade" in tokens and upgrade is not None:
        # llhttp (Node) stops reading HTTP after an upgrade request's head: a body would be
        # read by it as the next request, one the proxy never checked (issue 12, item 4).
        if req.framing != NO_BODY:
            raise bad_request("an Upgrade request cannot have a body")
        req.websocket = upgrade == b"websocket"
    named = tokens - _CONNECTION_OPTIONS
    if named:
        drop.extend(_named_spans(req.raw, req.line_end + 2, named))


def parse_response_head(raw: bytes, request_method: bytes) -> ResponseHead:
    """Parse an upstream response head; raises ProxyError (502) on anything malformed."""
    eol = raw.find(b"\r\n")
    m = _STATUS_RE.fullmatch(raw, 0, eol) if eol > 0 else None
    if m is None or not raw.endswith(b"\r\n\r\n"):
        raise ProxyError("upstream_protocol_error", "upstream sent a malformed status line")
    if not _FIELDS_RE.fullmatch(raw, eol + 2, len(raw) - 2):
        raise ProxyError("upstream_protocol_error", "upstream sent a malformed header block")
    status = int(m.group(2))
    resp = ResponseHead(status, m.group(3) or b"", int(m.group(1)), raw, eol)
    length: int | None = None
    chunked = False
    tokens: frozenset[bytes] = frozenset()
    for f in _RESPONSE_SPECIAL_RE.finditer(raw, eol):
        name = f.group(1).lower()
        vs = f.end()
        ve = raw.find(b"\r\n", vs)
        value = raw[vs:ve].strip(b" \t")
        if name == b"content-length":
            try:
                length = _content_length(value, length)
            except ProxyError:
                raise ProxyError("upstream_protocol_error", "upstream sent an invalid Content-Length") from None
            resp.length_spans.append((f.start() + 2, ve + 2))
        elif name == b"content-encoding":
            if value.lower() not in (b"identity", b""):
                resp.content_encoded = True
        else:
            resp.drop.append((f.start() + 2, ve + 2, name))
            if name == b"transfer-encoding":
                if [c.strip() for c in value.lower().split(b",")] != [b"chunked"] or chunked:
                    raise ProxyError("upstream_protocol_error", "upstream used a transfer coding other than chunked")
                chunked = True
            elif name == b"connection":
                tokens = tokens | _tokens(value)
    if tokens:
        resp.connection_tokens = tokens
        if b"close" in tokens:
            resp.keep_alive = False
        elif b"keep-alive" in tokens and resp.minor == 0:
            resp.keep_alive = True
        named = tokens - _CONNECTION_OPTIONS
        if named:
            resp.drop.extend((s, e, b"") for s, e in _named_spans(raw, eol + 2, named))
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


def edit_head(raw: bytes, edits: list[Edit], extra: bytes = b"") -> bytes:
    """`raw` with each (start, end) span replaced and `extra` lines appended before the blank line.

    Spans come from the parser, so they are whole lines or values; overlapping ones (the
    same line dropped for two reasons) are applied once.
    """
    if not edits and not extra:
        return raw
    out = []
    pos = 0
    for start, end, replacement in sorted(edits):
        if start < pos:
            continue
        out.append(raw[pos:start])
        out.append(replacement)
        pos = end
    end = len(raw) - 2
    out.append(raw[pos:end] if pos <= end else b"")
    out.append(extra)
    out.append(b"\r\n")
    return b"".join(out)


def filter_fields(
    fields: list[tuple[bytes, bytes]], connection_tokens: frozenset[bytes], keep: frozenset[bytes] = frozenset()
) -> list[tuple[bytes, bytes]]:
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
