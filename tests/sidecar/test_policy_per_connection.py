"""The session policy is chosen per client connection (issue 8: the gateway's hook).

The proxy runs in-process here with a resolver that gives two connections two different
sessions, against the real local upstream over plain HTTP: each connection is decided by
its own policy, request after request, whatever the other one has.
"""

from __future__ import annotations

import asyncio
import ssl

from oshu_sidecar.certs import LeafCache
from oshu_sidecar.channel import Channel
from oshu_sidecar.config import load_config
from oshu_sidecar.metrics import Metrics
from oshu_sidecar.policy import Policy
from oshu_sidecar.server import Proxy
from oshu_sidecar.upstream import Router, UpstreamPool
from oshu_testkit.ca import TestCA
from oshu_testkit.sessions import new_secret, new_session
from oshu_testkit.upstreams import HOST, Upstream

TIMEOUT = 10.0


async def get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> tuple[int, bytes]:
    writer.write(f"GET http://{HOST}{path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    body = await asyncio.wait_for(reader.readexactly(length), TIMEOUT)
    return int(head.split(b" ")[1]), body


async def scenario(upstream: Upstream) -> list[tuple[int, bytes]]:
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
    key = new_secret("API_KEY", [HOST])
    open_session = Policy(new_session(key, name="agents/open"))
    fenced = Policy(new_session(key, name="agents/fenced", egress=["nothing.oshu.test"]))
    chosen: dict[Channel, Policy] = {}

    def resolve(conn: Channel) -> Policy:  # first connection: open; any later one: fenced
        return chosen.setdefault(conn, open_session if not chosen else fenced)

    loop = asyncio.get_running_loop()
    pool = UpstreamPool(loop, ssl.create_default_context(), Router(cfg.connect_to, cfg.resolve))
    ca = TestCA.new("per-connection test CA").pair
    proxy = Proxy(cfg, resolve, Metrics(), LeafCache(ca.cert_pem, ca.key_pem), pool)
    await proxy.start()
    assert proxy.address is not None
    try:
        first = await asyncio.open_connection(*proxy.address)
        out = [await get(*first, "/echo/one")]
        second = await asyncio.open_connection(*proxy.address)
        out.append(await get(*second, "/echo/two"))
        out.append(await get(*first, "/echo/three"))  # the first connection keeps its own policy
        for _, writer in (first, second):
            writer.close()
        return out
    finally:
        await proxy.stop(1.0)


def test_each_connection_is_decided_by_its_own_policy(upstream: Upstream) -> None:
    results = asyncio.run(scenario(upstream))
    assert [status for status, _ in results] == [200, 403, 200]
    assert b"egress_denied" in results[1][1]
    assert [r.path for r in upstream.requests] == ["/echo/one", "/echo/three"]
