"""oauth2.py: the token request, response parsing, the single-flight cache with a fake clock, and
`pool_fetcher` over the proxy's real upstream pool against a local HTTPS token endpoint."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from pathlib import Path
from urllib.parse import parse_qsl

import pytest
from aiohttp import web

from oshu_sidecar.config import ConnectTo
from oshu_sidecar.errors import ProxyError
from oshu_sidecar.oauth2 import (
    DEFAULT_LIFETIME,
    FAILURE_HOLD,
    REJECT_HOLD,
    OAuth2Client,
    TokenSource,
    parse_token_response,
    pool_fetcher,
)
from oshu_sidecar.upstream import Router, UpstreamPool, client_context
from oshu_testkit.ca import TestCA

SECRET = "cs-very-secret-value"
FIELDS = {"tokenUrl": "https://auth.oshu.test/oauth/token", "clientId": "client-1", "clientSecret": SECRET}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Endpoint:
    """A token endpoint as a coroutine: counts requests, holds them until released, issues tokens."""

    def __init__(self, lifetime: int = 100) -> None:
        self.requests: list[str | None] = []
        self.lifetime = lifetime
        self.gate = asyncio.Event()
        self.gate.set()
        self.status = 200
        self.concurrent = self.max_concurrent = 0

    async def __call__(self, client: OAuth2Client, refresh: str | None) -> tuple[int, bytes]:
        self.requests.append(refresh)
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            await self.gate.wait()
        finally:
            self.concurrent -= 1
        n = len(self.requests)
        doc = {"access_token": f"at-{n}", "expires_in": self.lifetime, "token_type": "Bearer"}
        if refresh:
            doc["refresh_token"] = f"rt-{n}"
        return self.status, json.dumps(doc if self.status == 200 else {"error": "invalid_client"}).encode()


def test_the_token_request_forms() -> None:
    client = OAuth2Client.from_fields("OA", {**FIELDS, "scope": "read write", "audience": "https://api"})
    headers, body = client.token_request(None)
    assert dict(parse_qsl(body.decode())) == {
        "grant_type": "client_credentials",
        "scope": "read write",
        "audience": "https://api",
    }
    assert headers == [("Authorization", "Basic " + base64.b64encode(f"client-1:{SECRET}".encode()).decode())]
    post = OAuth2Client.from_fields("OA", {**FIELDS, "clientAuth": "post"})
    headers, body = post.token_request("rt-0")
    assert headers == []
    assert dict(parse_qsl(body.decode())) == {
        "grant_type": "refresh_token",
        "refresh_token": "rt-0",
        "client_id": "client-1",
        "client_secret": SECRET,
    }
    public = OAuth2Client.from_fields("OA", {"tokenUrl": "https://a.test:8443/t?x=1", "clientId": "c"})
    assert public.token_request(None)[0] == [] and public.authority == "a.test:8443" and public.path == "/t?x=1"
    assert SECRET not in repr(client)


@pytest.mark.parametrize(
    "fields",
    [
        {"tokenUrl": "http://a.test/t", "clientId": "c"},
        {"tokenUrl": "https://user:pw@a.test/t", "clientId": "c"},
        {"tokenUrl": "https://a.test/t"},
        {"tokenUrl": "https://a.test/t", "clientId": "c", "clientAuth": "jwt"},
        {"clientId": "c"},
    ],
)
def test_unusable_fields_are_refused_at_load(fields: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="secret OA"):
        OAuth2Client.from_fields("OA", fields)


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (401, b'{"error":"invalid_client","error_description":"' + SECRET.encode() + b'"}', "401 (invalid_client)"),
        (400, b'{"error":"Bad Thing <script>"}', "answered 400"),
        (500, b"<html>oops</html>", "answered 500"),
        (200, b"<html>", "not a JSON object"),
        (200, b'{"token_type":"Bearer"}', "no access_token"),
        (200, b'{"access_token":"x","token_type":"mac"}', "not a Bearer"),
    ],
)
def test_failed_token_responses_say_why_without_quoting_them(status: int, body: bytes, message: str) -> None:
    with pytest.raises(ProxyError) as e:
        parse_token_response("OA", status, body)
    assert e.value.code == "token_unavailable" and e.value.status == 502
    assert message in e.value.message and SECRET not in e.value.message and "script" not in e.value.message


def test_lifetimes() -> None:
    assert parse_token_response("OA", 200, b'{"access_token":"a","expires_in":"30"}').lifetime == 30
    assert parse_token_response("OA", 200, b'{"access_token":"a","expires_in":0}').lifetime == DEFAULT_LIFETIME
    assert parse_token_response("OA", 200, b'{"access_token":"a"}').refresh_token is None


async def test_concurrent_callers_share_one_request_and_refresh_ahead_of_expiry() -> None:
    clock, endpoint = Clock(), Endpoint(lifetime=100)
    source = TokenSource(OAuth2Client.from_fields("OA", FIELDS), endpoint, clock)
    endpoint.gate.clear()
    callers = [asyncio.create_task(source.token()) for _ in range(32)]
    await asyncio.sleep(0)
    endpoint.gate.set()
    assert set(await asyncio.gather(*callers)) == {"at-1"}
    assert len(endpoint.requests) == 1 and endpoint.max_concurrent == 1
    clock.now += 70  # fresh: cached
    assert await source.token() == "at-1" and len(endpoint.requests) == 1
    clock.now += 10  # 80 s of 100: past the refresh point (a quarter ahead), still usable
    endpoint.gate.clear()
    assert await asyncio.gather(*(source.token() for _ in range(32))) == ["at-1"] * 32
    assert len(endpoint.requests) == 2  # one background refresh started, callers not held
    endpoint.gate.set()
    await asyncio.sleep(0.01)
    assert await source.token() == "at-2" and len(endpoint.requests) == 2 and endpoint.max_concurrent == 1
    clock.now += 200  # expired: everyone waits for the one refresh
    assert set(await asyncio.gather(*(source.token() for _ in range(32)))) == {"at-3"}
    assert len(endpoint.requests) == 3 and source.requests == 3


async def test_a_rotated_refresh_token_is_used_next_time() -> None:
    clock, endpoint = Clock(), Endpoint(lifetime=100)
    source = TokenSource(OAuth2Client.from_fields("OA", {**FIELDS, "refreshToken": "rt-0"}), endpoint, clock)
    await source.token()
    clock.now += 1000
    await source.token()
    assert endpoint.requests == ["rt-0", "rt-1"]
    assert source.current() == "at-2"


async def test_a_failure_is_shared_and_held_briefly() -> None:
    clock, endpoint = Clock(), Endpoint()
    endpoint.status = 401
    source = TokenSource(OAuth2Client.from_fields("OA", FIELDS), endpoint, clock)
    results = await asyncio.gather(*(source.token() for _ in range(8)), return_exceptions=True)
    assert all(isinstance(r, ProxyError) and r.code == "token_unavailable" for r in results)
    assert len(endpoint.requests) == 1
    with pytest.raises(ProxyError):
        await source.token()
    assert len(endpoint.requests) == 1  # held: no new request
    clock.now += FAILURE_HOLD + 1
    endpoint.status = 200
    assert await source.token() == "at-2"


async def test_an_unreachable_endpoint_is_token_unavailable() -> None:
    async def unreachable(client: OAuth2Client, refresh: str | None) -> tuple[int, bytes]:
        raise ProxyError("upstream_tls_error", "TLS verification of upstream auth.oshu.test:443 failed")

    source = TokenSource(OAuth2Client.from_fields("OA", FIELDS), unreachable, Clock())
    with pytest.raises(ProxyError) as e:
        await source.token()
    assert e.value.code == "token_unavailable" and "upstream_tls_error" in e.value.message


async def test_pool_fetcher_posts_over_verified_tls(tmp_path: Path) -> None:
    """The real pool against a local HTTPS endpoint with its own CA: trusted only via the extra CA file."""
    ca = TestCA.new().write(tmp_path)
    leaf = ca.issue(["auth.oshu.test"])
    (tmp_path / "leaf.crt").write_bytes(leaf.cert_pem)
    (tmp_path / "leaf.key").write_bytes(leaf.key_pem)
    seen: list[tuple[str, str, dict[str, str]]] = []

    async def token(request: web.Request) -> web.StreamResponse:
        seen.append((request.path, request.headers.get("Authorization", ""), dict(await request.post())))  # type: ignore[arg-type]
        if request.query.get("mode") == "chunked":
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            await resp.write(b'{"access_token":"at-chunked",')
            await resp.write(b'"expires_in":60}')
            await resp.write_eof()
            return resp
        return web.json_response({"access_token": "at-ok", "expires_in": 60, "token_type": "bearer"})

    app = web.Application()
    app.router.add_post("/oauth/token", token)
    runner = web.AppRunner(app)
    await runner.setup()
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "leaf.crt", tmp_path / "leaf.key")
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    loop = asyncio.get_running_loop()
    router = Router(connect_to=(ConnectTo("auth.oshu.test", 443, "127.0.0.1", port),))
    try:
        pool = UpstreamPool(loop, client_context((str(ca.cert_path),)), router)
        fetch = pool_fetcher(pool, timeout=10)
        client = OAuth2Client.from_fields("OA", FIELDS)
        status, body = await fetch(client, None)
        assert status == 200 and json.loads(body)["access_token"] == "at-ok"
        status, body = await fetch(
            OAuth2Client.from_fields("OA", {**FIELDS, "tokenUrl": FIELDS["tokenUrl"] + "?mode=chunked"}), None
        )
        assert json.loads(body)["access_token"] == "at-chunked"
        path, auth, form = seen[0]
        assert path == "/oauth/token" and auth.startswith("Basic ") and form == {"grant_type": "client_credentials"}
        untrusted = UpstreamPool(loop, client_context(), router)  # without the CA: verification fails
        with pytest.raises(ProxyError) as e:
            await pool_fetcher(untrusted, timeout=10)(client, None)
        assert e.value.code == "upstream_tls_error"
        pool.close()
    finally:
        await runner.cleanup()


async def test_a_failed_background_refresh_is_not_retried_on_every_request() -> None:
    clock, endpoint = Clock(), Endpoint(lifetime=100)
    source = TokenSource(OAuth2Client.from_fields("OA", FIELDS), endpoint, clock)
    assert await source.token() == "at-1"
    clock.now += 80  # past the refresh point
    endpoint.status = 500
    assert await source.token() == "at-1"  # background refresh started (and fails)
    await asyncio.sleep(0.01)
    assert [await source.token() for _ in range(5)] == ["at-1"] * 5
    assert len(endpoint.requests) == 2  # held after the failure: the token still serves
    clock.now += FAILURE_HOLD + 0.5
    endpoint.status = 200
    assert await source.token() == "at-1"
    await asyncio.sleep(0.01)
    assert await source.token() == "at-3" and len(endpoint.requests) == 3


async def test_a_pooled_connection_closed_by_the_endpoint_is_retried_once_on_a_fresh_one(tmp_path: Path) -> None:
    """The endpoint answers the first request of each connection and closes on the second without a
    byte (what an expired keep-alive looks like when the close races the reuse)."""
    ca = TestCA.new().write(tmp_path)
    leaf = ca.issue(["auth.oshu.test"])
    (tmp_path / "leaf.pem").write_bytes(leaf.cert_pem + leaf.key_pem)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "leaf.pem")
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        body = b'{"access_token":"at-%d","expires_in":60}' % connections
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        )
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")  # the second request: closed unanswered
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    router = Router(connect_to=(ConnectTo("auth.oshu.test", 443, "127.0.0.1", port),))
    pool = UpstreamPool(loop, client_context((str(ca.cert_path),)), router)
    fetch = pool_fetcher(pool, timeout=10)
    client = OAuth2Client.from_fields("OA", FIELDS)
    try:
        assert json.loads((await fetch(client, None))[1])["access_token"] == "at-1"
        assert json.loads((await fetch(client, None))[1])["access_token"] == "at-2"  # retried on connection 2
        assert connections == 2
    finally:
        pool.close()
        server.close()
        await server.wait_closed()


async def test_a_token_the_api_rejects_is_dropped_at_most_once_per_hold() -> None:
    clock, endpoint = Clock(), Endpoint(lifetime=3600)
    source = TokenSource(OAuth2Client.from_fields("OA", FIELDS), endpoint, clock)
    assert await source.token() == "at-1"
    assert not source.rejected("at-0")  # not the cached token: nothing to do
    assert source.rejected("at-1")
    assert await source.token() == "at-2" and len(endpoint.requests) == 2
    clock.now += 1
    assert not source.rejected("at-2")  # within the hold: an API refusing everything costs no storm
    assert await source.token() == "at-2" and len(endpoint.requests) == 2
    clock.now += REJECT_HOLD
    assert source.rejected("at-2") and await source.token() == "at-3"
