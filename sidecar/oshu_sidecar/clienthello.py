"""What a redirected client's first bytes say: a TLS ClientHello (and its SNI), an HTTP/1 request, or neither.

The transparent listener (transparent.py) peeks at a connection before consuming anything and
decides by name, exactly as it would for CONNECT: the TLS server_name, else the HTTP Host
header (read later by the request loop), else only the original address. This module is the
pure part of that: no sockets, bounded input, strict parsing. `parse_client_hello` never
raises anything but `ClientHelloError`; an incomplete prefix is not an error, it answers how
many bytes it needs (`Incomplete`), so the caller can wait for more within its own bounds.

Strict on purpose: an ambiguous hello (two server names, a duplicate extension, a malformed
length) is refused rather than read one way here and another way by the TLS library or the
upstream. After an intercepted handshake the proxy still checks that OpenSSL saw the same name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Largest ClientHello handshake message accepted (real ones, post-quantum key shares included, are < 4 KiB).
MAX_HELLO = 32768
#: Largest TLS record payload (RFC 8446 5.1).
MAX_RECORD = 16384
#: Bytes a peek may need at most: the largest hello, fragmented into full-size records.
MAX_PEEK = MAX_HELLO + 5 * (MAX_HELLO // MAX_RECORD + 2)

_HANDSHAKE = 22
_CLIENT_HELLO = 1
_EXT_SERVER_NAME = 0
_EXT_ALPN = 16
_EXT_ECH = 0xFE0D
_HOST_NAME = 0
_NAME_RE = re.compile(rb"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
# An HTTP/1 request line (RFC 9112 3): method token, one space, target, one space, version, CRLF.
_TOKEN_RE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,32}")
_TARGET_RE = re.compile(rb"[\x21-\x7e]*")
_VERSIONS = (b"HTTP/1.1", b"HTTP/1.0")

TLS = "tls"
HTTP = "http"
OTHER = "other"


class ClientHelloError(ValueError):
    """Not a well-formed TLS ClientHello within the bounds; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class ClientHello:
    """The parts of a ClientHello the proxy acts on; `size` is how many input bytes it spans."""

    server_name: str | None  # lower-cased host_name of the server_name extension, None if absent
    alpn: tuple[str, ...]
    ech: bool  # an encrypted_client_hello extension is present (server_name is then the outer, public name)
    size: int


@dataclass(frozen=True, slots=True)
class Incomplete:
    """The input is a valid prefix; at least `needed` bytes (in total) are required to go on."""

    needed: int


class _Reader:
    """A bounds-checked cursor over one handshake message body."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n > self.remaining():
            raise ClientHelloError(f"{what} runs past the end of the ClientHello")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "big")

    def vector(self, length_bytes: int, what: str) -> bytes:
        n = int.from_bytes(self.take(length_bytes, what), "big")
        return self.take(n, what)


def sniff(data: bytes) -> str | None:
    """TLS, HTTP or OTHER from the first bytes a client sent; None while they are a prefix of either.

    HTTP only once a whole request line is in (bounded by the caller's peek size): a protocol
    whose first word merely looks like a method is not handed to the HTTP parser.
    """
    if not data:
        return None
    if data[0] == _HANDSHAKE:
        if len(data) < 2:
            return None
        return TLS if data[1] == 3 else OTHER
    return _sniff_http(data)


def _sniff_http(data: bytes) -> str | None:
    end = data.find(b"\r\n")
    complete = end >= 0
    line = data[:end] if complete else data.removesuffix(b"\r")
    method, sp, rest = line.partition(b" ")
    if _TOKEN_RE.fullmatch(method) is None:
        return OTHER
    if not sp:
        return OTHER if complete else None
    target, sp2, version = rest.partition(b" ")
    if _TARGET_RE.fullmatch(target) is None:
        return OTHER
    if not sp2:
        return OTHER if complete else None
    if not target:
        return OTHER
    if complete:
        return HTTP if version in _VERSIONS else OTHER
    return None if any(v.startswith(version) for v in _VERSIONS) else OTHER


def parse_client_hello(data: bytes) -> ClientHello | Incomplete:
    """The ClientHello that `data` starts with, or how many bytes are needed; ClientHelloError if malformed."""
    body, size = _handshake_message(data)
    if body is None:
        return Incomplete(size)
    return _parse_body(body, size)


def _handshake_message(data: bytes) -> tuple[bytes | None, int]:
    """(ClientHello body, input bytes it spans), or (None, bytes needed): reassembled from handshake records."""
    pos = 0
    hs = b""
    while True:
        if len(data) < pos + 5:
            return None, pos + 5
        ctype, major, minor = data[pos], data[pos + 1], data[pos + 2]
        length = int.from_bytes(data[pos + 3 : pos + 5], "big")
        if ctype != _HANDSHAKE:
            raise ClientHelloError(
                "not a TLS handshake record" if pos == 0 else "ClientHello interrupted by another record"
            )
        if major != 3 or not 1 <= minor <= 3:
            raise ClientHelloError(f"unsupported record version {major}.{minor}")
        if not 0 < length <= MAX_RECORD:
            raise ClientHelloError(f"record length {length} out of range")
        if len(data) < pos + 5 + length:
            return None, pos + 5 + length
        hs += data[pos + 5 : pos + 5 + length]
        pos += 5 + length
        if len(hs) >= 4:
            if hs[0] != _CLIENT_HELLO:
                raise ClientHelloError(f"first handshake message is type {hs[0]}, not ClientHello")
            need = int.from_bytes(hs[1:4], "big")
            if need > MAX_HELLO:
                raise ClientHelloError(f"ClientHello of {need} bytes exceeds {MAX_HELLO}")
            if len(hs) > 4 + need:
                raise ClientHelloError("data after the ClientHello in its record")
            if len(hs) == 4 + need:
                return hs[4:], pos
        if pos > MAX_PEEK:
            raise ClientHelloError(f"ClientHello records exceed {MAX_PEEK} bytes")


def _parse_body(body: bytes, size: int) -> ClientHello:
    r = _Reader(body)
    if r.u8("legacy_version") != 3:
        raise ClientHelloError("ClientHello legacy_version is not 3.x")
    r.u8("legacy_version")
    r.take(32, "random")
    if len(r.vector(1, "legacy_session_id")) > 32:
        raise ClientHelloError("legacy_session_id longer than 32 bytes")
    suites = r.vector(2, "cipher_suites")
    if not suites or len(suites) % 2:
        raise ClientHelloError("cipher_suites empty or of odd length")
    if not r.vector(1, "legacy_compression_methods"):
        raise ClientHelloError("no compression method")
    if r.remaining() == 0:
        return ClientHello(None, (), False, size)
    extensions = r.vector(2, "extensions")
    if r.remaining():
        raise ClientHelloError("data after the extensions")
    return _parse_extensions(extensions, size)


def _parse_extensions(data: bytes, size: int) -> ClientHello:
    r = _Reader(data)
    seen: set[int] = set()
    name: str | None = None
    alpn: tuple[str, ...] = ()
    while r.remaining():
        ext = r.u16("extension type")
        value = r.vector(2, "extension")
        if ext in seen:
            raise ClientHelloError(f"extension {ext} appears twice")
        seen.add(ext)
        if ext == _EXT_SERVER_NAME:
            name = _server_name(value)
        elif ext == _EXT_ALPN:
            alpn = _alpn(value)
    return ClientHello(name, alpn, _EXT_ECH in seen, size)


def _server_name(value: bytes) -> str:
    """The one host_name of a server_name extension (RFC 6066 3), validated and lower-cased."""
    r = _Reader(value)
    names = r.vector(2, "server_name_list")
    if r.remaining():
        raise ClientHelloError("data after the server_name_list")
    lr = _Reader(names)
    found: bytes | None = None
    while lr.remaining():
        kind = lr.u8("name_type")
        host = lr.vector(2, "host_name")
        if kind != _HOST_NAME:
            raise ClientHelloError(f"server name of unknown type {kind}")
        if found is not None:
            raise ClientHelloError("more than one host_name in server_name")
        found = host
    if found is None:
        raise ClientHelloError("empty server_name extension")
    if not 0 < len(found) <= 253 or not _NAME_RE.fullmatch(found):
        raise ClientHelloError("server name is not a valid host name")
    return found.decode("ascii").lower()


def _alpn(value: bytes) -> tuple[str, ...]:
    r = _Reader(value)
    protocols = _Reader(r.vector(2, "protocol_name_list"))
    if r.remaining():
        raise ClientHelloError("data after the protocol_name_list")
    out: list[str] = []
    while protocols.remaining():
        proto = protocols.vector(1, "protocol_name")
        if not proto:
            raise ClientHelloError("empty ALPN protocol name")
        out.append(proto.decode("latin-1"))
    if not out:
        raise ClientHelloError("empty ALPN list")
    return tuple(out)
