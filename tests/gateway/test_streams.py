"""Sidecar behaviours per gateway session: SSE as it arrives, streamed uploads, WebSockets, one
session's garbage and load leaving another's requests alone."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
import threading

import aiohttp
import pytest
import requests

from oshu_testkit.gateway_process import GatewayProcess
from oshu_testkit.upstreams import Upstream

VALUE = "sk-streams-0f1e2d3c4b5a6978"


def _session(gw: GatewayProcess, locations: list[str] | None = None) -> dict:
    spec: dict = {"value": VALUE, "hosts": ["api.oshu.test"]}
    if locations:
        spec["locations"] = locations
    return gw.create_session({"secrets": {"K": spec}})


@pytest.mark.parametrize("tls", [True, False], ids=["https-proxy", "http-proxy"])
def test_sse_events_arrive_one_by_one(gateway: GatewayProcess, upstream: Upstream, tls: bool) -> None:
    s = _session(gateway)
    with requests.get(
        "https://api.oshu.test/sse?n=3&gated=1",
        headers={"x-api-key": s["sealed_secrets"]["K"]},
        proxies={"https": gateway.proxy_url(s, tls)},
        verify=str(gateway.ca_file),
        stream=True,
        timeout=20,
    ) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        got = []
        for i in range(3):
            while next(lines) != f"data: event {i}".encode():
                pass
            got.append(i)
            upstream.release()  # the next event is produced only after this one arrived
    assert got == [0, 1, 2]
    assert upstream.last.header("x-api-key") == VALUE


def test_streamed_upload_with_body_substitution(gateway: GatewayProcess, upstream: Upstream) -> None:
    s = _session(gateway, ["headers", "body"])
    sealed = s["sealed_secrets"]["K"]
    pieces = [b"a" * 50000 + sealed.encode() + b"b" * 50000 for _ in range(30)]  # ~3 MB, chunked
    r = requests.post(
        "https://api.oshu.test/upload",
        data=iter(pieces),
        proxies={"https": gateway.proxy_url(s)},
        verify=str(gateway.ca_file),
        timeout=60,
    )
    expect = b"".join(p.replace(sealed.encode(), VALUE.encode()) for p in pieces)
    assert r.status_code == 200
    assert r.json()["size"] == len(expect) and r.json()["sha256"] == hashlib.sha256(expect).hexdigest()


def test_websocket_through_the_https_proxy(gateway: GatewayProcess, upstream: Upstream) -> None:
    s = _session(gateway)

    async def go() -> list[str]:
        ctx = ssl.create_default_context(cafile=str(gateway.ca_file))
        async with (
            aiohttp.ClientSession(trust_env=False) as cs,
            cs.ws_connect(
                "wss://api.oshu.test/ws",
                proxy=gateway.proxy_url(s),
                ssl=ctx,
                headers={"x-api-key": s["sealed_secrets"]["K"]},
            ) as ws,
        ):
            first = await ws.receive_str(timeout=10)
            await ws.send_str("ping")
            return [first, await ws.receive_str(timeout=10)]

    assert asyncio.run(go()) == ["hello", "echo: ping"]
    assert upstream.last.header("x-api-key") == VALUE


def test_one_sessions_garbage_and_load_leave_another_alone(gateway: GatewayProcess, upstream: Upstream) -> None:
    noisy = _session(gateway)
    calm = _session(gateway)
    stop = threading.Event()
    ctx = ssl.create_default_context(cafile=str(gateway.ca_file))

    def noise() -> None:
        assert gateway.listen is not None
        for _ in range(200):
            if stop.is_set():
                return
            try:
                with (
                    socket.create_connection(gateway.listen, timeout=5) as raw,
                    ctx.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
                ):
                    sock.sendall(
                        b"CONNECT api.oshu.test:443 HTTP/1.1\r\nProxy-Authorization: Basic !!!\r\n\x00\x01\r\n\r\n"
                    )
                    sock.recv(1024)
            except OSError:
                pass
            r = requests.get(
                "https://api.oshu.test/status/500",
                proxies={"https": gateway.proxy_url(noisy)},
                verify=str(gateway.ca_file),
                timeout=10,
            )
            assert r.status_code == 500

    threads = [threading.Thread(target=noise) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        with requests.Session() as rs:
            for _ in range(30):
                r = rs.get(
                    "https://api.oshu.test/echo",
                    headers={"x-api-key": calm["sealed_secrets"]["K"]},
                    proxies={"https": gateway.proxy_url(calm)},
                    verify=str(gateway.ca_file),
                    timeout=10,
                )
                assert r.status_code == 200 and VALUE not in r.text
    finally:
        stop.set()
        for t in threads:
            t.join(60)
