"""aws-chunked bodies signed chunk by chunk (x-amz-content-sha256: STREAMING-AWS4-HMAC-SHA256-PAYLOAD).

Each chunk carries a signature chained from the previous one, the first from the head's
signature (the seed). The proxy holds each chunk until it is complete, checks its signature in
the sealed chain, and sends it on with the signature of the real chain in its place: the
chunk-size line keeps its length, so Content-Length stays exact. A chunk that does not verify,
a malformed frame or a body that ends early stops the upload; the upstream never receives a
complete request.
"""

from __future__ import annotations

import hashlib

from .errors import ProxyError
from .sigv4 import EMPTY_SHA256, Credentials, Signature, invalid, same, sign, signing_key

CHUNK_ALGORITHM = "AWS4-HMAC-SHA256-PAYLOAD"
#: Largest chunk held for verification (SDKs send 8 KiB to 1 MiB chunks).
MAX_CHUNK = 8 << 20
_MAX_LINE = 256
_SIG_MARK = b";chunk-signature="


def chunk_string_to_sign(sig: Signature, previous: str, data: bytes) -> str:
    return "\n".join(
        (CHUNK_ALGORITHM, sig.amz_date, sig.scope, previous, EMPTY_SHA256, hashlib.sha256(data).hexdigest())
    )


class ChunkResigner:
    """The stream transform (credentials.StreamTransform) of one aws-chunked upload.

    `sealed_seed` is the signature the agent's head carries; `real_seed` is set once the head has
    been signed again (before the first piece of the body is fed)."""

    __slots__ = ("buf", "done", "real_key", "real_prev", "sealed_key", "sealed_prev", "sig")

    def __init__(self, sig: Signature, sealed: Credentials, real: Credentials) -> None:
        self.sig = sig
        self.sealed_key = signing_key(sealed.secret, sig.date, sig.region, sig.service)
        self.real_key = signing_key(real.secret, sig.date, sig.region, sig.service)
        self.sealed_prev = sig.signature
        self.real_prev = ""
        self.buf = bytearray()
        self.done = False

    def feed(self, data: bytes) -> bytes:
        """Every complete chunk in the stream so far, re-signed; the incomplete rest is held."""
        if self.done:
            if data:
                raise invalid("data after the final aws-chunked chunk")
            return b""
        self.buf += data
        out = bytearray()
        while not self.done:
            piece = self._next_chunk()
            if piece is None:
                break
            out += piece
        return bytes(out)

    def flush(self) -> bytes:
        if not self.done or self.buf:
            raise invalid("the aws-chunked body ended before its final chunk")
        return b""

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
        end = eol + 2 + size + 2
        if len(buf) < end:
            return None
        if buf[end - 2 : end] != b"\r\n":
            raise invalid("aws-chunked chunk data not followed by CRLF")
        data = bytes(buf[eol + 2 : end - 2])
        expected = sign(self.sealed_key, chunk_string_to_sign(self.sig, self.sealed_prev, data))
        if not same(expected, sent.decode("latin-1")):
            raise invalid("aws-chunked chunk signature does not match")
        if not self.real_prev:
            raise ProxyError("internal_error", "aws-chunked body before the head was signed again")
        real = sign(self.real_key, chunk_string_to_sign(self.sig, self.real_prev, data))
        self.sealed_prev, self.real_prev = expected, real
        del buf[:end]
        if size == 0:
            self.done = True
            if buf:
                raise invalid("data after the final aws-chunked chunk")
        return size_text + _SIG_MARK + real.encode() + b"\r\n" + data + b"\r\n"
