"""The exchange's side of the credential hook (credentials.py): buffer the body a handler asked
for, run the handler, and apply its rewrite to the body and the response.

Kept apart from exchange.py so the common path (static secrets) reads as before; every step
here runs only for a request a handler claimed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .body import LAST_CHUNK, BodyReader, chunk
from .channel import ChannelClosed
from .credentials import BODY_LIMIT, RESPONSE_LIMIT, BodyNeed, Claim, ResponseTransform, context, handler_failed
from .errors import ProxyError
from .http1 import LENGTH, NO_BODY, UNTIL_CLOSE, ResponseHead
from .minted import ScrubberWith
from .response import relay, response_out

if TYPE_CHECKING:
    from .exchange import Exchange
    from .upstream import UpstreamConn

_CONN_CLOSE = b"Connection: close\r\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


async def prepare(ex: Exchange, c: Claim) -> ProxyError | None:
    """Buffer the body if the handler needs it whole, then let the handler rewrite (or refuse)."""
    req = ex.req
    body: bytes | None = None
    if c.body == BodyNeed.BUFFER:
        try:
            body = await read_request_body(ex)
        except ProxyError as e:
            return e
    try:
        rw = await c.handler.rewrite(c.binding, c.request, body, context(ex.proxy))
    except ProxyError as e:
        return e
    except Exception as e:  # a handler bug: refused, nothing forwarded
        return handler_failed(c.binding, "rewrite", e)
    ex.rewrite = rw
    if rw.scrub:
        ex.scrubber = ScrubberWith(ex.policy.scrubber, rw.scrub)
    ex.secrets.extend(n for n in rw.secrets if n not in ex.secrets)
    if body is not None:
        out = rw.body if rw.body is not None else body
        ex.body = out if req.framing == LENGTH else (chunk(out) if out else b"") + LAST_CHUNK
        ex.bytes_in = len(body)
    return None


async def read_request_body(ex: Exchange) -> bytes:
    """The whole request body, at most BODY_LIMIT bytes (ProxyError payload_too_large beyond)."""
    req = ex.req
    if req.framing == LENGTH and req.content_length > BODY_LIMIT:
        raise _too_large()
    if req.expect_continue:  # the client waits for a go-ahead before its body: the proxy gives it
        ex.conn.write(_CONTINUE)
    if req.framing == LENGTH:
        return await ex.conn.read_exactly(req.content_length)
    reader = BodyReader(ex.conn, req.framing, req.content_length)
    parts: list[bytes] = []
    total = 0
    while data := await reader.read():
        total += len(data)
        if total > BODY_LIMIT:
            raise _too_large()
        parts.append(data)
    return b"".join(parts)


def transform_whole(ex: Exchange) -> ProxyError | None:
    """A body that arrived whole goes through the handler's stream transform in one piece."""
    rw = ex.rewrite
    if rw is None or rw.stream is None or ex.stream_body or not ex.body:
        return None
    try:
        ex.body = rw.stream.feed(ex.body) + rw.stream.flush()
    except ProxyError as e:
        return e
    return None


async def relay_transformed(
    ex: Exchange, up: UpstreamConn, resp: ResponseHead, transform: ResponseTransform
) -> tuple[bool, bool]:
    """Read the response whole (bounded), let the handler transform it, send it with its length."""
    if resp.framing == NO_BODY:
        return await relay(ex, up, resp)
    reader = BodyReader(up, resp.framing, resp.content_length, strict=False)
    parts: list[bytes] = []
    total = 0
    while data := await reader.read():
        total += len(data)
        if total > RESPONSE_LIMIT:
            raise ProxyError("upstream_protocol_error", "token endpoint response too large to transform")
        parts.append(data)
    body = await transform(resp.status, b"".join(parts))
    scrubber, names = ex.scrubber, ex.scrubbed
    if scrubber.active:
        body = scrubber.scrub(body, names)
    ex.bytes_out = len(body)
    keep_client = ex.req.keep_alive
    extra = (b"" if keep_client else _CONN_CLOSE) + b"Content-Length: %d\r\n" % len(body)
    ex.conn.write(response_out(resp, scrubber, names, extra, drop_length=True) + body)
    if ex.conn.closed:
        raise ChannelClosed("client closed")
    return keep_client, resp.keep_alive and resp.framing != UNTIL_CLOSE


def _too_large() -> ProxyError:
    return ProxyError(
        "payload_too_large", f"the body is over {BODY_LIMIT >> 20} MiB, the most a credential handler buffers"
    )
