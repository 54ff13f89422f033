"""The listener hook the gateway adds to the proxy core (server.py `FrontHook`, `Proxy.start(tls)`).

In-process proxy, real local upstream: a hook that answers origin-form requests itself and
tags proxy requests with a principal; the resolver picks the policy from that principal.
"""

from __future__ import annotations

import asyncio
import ssl
import tempfile
from pathlib import Path

from oshu_sidecar.certs import LeafCache
from oshu_sidecar.config import load_config
from oshu_sidecar.http1 import RequestHead
from oshu_sidecar.metrics import Metrics
from oshu_sidecar.policy import Policy
from oshu_sidecar.server import ClientConn, Proxy
from oshu_sidecar.upstream import Router, UpstreamPool
from oshu_testkit.ca import TestCA
from oshu_testkit.sessions import new_secret, new_session
from oshu_testkit.upstreams import HOST, Upstream

TIMEOUT = 10.0


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, bytes]:
    writer.write(request)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    length = next(int(ln.split(b":")[1]) for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:"))
    return int(head.split(b" ")[1]), await asyncio.wait_for(reader.readexactly(length), TIMEOUT)


async def scenario(upstream: Upstream, tls: bool) -> list[tuple[int, bytes]]:
    cfg = load_config(
        [
            "--session-file",
            "unused",
            "--ca-cert",
            "unused",
            "--ca-key",
            "unused",
            "--listen",
            "127.0.0.1:0",
            "--connect-to",
            f"{HOST}:80:127.0.0.1:{upstream.http_port}",
        ],
        environ={},
    )
    open_policy = Policy(new_session(new_secret("API_KEY", [HOST]), name="open"))
    fenced = Policy(new_session(new_secret("API_KEY", [HOST]), name="fenced", egress=["nothing.oshu.test"]))
    seen: list[bytes] = []

    async def front(conn: ClientConn, req: RequestHead, t0: float) -> bool | None:
        seen.append(req.target)
        if req.target.startswith(b"/"):
            conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\napi")
            return True  # answered; keep the connection
        if b"x-who: nobody" in req.raw:
            conn.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return False
        conn.principal = "fenced" if b"x-who: fenced" in req.raw else "open"
        return None  # the proxy handles it

    def resolve(conn: object) -> Policy:
        return fenced if getattr(conn, "principal", None) == "fenced" else open_policy

    loop = asyncio.get_running_loop()
    pool = UpstreamPool(loop, ssl.create_default_context(), Router(cfg.connect_to, cfg.resolve))
    ca = TestCA.new("front hook test CA")
    proxy = Proxy(cfg, resolve, Metrics(), LeafCache(ca.pair.cert_pem, ca.pair.key_pem), pool, front=front)
    server_ctx = client_ctx = None
    if tls:
        leaf = ca.issue(["127.0.0.1"])
        d = Path(tempfile.mkdtemp())
        (d / "c.pem").write_bytes(leaf.cert_pem)
        (d / "k.pem").write_bytes(leaf.key_pem)
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(d / "c.pem", d / "k.pem")
        client_ctx = ssl.create_default_context(cadata=ca.pair.cert_pem.decode())
    await proxy.start(server_ctx)
    assert proxy.address is not None
    try:
        conn = await asyncio.open_connection(
            *proxy.address, ssl=client_ctx, server_hostname="127.0.0.1" if tls else None
        )
        out = [await _exchange(*conn, b"GET /v1/anything HTTP/1.1\r\nHost: gw\r\n\r\n")]
        out.append(await _exchange(*conn, f"GET http://{HOST}/echo/a HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()))
        out.append(
            await _exchange(
                *conn, f"GET http://{HOST}/echo/b HTTP/1.1\r\nHost: {HOST}\r\nx-who: fenced\r\n\r\n".encode()
            )
        )
        out.append(await _exchange(*conn, b"GET /v1/again HTTP/1.1\r\nHost: gw\r\n\r\n"))  # same connection
        out.append(
            await _exchange(
                *conn, f"GET http://{HOST}/echo/c HTTP/1.1\r\nHost: {HOST}\r\nx-who: nobody\r\n\r\n".encode()
            )
        )
        assert await asyncio.wait_for(conn[0].read(), TIMEOUT) == b""  # closed after the refusal
        conn[1].close()
        assert len(seen) == 5
        return out
    finally:
        await proxy.stop(1.0)


def test_front_hook_plain_and_tls_listener(upstream: Upstream) -> None:
    for tls in (False, True):
        upstream.clear()
        results = asyncio.run(scenario(upstream, tls))
        assert [s for s, _ in results] == [200, 200, 403, 200, 407], tls
        assert results[0][1] == b"api" and b"egress_denied" in results[2][1]
        assert [r.path for r in upstream.requests] == ["/echo/a"]  # only the "open" request was forwarded
