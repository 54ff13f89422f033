"""aws-chunked bodies signed chunk by chunk (x-amz-content-sha256: STREAMING-AWS4-HMAC-SHA256-PAYLOAD,
and -TRAILER, whose trailer section carries its own signature after the last chunk).

Each chunk carries a signature chained from the previous one, the first from the head's
signature (the seed); a signed trailer section is chained from the last chunk. The proxy holds
each chunk (and the trailer section) until it is complete, checks its signature in the sealed
chain, and sends it on with the signature of the real chain in its place: every signature keeps
its length, so Content-Length stays exact. A chunk or trailer that does not verify, a malformed
frame or a body that ends early stops the upload; the upstream never receives a complete request.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from .errors import ProxyError
from .sigv4 import EMPTY_SHA256, Credentials, Signature, invalid, same, sign, signing_key

CHUNK_ALGORITHM = "AWS4-HMAC-SHA256-PAYLOAD"
TRAILER_ALGORITHM = "AWS4-HMAC-SHA256-TRAILER"
#: Largest chunk held for verification (SDKs send 8 KiB to 1 MiB chunks).
MAX_CHUNK = 8 << 20
#: Largest trailer section (checksum fields and the trailer signature).
MAX_TRAILERS = 8192
_MAX_LINE = 256
_SIG_MARK = b";chunk-signature="
_TRAILER_SIG = b"x-amz-trailer-signature:"


def chunk_string_to_sign(sig: Signature, previous: str, data: bytes) -> str:
    return "\n".join(
        (CHUNK_ALGORITHM, sig.amz_date, sig.scope, previous, EMPTY_SHA256, hashlib.sha256(data).hexdigest())
    )


def trailer_string_to_sign(sig: Signature, previous: str, canonical: bytes) -> str:
    """`canonical`: each trailer field as `name:value\\n` (lower-case name, trimmed value), in order."""
    return "\n".join((TRAILER_ALGORITHM, sig.amz_date, sig.scope, previous, hashlib.sha256(canonical).hexdigest()))


class ChunkResigner:
    """The stream transform (credentials.StreamTransform) of one aws-chunked upload.

    The sealed chain starts at the signature the agent's head carries; `real_prev` must be set
    to the re-signed head's signature before the first piece of the body is fed. `trailer`: the
    -TRAILER variant (a signed trailer section follows the last chunk)."""

    __slots__ = ("buf", "done", "in_trailers", "real_key", "real_prev", "sealed_key", "sealed_prev", "sig", "trailer")

    def __init__(self, sig: Signature, sealed: Credentials, real: Credentials, trailer: bool = False) -> None:
        self.sig = sig
        self.sealed_key = signing_key(sealed.secret, sig.date, sig.region, sig.service)
        self.real_key = signing_key(real.secret, sig.date, sig.region, sig.service)
        self.sealed_prev = sig.signature
        self.real_prev = ""
        self.buf = bytearray()
        self.done = False
        self.trailer = trailer
        self.in_trailers = False

    def feed(self, data: bytes) -> bytes:
        """Every complete chunk in the stream so far, re-signed; the incomplete rest is held."""
        if self.done:
            if data:
                raise invalid("data after the final aws-chunked chunk")
            return b""
        self.buf += data
        out = bytearray()
        while not self.done:
            piece = self._trailers() if self.in_trailers else self._next_chunk()
            if piece is None:
                break
            out += piece
        return bytes(out)

    def flush(self) -> bytes:
        if not self.done or self.buf:
            raise invalid("the aws-chunked body ended before its final chunk")
        return b""

    def _resign(self, string_to_sign: Callable[[str], str], sealed_sent: bytes, what: str) -> str:
        """Check `sealed_sent` in the sealed chain, advance both chains; the real signature."""
        expected = sign(self.sealed_key, string_to_sign(self.sealed_prev))
        if not same(expected, sealed_sent.decode("latin-1")):
            raise invalid(f"aws-chunked {what} signature does not match")
        if not self.real_prev:
            raise ProxyError("internal_error", "aws-chunked body before the head was signed again")
        real = sign(self.real_key, string_to_sign(self.real_prev))
        self.sealed_prev, self.real_prev = expected, real
        return real

    def _next_chunk(self) -> bytes | None:
        buf = self.buf
        eol = buf.find(b"\r\n", 0, _MAX_LINE)
        if eol < 0:
            if len(buf) >= _MAX_LINE:
                raise invalid("aws-chunked chunk header too long")
            return None
        size_text, mark, sent = bytes(buf[:eol]).partition(_SIG_MARK)
        if not mark or not size_text or len(size_text) > 8 or size_text.strip(b"0123456789abcdefABCDEF"):
            raise invalid("malformed aws-chunked chunk header")
        size = int(size_text, 16)
        if size > MAX_CHUNK:
            raise invalid(f"aws-chunked chunk over {MAX_CHUNK >> 20} MiB")
        last_in_trailer_form = size == 0 and self.trailer
        end = eol + 2 if last_in_trailer_form else eol + 2 + size + 2
        if len(buf) < end:
            return None
        if not last_in_trailer_form and buf[end - 2 : end] != b"\r\n":
            raise invalid("aws-chunked chunk data not followed by CRLF")
        data = bytes(buf[eol + 2 : eol + 2 + size])
        real = self._resign(lambda prev: chunk_string_to_sign(self.sig, prev, data), sent, "chunk")
        del buf[:end]
        if size == 0:
            self.in_trailers = self.trailer
            self.done = not self.trailer
            if self.done and buf:
                raise invalid("data after the final aws-chunked chunk")
        tail = b"\r\n" if last_in_trailer_form else b"\r\n" + data + b"\r\n"
        return size_text + _SIG_MARK + real.encode() + tail

    def _trailers(self) -> bytes | None:
        """The trailer section (fields, then x-amz-trailer-signature, then an empty line), re-signed."""
        buf = self.buf
        end = buf.find(b"\r\n\r\n", 0, MAX_TRAILERS)
        if end < 0:
            if len(buf) >= MAX_TRAILERS:
                raise invalid("aws-chunked trailer section too long")
            return None
        *fields, last = bytes(buf[:end]).split(b"\r\n")
        if not last.startswith(_TRAILER_SIG):
            raise invalid("aws-chunked trailer section must end with x-amz-trailer-signature")
        canonical = b""
        for line in fields:
            name, sep, value = line.partition(b":")
            if not sep or not name or name.strip() != name:
                raise invalid("malformed aws-chunked trailer field")
            canonical += name.lower() + b":" + value.strip(b" \t") + b"\n"
        sent = last[len(_TRAILER_SIG) :].strip(b" \t")
        real = self._resign(lambda prev: trailer_string_to_sign(self.sig, prev, canonical), sent, "trailer")
        del buf[: end + 4]
        self.done = True
        if buf:
            raise invalid("data after the aws-chunked trailer section")
        return b"".join(f + b"\r\n" for f in fields) + _TRAILER_SIG + real.encode() + b"\r\n\r\n"
