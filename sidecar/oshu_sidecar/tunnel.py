"""Blind CONNECT tunnels: bytes both ways, no interception, the client verifies the real server.

Used for every CONNECT target no secret names (when the egress allowlist permits it).
The pump is callback-driven (`channel.link`): no coroutine wakes per chunk, and
back-pressure on either side pauses reading on the other.
"""

from __future__ import annotations

from .channel import Channel, link
from .upstream import UpstreamPool

CONNECT_OK = b"HTTP/1.1 200 Connection established\r\n\r\n"


async def run_tunnel(client: Channel, pool: UpstreamPool, host: str, port: int) -> None:
    """Open TCP to host:port (ProxyError propagates: nothing was sent), answer 200, pump."""
    upstream = await pool.open_tunnel(host, port)
    if client.closed:
        upstream.abort()
        return
    client.write(CONNECT_OK)
    client.keep_open_on_eof = True
    try:
        await link(client, upstream)
    finally:
        client.abort()
        upstream.abort()
