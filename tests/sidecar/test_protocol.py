"""HTTP/1.1 handling: bad input, limits, timeouts, streaming both ways, WebSockets, scrubbing.

Streaming is proven without timing: gated upstream endpoints produce the next piece only
after the test has seen the previous one arrive through the proxy.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import ssl
from pathlib import Path

import pytest

from oshu_contract.session import SecretBinding
from oshu_testkit.clients import curl, pyclient, run
from oshu_testkit.rawclient import RawClient
from oshu_testkit.sessions import new_secret, new_session
from oshu_testkit.sidecar_process import SidecarProcess
from oshu_testkit.upstreams import HOST, Upstream

SOCKET_TIMEOUT = 15.0


def error_code(body: bytes | str) -> str:
    return json.loads(body)["error"]["code"]


def tls_client(sc: SidecarProcess, host: str = HOST) -> RawClient:
    c = RawClient(sc.listen, timeout=SOCKET_TIMEOUT)
    assert c.connect(f"{host}:443").status == 200
    c.start_tls(host, sc.ca_cert_file)
    return c


def still_serving(sc: SidecarProcess, upstream: Upstream, key: SecretBinding) -> None:
    status, _, _, err = curl(sc.client_env(), f"https://{HOST}/echo/after", "-H", f"x-api-key: {key.sealed}")
    assert status == 200, err
    assert upstream.last.header("x-api-key") == key.value


# -- malformed input ---------------------------------------------------------------------------
BAD_PROXY_REQUESTS = {
    "garbage": (b"HELLO\r\n\r\n", 400, "bad_request"),
    "bare LF": (b"GET http://api.oshu.test/ HTTP/1.1\nHost: api.oshu.test\n\n", 400, "bad_request"),
    "space in name": (b"GET http://api.oshu.test/ HTTP/1.1\r\nBad Header: x\r\n\r\n", 400, "bad_request"),
    "obs-fold": (b"GET http://api.oshu.test/ HTTP/1.1\r\nX-A: 1\r\n  folded\r\n\r\n", 400, "bad_request"),
    "control char": (b"GET http://api.oshu.test/ HTTP/1.1\r\nX-A: a\x00b\r\n\r\n", 400, "bad_request"),
    "CL and TE": (
        b"POST http://api.oshu.test/ HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
        "bad_request",
    ),
    "two CLs": (
        b"POST http://api.oshu.test/ HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        400,
        "bad_request",
    ),
    "bad CL": (b"POST http://api.oshu.test/ HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400, "bad_request"),
    "TE gzip": (b"POST http://api.oshu.test/ HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501, "not_implemented"),
    "HTTP/2.0": (b"GET http://api.oshu.test/ HTTP/2.0\r\n\r\n", 505, "http_version_not_supported"),
    "origin-form": (b"GET /echo HTTP/1.1\r\nHost: api.oshu.test\r\n\r\n", 400, "not_a_proxy_request"),
    "CONNECT without port": (b"CONNECT api.oshu.test HTTP/1.1\r\n\r\n", 400, "bad_request"),
    "CONNECT userinfo": (b"CONNECT user@api.oshu.test:443 HTTP/1.1\r\n\r\n", 400, "bad_request"),
    "bad host": (b"GET http://bad_host!/ HTTP/1.1\r\n\r\n", 400, "bad_request"),
    "two Hosts": (b"GET http://api.oshu.test/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "bad_request"),
}


@pytest.mark.parametrize("case", sorted(BAD_PROXY_REQUESTS))
def test_malformed_request_gets_error_and_close(
    case: str, sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    data, status, code = BAD_PROXY_REQUESTS[case]
    with RawClient(sidecar.listen, timeout=SOCKET_TIMEOUT) as c:
        c.send(data)
        resp = c.response()
        assert (resp.status, error_code(resp.body)) == (status, code)
        assert resp.header("connection") == "close"
        assert c.closed_by_peer()
    assert upstream.requests == []
    still_serving(sidecar, upstream, keys["API_KEY"])


def test_malformed_request_inside_intercepted_tunnel(
    sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    with tls_client(sidecar) as c:
        c.send(b"GET /echo HTTP/1.1\r\nHost: api.oshu.test\r\nX: a\rb\r\n\r\n")
        resp = c.response()
        assert resp.status == 400 and error_code(resp.body) == "bad_request"
        assert c.closed_by_peer()
    assert upstream.requests == []
    still_serving(sidecar, upstream, keys["API_KEY"])


def test_missing_host_inside_tunnel_gets_400(sidecar: SidecarProcess, upstream: Upstream) -> None:
    with tls_client(sidecar) as c:
        resp = c.request("GET", "/echo", {})
    assert resp.status == 400 and upstream.requests == []


def test_oversized_headers_get_431(sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]) -> None:
    big = b"X-Big: " + b"a" * 70000 + b"\r\n"
    with RawClient(sidecar.listen, timeout=SOCKET_TIMEOUT) as c:
        c.send(b"GET http://api.oshu.test/echo HTTP/1.1\r\nHost: api.oshu.test\r\n" + big + b"\r\n")
        resp = c.response()
    assert resp.status == 431 and error_code(resp.body) == "headers_too_large"
    with tls_client(sidecar) as c:  # also inside an intercepted connection
        c.send(b"GET /echo HTTP/1.1\r\nHost: api.oshu.test\r\n" + big + b"\r\n")
        assert c.response().status == 431
    assert upstream.requests == []
    still_serving(sidecar, upstream, keys["API_KEY"])


def test_slow_headers_are_cut_off(make_sidecar, upstream: Upstream) -> None:
    key = new_secret("API_KEY", [HOST])
    sc = make_sidecar(new_session(key), extra_args=["--header-timeout", "1", "--idle-timeout", "1"])
    with RawClient(sc.listen, timeout=SOCKET_TIMEOUT) as slow:
        slow.send(b"GET http://api.oshu.test/echo HTTP/1.1\r\nHost: api.o")  # ...and never finishes
        resp = slow.response()
        assert resp.status == 408 and error_code(resp.body) == "request_timeout"
        assert slow.closed_by_peer()
    with RawClient(sc.listen, timeout=SOCKET_TIMEOUT) as idle:  # an idle connection is simply closed
        assert idle.closed_by_peer()
    with tls_client(sc) as c:  # idle keep-alive inside an intercepted connection too
        assert c.request("GET", "/echo/one", {"Host": HOST}).status == 200
        assert c.closed_by_peer()
    assert [r.path for r in upstream.requests] == ["/echo/one"]
    assert sc.metric("oshu_refusals_total", reason="request_timeout") == 1
    still_serving(sc, upstream, key)


def test_upstream_too_slow_gets_504(make_sidecar, upstream: Upstream) -> None:
    key = new_secret("API_KEY", [HOST])
    sc = make_sidecar(new_session(key), extra_args=["--upstream-timeout", "1"])
    try:
        status, _, body, err = curl(sc.client_env(), f"https://{HOST}/gate", "-H", f"x-api-key: {key.sealed}")
    finally:
        upstream.release()
    assert status == 504, err
    assert error_code(body) == "upstream_timeout"
    still_serving(sc, upstream, key)


# -- request bodies ----------------------------------------------------------------------------
def test_chunked_upload_is_streamed(sidecar: SidecarProcess, upstream: Upstream) -> None:
    """The upstream sees the first chunk while the client is still holding back the rest."""
    first, rest = os.urandom(1000), os.urandom(200_000)
    with tls_client(sidecar) as c:
        c.send(f"POST /upload?gated=1 HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        c.send(b"%x\r\n%b\r\n" % (len(first), first))
        assert upstream.wait_for(lambda u: "upload:first-chunk" in u.events, SOCKET_TIMEOUT)
        for i in range(0, len(rest), 50_000):
            piece = rest[i : i + 50_000]
            c.send(b"%x\r\n%b\r\n" % (len(piece), piece))
        c.send(b"0\r\n\r\n")
        resp = c.response()
    assert resp.status == 200
    assert resp.json()["sha256"] == hashlib.sha256(first + rest).hexdigest()


def test_large_uploads_with_curl(sidecar: SidecarProcess, upstream: Upstream, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024)
    path = tmp_path / "blob"
    path.write_bytes(data)
    env = sidecar.client_env()
    for extra in ([], ["-H", "Transfer-Encoding: chunked"], ["-H", "Expect: 100-continue"]):
        status, _, body, err = curl(env, f"https://{HOST}/upload", "--data-binary", f"@{path}", *extra)
        assert status == 200, (extra, err)
        out = json.loads(body)
        assert (out["size"], out["sha256"]) == (len(data), hashlib.sha256(data).hexdigest()), extra


def test_large_body_substitution_is_streamed_as_chunked(
    sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding], tmp_path: Path
) -> None:
    b = keys["BODY_KEY"]
    filler = b"z" * (2 * 1024 * 1024)
    data = b.sealed.encode() + filler + b.sealed.encode()
    path = tmp_path / "blob"
    path.write_bytes(data)
    status, _, body, err = curl(sidecar.client_env(), f"https://{HOST}/upload", "--data-binary", f"@{path}")
    assert status == 200, err
    expected = data.replace(b.sealed.encode(), b.value.encode())
    assert json.loads(body)["sha256"] == hashlib.sha256(expected).hexdigest()
    assert upstream.last.header("transfer-encoding") == "chunked"


def test_expect_100_continue_is_relayed(sidecar: SidecarProcess, upstream: Upstream) -> None:
    with tls_client(sidecar) as c:
        c.send(f"POST /upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n".encode())
        interim = c.response()
        assert interim.status == 100
        c.send(b"hello")
        final = c.response()
    assert final.status == 200 and final.json()["size"] == 5


# -- responses ---------------------------------------------------------------------------------
def test_sse_events_arrive_one_by_one(sidecar: SidecarProcess, upstream: Upstream) -> None:
    """Event N+1 is only produced after the client received event N through the proxy."""
    with tls_client(sidecar) as c:
        c.send(f"GET /sse?n=3&gated=1 HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        seen = b""
        for i in range(3):
            if i:
                upstream.release()
            while f"data: event {i}\n\n".encode() not in seen:
                data = c.sock.recv(65536)
                assert data, "stream ended early"
                seen += data
        assert b"text/event-stream" in seen


def test_sse_with_curl(sidecar: SidecarProcess, upstream: Upstream) -> None:
    status, headers, body, err = curl(sidecar.client_env(), f"https://{HOST}/sse?n=5", "-N")
    assert status == 200, err
    assert headers["content-type"].startswith("text/event-stream")
    assert [ln for ln in body.splitlines() if ln.startswith("data:")] == [f"data: event {i}" for i in range(5)]


@pytest.mark.parametrize("split", [1, 3, 7, 64])
def test_scrubbing_across_chunk_boundaries(
    split: int, sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    key = keys["API_KEY"]
    with tls_client(sidecar) as c:
        resp = c.request("GET", f"/reflect?split={split}", {"Host": HOST, "x-api-key": key.sealed})
    assert upstream.last.header("x-api-key") == key.value
    assert resp.status == 200 and resp.header("x-echo") == key.sealed
    assert key.value.encode() not in resp.body and resp.body.count(key.sealed.encode()) == 2


def test_scrubbing_a_large_content_length_body(
    sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    key = keys["API_KEY"]
    pad = 3 * 1024 * 1024
    with tls_client(sidecar) as c:
        resp = c.request("GET", f"/reflect?pad={pad}", {"Host": HOST, "x-api-key": key.sealed})
        again = c.request("GET", "/echo/after-large", {"Host": HOST})  # framing stayed in sync
    assert resp.status == 200 and resp.header("transfer-encoding") == "chunked"
    assert key.value.encode() not in resp.body and resp.body.count(key.sealed.encode()) == 2
    assert len(resp.body) == pad + len(f'{{"you sent": "{key.sealed}", "again": "{key.sealed}"}}\n')
    assert again.status == 200


def test_large_download_is_intact(sidecar: SidecarProcess, upstream: Upstream) -> None:
    n = 5 * 1024 * 1024 + 17
    with tls_client(sidecar) as c:
        resp = c.request("GET", f"/bytes?n={n}&fill=q", {"Host": HOST})
    assert resp.status == 200 and len(resp.body) == n and set(resp.body) == {ord("q")}


def test_close_delimited_response_is_reframed(sidecar: SidecarProcess, upstream: Upstream) -> None:
    with tls_client(sidecar) as c:
        first = c.request("GET", "/close", {"Host": HOST})
        second = c.request("GET", "/echo/after-close", {"Host": HOST})  # the client connection survives
    assert first.status == 200 and first.body == b"until close\n"
    assert second.status == 200


def test_bodyless_responses(sidecar: SidecarProcess, upstream: Upstream) -> None:
    with tls_client(sidecar) as c:
        head = c.request("HEAD", "/bytes?n=100", {"Host": HOST})
        no_content = c.request("GET", "/status/204", {"Host": HOST})
        not_modified = c.request("GET", "/status/304", {"Host": HOST})
        after = c.request("GET", "/echo/after", {"Host": HOST})
    assert head.status == 200 and head.body == b"" and head.header("content-length") == "100"
    assert no_content.status == 204 and not_modified.status == 304
    assert after.status == 200


def test_pipelined_requests_are_answered_in_order(sidecar: SidecarProcess, upstream: Upstream) -> None:
    with tls_client(sidecar) as c:
        c.send(b"".join(f"GET /echo/p{i} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode() for i in range(3)))
        paths = [c.response().json()["path"] for _ in range(3)]
    assert paths == ["/echo/p0", "/echo/p1", "/echo/p2"]


def test_http10_client(sidecar: SidecarProcess, upstream: Upstream) -> None:
    status, _, body, err = curl(sidecar.client_env(), f"https://{HOST}/sse?n=2", "--http1.0")
    assert status == 200, err
    assert "data: event 1" in body


def test_upstream_connections_are_pooled(sidecar: SidecarProcess, upstream: Upstream) -> None:
    env = sidecar.client_env()
    before = sidecar.metric("oshu_connections_opened_total", side="upstream") or 0
    for i in range(5):
        assert curl(env, f"https://{HOST}/echo/pool{i}")[0] == 200
    after = sidecar.metric("oshu_connections_opened_total", side="upstream")
    assert after is not None and after - before <= 1


# -- WebSocket ---------------------------------------------------------------------------------
WS_CLIENT = """
import asyncio, json, os, sys
import aiohttp

async def main():
    async with aiohttp.ClientSession(trust_env=True) as s:
        async with s.ws_connect(sys.argv[1], headers={"x-api-key": sys.argv[2]}) as ws:
            hello = await ws.receive_str(timeout=20)
            await ws.send_str("ping 1")
            one = await ws.receive_str(timeout=20)
            await ws.send_bytes(b"\\x00\\x01binary")
            two = await ws.receive_bytes(timeout=20)
            print(json.dumps([hello, one, two.hex()]))

asyncio.run(main())
"""


def test_websocket_upgrade_with_substitution_in_handshake(
    sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    import sys

    key = keys["API_KEY"]
    p = run([sys.executable, "-c", WS_CLIENT, f"wss://{HOST}/ws", key.sealed], sidecar.client_env())
    assert p.returncode == 0, p.stderr[-2000:]
    hello, one, two = json.loads(p.stdout)
    assert (hello, one, bytes.fromhex(two)) == ("hello", "echo: ping 1", b"\x00\x01binary")
    assert upstream.last.path == "/ws" and upstream.last.header("x-api-key") == key.value
    assert upstream.ws_messages == ["ping 1"]


def test_plain_http_works_for_python_clients(sidecar: SidecarProcess, upstream: Upstream) -> None:
    out = pyclient(sidecar.client_env(), "requests", f"http://{HOST}/echo/plain-requests")
    assert out["status"] == 200 and upstream.last.scheme == "http"


def test_client_hello_garbage_after_connect(
    sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    """A client that speaks plain HTTP inside an intercepted CONNECT fails the handshake; nothing is sent."""
    with RawClient(sidecar.listen, timeout=SOCKET_TIMEOUT) as c:
        assert c.connect(f"{HOST}:443").status == 200
        c.send(b"GET / HTTP/1.1\r\nHost: api.oshu.test\r\n\r\n")
        assert c.closed_by_peer()
    assert upstream.requests == []
    still_serving(sidecar, upstream, keys["API_KEY"])


def test_client_tls_to_wrong_ca_fails_cleanly(
    sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    """A client that does not trust the session CA aborts; the proxy shrugs and keeps serving."""
    with RawClient(sidecar.listen, timeout=SOCKET_TIMEOUT) as c:
        assert c.connect(f"{HOST}:443").status == 200
        with pytest.raises(ssl.SSLCertVerificationError):
            c.start_tls(HOST, upstream.ca_file)
    assert upstream.requests == []
    still_serving(sidecar, upstream, keys["API_KEY"])


def test_half_closed_socket_is_handled(sidecar: SidecarProcess, upstream: Upstream) -> None:
    """A plain-HTTP client that shuts down its write side after the request still gets the response."""
    with RawClient(sidecar.listen, timeout=SOCKET_TIMEOUT) as c:
        c.send(f"GET http://{HOST}/echo/half HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        assert isinstance(c.sock, socket.socket)
        c.sock.shutdown(socket.SHUT_WR)
        resp = c.response()
    assert resp.status == 200 and resp.json()["path"] == "/echo/half"
