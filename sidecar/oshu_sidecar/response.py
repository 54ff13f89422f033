"""The response half of an exchange: head, body relay with scrubbing, protocol switch.

Responses stream to the client as they arrive with every real value of the session
scrubbed out. A Content-Length body up to 1 MiB is scrubbed in one piece with a corrected
length; larger or chunked bodies are re-framed as chunked (close-delimited to HTTP/1.0
clients), unless there is nothing to scrub and the length can pass through as it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .body import LAST_CHUNK, BodyReader, chunk, serialize_trailers
from .channel import ChannelClosed, link
from .errors import ProxyError
from .http1 import CHUNKED, LENGTH, NO_BODY, UNTIL_CLOSE, ResponseHead, edit_head, parse_response_head
from .scrub import Scrubber, StreamScrubber

if TYPE_CHECKING:
    from .exchange import Exchange
    from .upstream import UpstreamConn

#: A Content-Length response body up to this size is scrubbed in one piece (length corrected).
BODY_BUFFER_LIMIT = 1 << 20
#: Largest upstream response head accepted.
MAX_RESPONSE_HEAD = 256 * 1024
_TE_CHUNKED = b"Transfer-Encoding: chunked\r\n"
_CONN_CLOSE = b"Connection: close\r\n"
_KEEP_101 = frozenset({b"connection", b"upgrade"})


async def read_response_head(ex: Exchange, up: UpstreamConn) -> ResponseHead:
    """The final response head; interim 1xx responses (other than 101) go to the client as they come."""
    timeout = ex.proxy.cfg.upstream_timeout
    while True:
        raw = await up.read_head(MAX_RESPONSE_HEAD, timeout, timeout)
        up.deadline = 0.0
        if raw is None:
            raise ChannelClosed("upstream closed")
        resp = parse_response_head(raw, ex.req.method)
        if 100 <= resp.status < 200 and resp.status != 101:
            ex.conn.write(response_out(resp, _interim_scrubber(ex), []))
            continue
        return resp


async def relay(ex: Exchange, up: UpstreamConn, resp: ResponseHead) -> tuple[bool, bool]:
    """Stream the response to the client; returns (client keep-alive, upstream reusable).

    Raises ChannelClosed/ConnectionError when either side goes away, ProxyError on a malformed body.
    """
    conn, scrubber, names = ex.conn, ex.scrubber, ex.scrubbed
    keep_client = ex.req.keep_alive
    close_hdr = b"" if keep_client else _CONN_CLOSE
    # A Content-Encoding label does not switch scrubbing off: an upstream may label plain bytes as
    # compressed (object stores serve back what the uploader set) and deflate's stored blocks keep
    # bytes as they are. A value compressed for real is not recognized (docs: Limits).
    scrub = scrubber.active
    if resp.framing == NO_BODY:
        conn.write(response_out(resp, scrubber, names, close_hdr))
        return keep_client, resp.keep_alive
    if resp.framing == LENGTH:
        n = resp.content_length
        if len(up.buf) >= n or (scrub and n <= BODY_BUFFER_LIMIT):
            body = await up.read_exactly(n) if len(up.buf) < n else up.take(n)
            if scrub:
                body = scrubber.scrub(body, names)
            ex.bytes_out = len(body)
            if len(body) != n:
                length = b"Content-Length: %d\r\n" % len(body)
                conn.write(response_out(resp, scrubber, names, close_hdr + length, drop_length=True) + body)
            else:
                conn.write(response_out(resp, scrubber, names, close_hdr) + body)
            return keep_client, resp.keep_alive
        if not scrub:  # large and nothing to scrub: the length passes through
            conn.write(response_out(resp, scrubber, names, close_hdr))
            await _pump(ex, BodyReader(up, LENGTH, n, strict=False), None, False)
            return keep_client, resp.keep_alive
    return await _restream(ex, up, resp, close_hdr)


async def _restream(ex: Exchange, up: UpstreamConn, resp: ResponseHead, close_hdr: bytes) -> tuple[bool, bool]:
    """Streaming with re-framing: chunked to HTTP/1.1 clients, close-delimited to HTTP/1.0 ones."""
    conn, scrubber, names = ex.conn, ex.scrubber, ex.scrubbed
    keep_client, up_ok = ex.req.keep_alive, resp.keep_alive and resp.framing != UNTIL_CLOSE
    http10 = ex.req.version == b"HTTP/1.0"
    if http10:
        keep_client = False
        conn.write(response_out(resp, scrubber, names, _CONN_CLOSE, drop_length=True))
    else:
        conn.write(response_out(resp, scrubber, names, close_hdr + _TE_CHUNKED, drop_length=True))
    replacer = scrubber.stream() if scrubber.active else None
    reader = BodyReader(up, resp.framing, resp.content_length, strict=False)
    await _pump(ex, reader, replacer, not http10)
    tail = replacer.flush() if replacer is not None else b""
    if replacer is not None and replacer.names:
        names.extend(n for n in replacer.names if n not in names)
    if tail:
        ex.bytes_out += len(tail)
        conn.write(chunk(tail) if not http10 else tail)
    if not http10:
        if resp.framing == CHUNKED and reader.trailers:  # names and values scrubbed alike
            conn.write(scrubber.scrub(serialize_trailers(reader.trailers), names))
        else:
            conn.write(LAST_CHUNK)
    return keep_client, up_ok


async def _pump(ex: Exchange, reader: BodyReader, replacer: StreamScrubber | None, framed: bool) -> None:
    """The one response body loop: read a piece, scrub it, write it (chunked if `framed`), wait for the client."""
    conn = ex.conn
    feed = replacer.feed if replacer is not None else None
    while True:
        data = await reader.read()
        if not data:
            return
        if feed is not None:
            data = feed(data)
        if data:
            ex.bytes_out += len(data)
            conn.write(chunk(data) if framed else data)
            if conn.closed:
                raise ChannelClosed("client closed")
            await conn.drain()


async def switch_protocols(ex: Exchange, up: UpstreamConn, resp: ResponseHead) -> bool:
    """A 101 to a WebSocket handshake: relay the head, then pump bytes both ways; never to anything else."""
    if not ex.req.websocket or ex.upload is not None:
        up.abort()
        return ex.refuse(
            ProxyError("upstream_protocol_error", "upstream switched protocols without a WebSocket request"), True
        )
    ex.conn.write(response_out(resp, ex.scrubber, ex.scrubbed, keep=_KEEP_101))
    ex.finish()
    ex.conn.upstream = None
    await link(ex.conn, up)
    return False


def _interim_scrubber(ex: Exchange) -> Scrubber:
    """For 1xx responses: the session's current scrubber (a reload may have added values); for a
    credential exchange with extra values (minted tokens), its own scrubber."""
    if ex.scrubber is not ex.policy.scrubber:
        return ex.scrubber
    return ex.proxy.resolve_policy(ex.conn).scrubber


def response_out(
    resp: ResponseHead,
    scrubber: Scrubber,
    names: list[str],
    extra: bytes = b"",
    drop_length: bool = False,
    keep: frozenset[bytes] = frozenset(),
) -> bytes:
    """The head sent to the client: hop-by-hop lines dropped, HTTP/1.1, `extra` lines, values scrubbed."""
    edits = [(start, end, b"") for start, end, name in resp.drop if name not in keep]
    if drop_length:
        edits.extend((start, end, b"") for start, end in resp.length_spans)
    if resp.minor != 1:
        edits.append((0, resp.line_end, b"HTTP/1.1 %d %b" % (resp.status, resp.reason)))
    return scrubber.scrub(edit_head(resp.raw, edits, extra), names)
