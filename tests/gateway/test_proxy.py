"""The proxy side of a real gateway: one listener, Proxy-Authorization, per-session policy, real clients."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest
import requests

from oshu_testkit.gateway_process import GatewayProcess
from oshu_testkit.upstreams import Upstream

KEY_A = "sk-gw-alpha-0123456789abcdef"
KEY_B = "sk-gw-bravo-fedcba9876543210"


def _session(gw: GatewayProcess, value: str, **extra: object) -> dict:
    return gw.create_session({"secrets": {"API_KEY": {"value": value, "hosts": ["api.oshu.test"]}}, **extra})


def _curl(gw: GatewayProcess, proxy: str, url: str, *args: str) -> tuple[int, str]:
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "--max-time",
            "20",
            "--proxy",
            proxy,
            "--proxy-cacert",
            str(gw.ca_file),
            "--cacert",
            str(gw.ca_file),
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            *args,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin"},
    )
    body, _, code = out.stdout.rpartition("\n")
    return int(code or 0), body


def _sent_key(upstream: Upstream) -> str | None:
    return upstream.last.header("x-api-key")


@pytest.mark.parametrize("tls", [True, False], ids=["https-proxy", "http-proxy"])
def test_curl_gets_the_key_swapped_and_scrubbed(gateway: GatewayProcess, upstream: Upstream, tls: bool) -> None:
    s = _session(gateway, KEY_A)
    sealed = s["sealed_secrets"]["API_KEY"]
    code, body = _curl(
        gateway,
        gateway.proxy_url(s, tls),
        "https://api.oshu.test/reflect?header=x-api-key",
        "-H",
        f"x-api-key: {sealed}",
    )
    assert code == 200
    assert _sent_key(upstream) == KEY_A  # the upstream got the real key
    assert KEY_A not in body and sealed in body  # the echo came back scrubbed


@pytest.mark.parametrize("tls", [True, False], ids=["https-proxy", "http-proxy"])
def test_python_clients(gateway: GatewayProcess, upstream: Upstream, tls: bool) -> None:
    s = _session(gateway, KEY_A)
    sealed = s["sealed_secrets"]["API_KEY"]
    proxy = gateway.proxy_url(s, tls)
    ca = str(gateway.ca_file)
    # requests (urllib3 does TLS-in-TLS for an https:// proxy)
    with requests.Session() as rs:
        rs.trust_env = False
        r = rs.get(
            "https://api.oshu.test/echo", headers={"x-api-key": sealed}, proxies={"https": proxy}, verify=ca, timeout=20
        )
    assert r.status_code == 200 and _sent_key(upstream) == KEY_A
    # httpx
    ctx = ssl.create_default_context(cafile=ca)
    with httpx.Client(
        proxy=httpx.Proxy(proxy, ssl_context=ctx) if tls else proxy, verify=ctx, trust_env=False, timeout=20
    ) as hc:
        r2 = hc.get("https://api.oshu.test/reflect?header=x-api-key", headers={"x-api-key": sealed})
    assert r2.status_code == 200 and _sent_key(upstream) == KEY_A
    assert KEY_A not in r2.text


def test_aiohttp_client(gateway: GatewayProcess, upstream: Upstream) -> None:
    import asyncio

    import aiohttp

    s = _session(gateway, KEY_A)
    sealed = s["sealed_secrets"]["API_KEY"]

    async def go(proxy: str) -> int:
        ctx = ssl.create_default_context(cafile=str(gateway.ca_file))
        async with (
            aiohttp.ClientSession(trust_env=False) as cs,
            cs.get("https://api.oshu.test/echo", headers={"x-api-key": sealed}, proxy=proxy, ssl=ctx) as r,
        ):
            await r.read()
            return r.status

    for tls in (True, False):
        upstream.clear()
        assert asyncio.run(go(gateway.proxy_url(s, tls))) == 200
        assert _sent_key(upstream) == KEY_A


@pytest.mark.parametrize("tls", [True, False], ids=["https-proxy", "http-proxy"])
def test_missing_or_wrong_credentials_get_407(gateway: GatewayProcess, upstream: Upstream, tls: bool) -> None:
    s = _session(gateway, KEY_A)
    base = gateway.base_url if tls else gateway.plain_url
    scheme, _, hostport = base.partition("://")
    upstream.clear()
    for proxy in (
        base,
        f"{scheme}://{s['session_id']}:tok_wrong@{hostport}",
        f"{scheme}://sess_nope:{s['token']}@{hostport}",
    ):
        code, _ = _curl(gateway, proxy, "https://api.oshu.test/echo")
        assert code in (0, 407)  # curl reports CONNECT failures as 000 with the 407 in stderr
    # absolute-form plain HTTP gets the 407 as a response
    code, body = _curl(gateway, base, "http://api.oshu.test/echo")
    assert code == 407
    assert json.loads(body)["error"]["code"] == "proxy_auth_required"
    assert upstream.requests == []  # nothing was forwarded


def test_407_carries_proxy_authenticate(gateway: GatewayProcess) -> None:
    assert gateway.plain_listen is not None
    with socket.create_connection(gateway.plain_listen, timeout=10) as sock:
        sock.sendall(b"CONNECT api.oshu.test:443 HTTP/1.1\r\nHost: api.oshu.test:443\r\n\r\n")
        head = sock.recv(65536).decode()
    assert head.startswith("HTTP/1.1 407 ")
    assert 'Proxy-Authenticate: Basic realm="oshu-vault"' in head


def test_isolation_between_sessions(gateway: GatewayProcess, upstream: Upstream) -> None:
    a = _session(gateway, KEY_A)
    b = _session(gateway, KEY_B)
    sealed_a = a["sealed_secrets"]["API_KEY"]
    code, body = _curl(
        gateway, gateway.proxy_url(b, True), "https://api.oshu.test/echo", "-H", f"x-api-key: {sealed_a}"
    )
    assert code == 200
    assert _sent_key(upstream) == sealed_a  # passed through as the sealed string, never A's value
    assert KEY_A not in body
    code, _ = _curl(
        gateway,
        gateway.proxy_url(b, True),
        "https://api.oshu.test/echo",
        "-H",
        f"x-api-key: {b['sealed_secrets']['API_KEY']}",
    )
    assert code == 200 and _sent_key(upstream) == KEY_B


def test_egress_allowlist_and_plaintext_refusal(gateway: GatewayProcess, upstream: Upstream) -> None:
    s = _session(gateway, KEY_A, allowed_egress=["allowed.oshu.test"])
    code, body = _curl(gateway, gateway.proxy_url(s, False), "http://denied.oshu.test/echo")
    assert code == 403 and json.loads(body)["error"]["code"] == "egress_denied"
    open_ = _session(gateway, KEY_A)
    upstream.clear()
    code, body = _curl(
        gateway,
        gateway.proxy_url(open_, False),
        "http://api.oshu.test/echo",
        "-H",
        f"x-api-key: {open_['sealed_secrets']['API_KEY']}",
    )
    assert code == 403 and json.loads(body)["error"]["code"] == "plaintext_secret"
    assert upstream.requests == []
    code, _ = _curl(gateway, gateway.proxy_url(open_, False), "http://api.oshu.test/echo")
    assert code == 200  # plain HTTP without a token is proxied


def test_delete_takes_effect_on_open_connections(gateway: GatewayProcess, upstream: Upstream) -> None:
    s = _session(gateway, KEY_A)
    sealed = s["sealed_secrets"]["API_KEY"]
    with requests.Session() as rs:
        rs.trust_env = False
        rs.proxies = {"https": gateway.proxy_url(s, True)}
        rs.verify = str(gateway.ca_file)
        assert rs.get("https://api.oshu.test/echo", headers={"x-api-key": sealed}, timeout=20).status_code == 200
        status, _, _ = gateway.request("DELETE", f"/v1/sessions/{s['session_id']}")
        assert status == 204
        upstream.clear()
        r = rs.get("https://api.oshu.test/echo", headers={"x-api-key": sealed}, timeout=20)  # same pooled tunnel
    assert r.status_code == 403 and r.json()["error"]["code"] == "session_revoked"
    assert upstream.requests == []
    code, _ = _curl(gateway, gateway.proxy_url(s, False), "http://api.oshu.test/echo")
    assert code == 407  # new requests: the credentials are gone


def test_git_and_node_through_the_gateway(gateway: GatewayProcess, upstream: Upstream, tmp_path: Path) -> None:
    s = _session(gateway, KEY_A)
    sealed = s["sealed_secrets"]["API_KEY"]
    for tls in (True, False):
        upstream.clear()
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            "GIT_SSL_CAINFO": str(gateway.ca_file),
            "GIT_TERMINAL_PROMPT": "0",
            "https_proxy": gateway.proxy_url(s, tls),
            "GIT_CONFIG_NOSYSTEM": "1",
        }
        if tls:
            env["GIT_PROXY_SSL_CAINFO"] = str(gateway.ca_file)
        subprocess.run(
            ["git", "-c", f"http.extraHeader=x-api-key: {sealed}", "ls-remote", "https://api.oshu.test/echo/repo.git"],
            env=env,
            capture_output=True,
            timeout=30,
        )
        got = [r for r in upstream.requests if r.path.startswith("/echo/repo.git")]
        assert got and got[0].header("x-api-key") == KEY_A, f"tls={tls}"
    node_modules = Path(__file__).resolve().parents[1] / "node" / "node_modules"
    script = (
        "const {ProxyAgent, fetch} = require('undici');"
        "const fs = require('fs');"
        "const ca = fs.readFileSync(process.env.CA);"
        "const agent = new ProxyAgent({uri: process.env.PROXY, proxyTls: {ca}, requestTls: {ca}});"
        "fetch('https://api.oshu.test/reflect?header=x-api-key', {dispatcher: agent,"
        " headers: {'x-api-key': process.env.SEALED}}).then(async r => {console.log(r.status);"
        " console.log(await r.text());}).catch(e => {console.error(e); process.exit(1);});"
    )
    for tls in (True, False):
        upstream.clear()
        out = subprocess.run(
            ["node", "-e", script],
            capture_output=True,
            text=True,
            timeout=60,
            env={
                "PATH": "/usr/bin:/bin",
                "NODE_PATH": str(node_modules),
                "CA": str(gateway.ca_file),
                "PROXY": gateway.proxy_url(s, tls),
                "SEALED": sealed,
            },
        )
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.startswith("200") and KEY_A not in out.stdout
        assert _sent_key(upstream) == KEY_A


def test_basic_header_shape_is_what_clients_send(gateway: GatewayProcess) -> None:
    """A raw CONNECT with the Basic credentials tunnels (200), proving the header format."""
    s = _session(gateway, KEY_A)
    cred = base64.b64encode(f"{s['session_id']}:{s['token']}".encode()).decode()
    assert gateway.plain_listen is not None
    with socket.create_connection(gateway.plain_listen, timeout=10) as sock:
        sock.sendall(
            f"CONNECT api.oshu.test:443 HTTP/1.1\r\nHost: api.oshu.test:443\r\n"
            f"Proxy-Authorization: Basic {cred}\r\n\r\n".encode()
        )
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")


def test_connect_sni_and_host_must_agree(gateway: GatewayProcess, upstream: Upstream) -> None:
    """The sidecar's binding per session: a Host naming another host inside the tunnel gets 421, nothing sent."""
    s = _session(gateway, KEY_A)
    upstream.clear()
    code, body = _curl(
        gateway,
        gateway.proxy_url(s, True),
        "https://api.oshu.test/echo",
        "-H",
        "Host: other.oshu.test",
        "-H",
        f"x-api-key: {s['sealed_secrets']['API_KEY']}",
    )
    assert code == 421 and json.loads(body)["error"]["code"] == "host_mismatch"
    assert upstream.requests == []
