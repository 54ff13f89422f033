"""The sidecar under attack by a hostile agent inside the pod.

The agent holds only sealed tokens and wants a real value: in a response it can read, at
a host the session does not allow, over plaintext, in logs, metrics or error bodies; or a
real key substituted after expiry or revocation; or the proxy wedged for everyone else.
Each test is one attack, with the proxy's answer it must give. Every response the agent
reads is scanned for every real value in every encoding the proxy could have produced
(raw, percent-encoded, inside base64), and so are the logs and metrics of every sidecar.

`ScriptedUpstream` stands in for an upstream that misbehaves on purpose (echoes a key in
a trailer, an interim response or a header name; answers 101 to a plain request), where
the aiohttp `Upstream` of the test kit (`oshu_testkit.upstreams`) is too well-behaved to.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import html
import json
import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus, unquote

import pytest

from oshu_contract.session import SecretBinding
from oshu_sidecar.policy import Policy
from oshu_testkit.rawclient import RawClient, RawResponse
from oshu_testkit.scripted import ScriptedUpstream, header_value
from oshu_testkit.sessions import new_secret, new_session
from oshu_testkit.sidecar_process import SidecarProcess
from oshu_testkit.upstreams import HOST, OTHER, TUNNEL, Upstream

TIMEOUT = 10.0
WAIT = 10.0
SMUGGLED = "GET /echo/smuggled HTTP/1.1\r\nHost: evil.test\r\n\r\n"


# -- what the agent may read ---------------------------------------------------------------------
def encoded_forms(value: str) -> list[bytes]:
    """A real value as it could appear in a response: raw, percent-encoded, inside base64 at any offset."""
    forms = {value, quote(value, safe=""), quote(value), quote_plus(value, safe=""), quote_plus(value)}
    out = [f.encode() for f in forms]
    raw = value.encode()
    for k in range(3):  # base64 of `value` preceded by k bytes: the part that does not depend on neighbours
        enc = base64.b64encode(b"\0" * k + raw)
        start = 4 if k else 0  # the first group holding prefix bytes is left out
        full = (len(raw) + k) // 3 * 4  # groups completed by the value alone
        if full - start >= 8:
            out.append(enc[start:full])
    return out


def assert_clean(data: bytes | str, keys: list[SecretBinding] | dict[str, SecretBinding]) -> None:
    if isinstance(data, str):
        data = data.encode()
    for key in keys.values() if isinstance(keys, dict) else keys:
        for form in encoded_forms(key.value):
            assert form not in data, f"a form of the real value of {key.name} reached the agent"


def error_code(resp: RawResponse) -> str:
    return json.loads(resp.body)["error"]["code"]


def tls_client(
    sc: SidecarProcess,
    host: str = HOST,
    sni: str | bool | None = True,
    alpn: list[str] | None = None,
    session: ssl.SSLSession | None = None,
) -> RawClient:
    """CONNECT + TLS through the proxy, trusting the session CA."""
    c = RawClient(sc.listen, timeout=TIMEOUT)
    assert c.connect(host).status == 200
    name = host.rsplit(":", 1)[0] if sni is True else (sni or None)
    ctx = ssl.create_default_context(cafile=str(sc.ca_cert_file))
    if name is None or name != host.rsplit(":", 1)[0]:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # only SNI games: the proxy is what is under test
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    c.sock = ctx.wrap_socket(c.sock, server_hostname=name, session=session)
    return c


def still_serving(sc: SidecarProcess, upstream: Upstream, key: SecretBinding) -> None:
    upstream.clear()
    with tls_client(sc, f"{HOST}:443") as c:
        resp = c.request("GET", "/echo/still-serving", {"Host": HOST, "x-api-key": key.sealed})
    assert resp.status == 200
    assert upstream.last.header("x-api-key") == key.value
    assert_clean(resp.raw_head + resp.body, [key])


# -- an upstream that misbehaves on purpose: oshu_testkit.scripted.ScriptedUpstream -------------


@pytest.fixture
def scripted(tmp_path: Path) -> Iterator[Callable[..., tuple[ScriptedUpstream, SidecarProcess]]]:
    """Start a ScriptedUpstream for HOST and a sidecar reaching HOST there; both torn down and leak-scanned."""
    started: list[tuple[ScriptedUpstream, SidecarProcess, list[str]]] = []

    def make(
        respond: Callable[[bytes, bytes], bytes], *secrets: SecretBinding, **kw: Any
    ) -> tuple[ScriptedUpstream, SidecarProcess]:
        up = ScriptedUpstream(tmp_path / f"up{len(started)}", [HOST, "*.oshu.test"], respond).__enter__()
        sc = SidecarProcess(
            new_session(*secrets),
            directory=tmp_path / f"sc{len(started)}",
            connect_to=up.connect_to([HOST]),
            upstream_ca_files=[up.ca.cert_path],
            **kw,
        )
        started.append((up, sc, [s.value for s in secrets]))
        sc.start()
        return up, sc

    yield make
    for up, sc, values in started:
        try:
            text = sc.log_text() + (sc.metrics_text() if sc.returncode is None else "")
        finally:
            sc.stop()
            up.__exit__()
        for v in values:
            for form in encoded_forms(v):
                assert form.decode() not in text + sc.log_text(), "a real value reached the sidecar's logs or metrics"


# -- request smuggling inside an intercepted tunnel ------------------------------------------------
SMUGGLING_HEADS = {
    "CL and TE": (b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n", 400),
    "TE and CL": (b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n", 400),
    "conflicting CLs": (b"Content-Length: 4\r\nContent-Length: 5\r\n", 400),
    "CL list": (b"Content-Length: 4, 5\r\n", 400),
    "CL with sign": (b"Content-Length: +4\r\n", 400),
    "TE chunked, identity": (b"Transfer-Encoding: chunked, identity\r\n", 501),
    "TE identity": (b"Transfer-Encoding: identity\r\n", 501),
    "TE twice": (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", 501),
    "TE with space before colon": (b"Transfer-Encoding : chunked\r\n", 400),
    "obs-fold": (b"X-A: 1\r\n Transfer-Encoding: chunked\r\n", 400),
    "bare CR": (b"X-A: 1\rTransfer-Encoding: chunked\r\n", 400),
    "NUL in value": (b"X-A: 1\x00\r\n", 400),
    "space in name": (b"X Y: 1\r\n", 400),
    "empty name": (b": 1\r\n", 400),
    "two Hosts": (b"Host: evil.test\r\n", 400),
}


@pytest.mark.parametrize("case", sorted(SMUGGLING_HEADS))
def test_ambiguous_heads_are_refused_before_anything_is_sent(
    case: str, sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    """Framing the proxy and an upstream could read differently never reaches the upstream."""
    extra, status = SMUGGLING_HEADS[case]
    key = keys["API_KEY"]
    head = b"POST /echo HTTP/1.1\r\nHost: api.oshu.test\r\nx-api-key: %b\r\n%b\r\n" % (key.sealed.encode(), extra)
    with tls_client(sidecar, f"{HOST}:443") as c:
        c.send(head + b"0\r\n\r\n" + SMUGGLED.encode())
        resp = c.response()
        assert resp.status == status
        assert resp.header("connection") == "close"
        assert c.closed_by_peer()
    assert_clean(resp.raw_head + resp.body, keys)
    assert upstream.requests == []
    still_serving(sidecar, upstream, key)


@pytest.mark.parametrize("named", ["content-length", "Content-Length, keep-alive", "host"])
def test_connection_cannot_strip_framing_or_routing_fields(
    named: str, sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    """`Connection: content-length` must not drop the length the proxy itself frames the body by.

    Before: the Content-Length line was dropped as "named by Connection" while the body was
    still forwarded, so the upstream read the body as a second request of the agent's making
    (any Host, never checked by the proxy).
    """
    key = keys["API_KEY"]
    body = SMUGGLED.encode()
    with tls_client(sidecar, f"{HOST}:443") as c:
        resp = c.request(
            "POST",
            "/echo/outer",
            [("Host", HOST), ("Connection", named), ("x-api-key", key.sealed), ("Content-Length", str(len(body)))],
            body,
        )
    assert resp.status == 200
    assert_clean(resp.raw_head + resp.body, keys)
    # A smuggled request would follow on the same upstream connection at once: allow it a moment to show.
    assert not upstream.wait_for(lambda u: any(r.path == "/echo/smuggled" for r in u.requests), 1.0)
    assert [(r.path, r.header("host"), r.body) for r in upstream.requests] == [("/echo/outer", HOST, body)]
    still_serving(sidecar, upstream, key)


def test_pipelined_request_naming_another_host_is_refused(
    sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    key, other = keys["API_KEY"], keys["OTHER_KEY"]
    first = b"GET /echo/first HTTP/1.1\r\nHost: api.oshu.test\r\nx-api-key: %b\r\n\r\n" % key.sealed.encode()
    second = b"GET /echo/second HTTP/1.1\r\nHost: other.oshu.test\r\nx-api-key: %b\r\n\r\n" % other.sealed.encode()
    with tls_client(sidecar, f"{HOST}:443") as c:
        c.send(first + second)
        r1, r2 = c.response(), c.response()
    assert (r1.status, r2.status) == (200, 421) and error_code(r2) == "host_mismatch"
    assert [r.path for r in upstream.requests] == ["/echo/first"]
    assert_clean(r1.raw_head + r1.body + r2.raw_head + r2.body, keys)


@pytest.mark.parametrize("size_line", [b"fffffffffffffffff", b"0x10", b"-1", b"zz", b"1 1", b"a" * 9000])
def test_bad_chunk_sizes_end_the_exchange(
    size_line: bytes, sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    key = keys["BODY_KEY"]
    head = b"POST /upload HTTP/1.1\r\nHost: api.oshu.test\r\nTransfer-Encoding: chunked\r\n\r\n"
    with tls_client(sidecar, f"{HOST}:443") as c:
        c.send(
            head + b"5\r\nhello\r\n" + size_line + b"\r\n" + key.sealed.encode() + b"\r\n0\r\n\r\n" + SMUGGLED.encode()
        )
        try:
            resp = c.response()
            assert resp.status >= 400
            assert_clean(resp.raw_head + resp.body, keys)
        except (ConnectionError, ssl.SSLError):
            pass  # closing without an answer is fine too: the request was already under way
        assert c.closed_by_peer()
    assert not upstream.wait_for(lambda u: any(r.path == "/echo/smuggled" for r in u.requests), 1.0)
    assert all(r.path != "/echo/smuggled" and key.value.encode() not in r.body for r in upstream.requests)
    still_serving(sidecar, upstream, keys["API_KEY"])


# -- Host, authority and SNI games ----------------------------------------------------------------
HOST_FIELDS = {
    "with :443": ("api.oshu.test:443", 200),
    "trailing dot": ("api.oshu.test.", 200),
    "upper case": ("API.OSHU.TEST", 200),
    "other port": ("api.oshu.test:8443", 421),
    "other host": ("other.oshu.test", 421),
    "suffix trick": ("api.oshu.test.evil.test", 421),
    "userinfo": ("api.oshu.test@evil.test", 400),
    "IPv6 literal": ("[::1]", 421),
    "IPv4 literal": ("127.0.0.1", 421),
    "list": ("api.oshu.test, evil.test", 400),
    "two ports": ("api.oshu.test:443:443", 400),
    "empty": ("", 400),
    "percent-encoded": ("api%2eoshu.test", 400),
}


@pytest.mark.parametrize("case", sorted(HOST_FIELDS))
def test_host_field_tricks(
    case: str, sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    value, status = HOST_FIELDS[case]
    key = keys["API_KEY"]
    with tls_client(sidecar, f"{HOST}:443") as c:
        resp = c.request("GET", "/echo/host", [("Host", value), ("x-api-key", key.sealed)])
    assert resp.status == status
    assert_clean(resp.raw_head + resp.body, keys)
    if status == 200:
        assert upstream.last.header("x-api-key") == key.value
    else:
        assert upstream.requests == []


ABSOLUTE_TARGETS = {
    "same host": ("https://api.oshu.test/echo/abs", 200),
    "same host, :443": ("https://API.oshu.test:443/echo/abs", 200),
    "other host": ("https://other.oshu.test/echo/abs", 421),
    "userinfo": ("https://api.oshu.test@other.oshu.test/echo/abs", 400),
    "userinfo with port": ("https://api.oshu.test:443@other.oshu.test/echo/abs", 400),
    "http scheme": ("http://api.oshu.test/echo/abs", 400),
    "scheme only": ("https:///echo/abs", 400),
    "backslash": ("https://other.oshu.test\\@api.oshu.test/echo/abs", 400),
}


@pytest.mark.parametrize("case", sorted(ABSOLUTE_TARGETS))
def test_absolute_form_inside_the_tunnel(
    case: str, sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    target, status = ABSOLUTE_TARGETS[case]
    key = keys["API_KEY"]
    with tls_client(sidecar, f"{HOST}:443") as c:
        resp = c.request("GET", target, {"Host": HOST, "x-api-key": key.sealed})
    assert resp.status == status
    assert_clean(resp.raw_head + resp.body, keys)
    if status == 200:
        assert upstream.last.path == "/echo/abs" and upstream.last.header("x-api-key") == key.value
    else:
        assert upstream.requests == []


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_sni_games_on_session_resumption(
    version: ssl.TLSVersion, sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    """Resuming a session with another SNI never gets a request anywhere but the CONNECT target.

    TLS 1.3 uses the SNI of the new ClientHello: refused. In TLS 1.2 OpenSSL binds the SNI
    to the session and reports the original one; that session was negotiated (and its SNI
    checked) on a connection to this same CONNECT target, because every intercepted name has
    its own server context and so its own ticket keys and session cache.
    """
    key = keys["API_KEY"]
    ctx = ssl.create_default_context(cafile=str(sidecar.ca_cert_file))
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = version
    first = RawClient(sidecar.listen, timeout=TIMEOUT)
    assert first.connect(f"{HOST}:443").status == 200
    first.sock = ctx.wrap_socket(first.sock, server_hostname=HOST)
    assert first.request("GET", "/echo/first", {"Host": HOST}).status == 200
    saved = first.sock.session
    first.close()
    with RawClient(sidecar.listen, timeout=TIMEOUT) as c:
        assert c.connect(f"{HOST}:443").status == 200
        c.sock = ctx.wrap_socket(c.sock, server_hostname=OTHER, session=saved)
        assert c.sock.session_reused
        resp = c.request("GET", "/echo/resumed", {"Host": HOST, "x-api-key": key.sealed})
    assert_clean(resp.raw_head + resp.body, keys)
    if version == ssl.TLSVersion.TLSv1_3:
        assert resp.status == 421 and error_code(resp) == "host_mismatch"
        assert [r.path for r in upstream.requests] == ["/echo/first"]
    else:
        assert resp.status == 200
        assert all(r.header("host") == HOST for r in upstream.requests)
    # A resumed session never carries a name over to another CONNECT target.
    with RawClient(sidecar.listen, timeout=TIMEOUT) as c:
        assert c.connect(f"{OTHER}:443").status == 200
        c.sock = ctx.wrap_socket(c.sock, server_hostname=OTHER, session=saved)
        assert not c.sock.session_reused


@pytest.mark.parametrize(
    "offered,selected", [(["h2"], None), (["h2", "http/1.1"], "http/1.1"), (["spdy/3", "h2c"], None)]
)
def test_only_http11_is_negotiated(
    offered: list[str],
    selected: str | None,
    sidecar: SidecarProcess,
    upstream: Upstream,
    keys: dict[str, SecretBinding],
) -> None:
    with tls_client(sidecar, f"{HOST}:443", alpn=offered) as c:
        assert c.sock.selected_alpn_protocol() == selected  # type: ignore[union-attr]
        if selected is None:  # a client that speaks HTTP/2 anyway gets an HTTP/1.1 error, not a parse
            c.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            resp = c.response()
            assert resp.status == 505 and c.closed_by_peer()
        else:
            assert c.request("GET", "/echo/alpn", {"Host": HOST}).status == 200
    still_serving(sidecar, upstream, keys["API_KEY"])


def test_h2c_upgrade_is_not_forwarded(
    sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    key = keys["API_KEY"]
    with tls_client(sidecar, f"{HOST}:443") as c:
        resp = c.request(
            "GET",
            "/echo/h2c",
            [
                ("Host", HOST),
                ("Connection", "Upgrade, HTTP2-Settings"),
                ("Upgrade", "h2c"),
                ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
                ("x-api-key", key.sealed),
            ],
        )
        assert resp.status == 200
        again = c.request("GET", "/echo/h2c-after", {"Host": OTHER})  # later bytes are still parsed and checked
    assert again.status == 421
    names = {k.lower() for k, _ in upstream.last.headers}
    assert not names & {"upgrade", "http2-settings", "connection"}
    assert upstream.last.header("x-api-key") == key.value and len(upstream.requests) == 1


def test_upgrade_without_connection_upgrade_stays_http(
    sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    """`Upgrade: websocket` alone is not a handshake: the connection stays parsed request by request."""
    with tls_client(sidecar, f"{HOST}:443") as c:
        resp = c.request(
            "GET",
            "/ws",
            {
                "Host": HOST,
                "Upgrade": "websocket",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            },
        )
        assert resp.status != 101
        assert c.request("GET", "/echo/next", {"Host": OTHER, "x-api-key": keys["OTHER_KEY"].sealed}).status == 421
    assert "/echo/next" not in [r.path for r in upstream.requests]


def test_upstream_switching_protocols_unasked_is_refused(scripted) -> None:
    """An upstream answering 101 to a plain request must not turn the connection into an unchecked pipe."""
    key = new_secret("API_KEY", [HOST])
    _up, sc = scripted(
        lambda head, body: b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", key
    )
    with tls_client(sc, f"{HOST}:443") as c:
        resp = c.request("GET", "/plain", {"Host": HOST, "x-api-key": key.sealed})
        assert resp.status == 502 and error_code(resp) == "upstream_protocol_error"
        assert c.closed_by_peer()


# -- CONNECT targets -----------------------------------------------------------------------------
def test_connect_to_an_allowed_host_on_port_80_is_never_intercepted(
    sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    """Port 80 of a secret's host is a blind tunnel: whatever is sent through it keeps the sealed token."""
    key = keys["API_KEY"]
    with RawClient(sidecar.listen, timeout=TIMEOUT) as c:
        assert c.connect(f"{HOST}:80").status == 200
        resp = c.request("GET", "/echo/port80", {"Host": HOST, "x-api-key": key.sealed})
    assert resp.status == 200
    assert upstream.last.scheme == "http" and upstream.last.header("x-api-key") == key.sealed
    assert sidecar.metric("oshu_tunnels_total", mode="blind") is not None


def test_plain_http_with_a_token_anywhere_is_refused(
    sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    key = keys["API_KEY"]
    basic = base64.b64encode(f"u:{key.sealed}".encode()).decode()
    attempts = [
        ("GET", f"http://{HOST}/echo", {"x-api-key": key.sealed}),
        ("GET", f"http://{HOST}/echo", {"Authorization": f"basic {basic}"}),
        ("GET", f"http://{HOST}/echo?k={key.sealed}", {}),
        ("GET", f"http://{HOST}:443/echo", {"x-api-key": key.sealed}),
        ("GET", f"http://{HOST}/echo", {"Cookie": f"k={key.sealed}"}),
    ]
    for method, url, headers in attempts:
        with RawClient(sidecar.listen, timeout=TIMEOUT) as c:
            resp = c.request(method, url, {"Host": HOST, **headers})
        assert resp.status == 403 and error_code(resp) == "plaintext_secret", url
    assert upstream.requests == []


@pytest.mark.parametrize(
    "target",
    [
        "127.0.0.1:443",
        "localhost:443",
        "[::1]:443",
        "api.oshu.test:80",
        "API.OSHU.TEST.evil.test:443",
        "2130706433:443",
    ],
)
def test_egress_allowlist_has_no_side_doors(target: str, make_sidecar, upstream: Upstream) -> None:
    key = new_secret("API_KEY", [HOST])
    sc = make_sidecar(new_session(key, egress=[TUNNEL]))
    with RawClient(sc.listen, timeout=TIMEOUT) as c:
        resp = c.connect(target)
    assert resp.status in (400, 403)
    with RawClient(sc.listen, timeout=TIMEOUT) as c:
        plain = c.request("GET", f"http://{target}/echo", {})
    assert plain.status in (400, 403)
    assert upstream.requests == []


# -- response scrubbing evasions ------------------------------------------------------------------
def read_until_close(c: RawClient, limit: int = 1 << 20) -> bytes:
    """Every byte the proxy sends until it closes (the agent's whole view of the response)."""
    data = c._buf
    c._buf = b""
    for _ in range(10000):
        try:
            piece = c.sock.recv(65536)
        except (TimeoutError, ConnectionError, ssl.SSLError):
            break
        if not piece:
            break
        data += piece
        if len(data) > limit:
            break
    return data


def echo_everywhere(head: bytes, body: bytes) -> bytes:
    """An upstream that puts the key it received in every corner of an HTTP/1.1 response."""
    v = header_value(head, b"x-api-key")
    payload = b'{"error": "invalid key ' + v + b'"}\n'
    chunks = b"%x;ext=%b\r\n%b\r\n" % (1, v, payload[:1])
    chunks += b"".join(b"1\r\n%b\r\n" % payload[i : i + 1] for i in range(1, len(payload)))
    return (
        b"HTTP/1.1 103 Early Hints\r\nLink: </hint?k=" + v + b">\r\n\r\n"
        b"HTTP/1.1 302 Found\r\nLocation: https://api.oshu.test/x?k="
        + v
        + b"\r\n"
        + v
        + b": in-a-name\r\nX-Echo: "
        + v
        + b"\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n"
        + chunks
        + b"0\r\nX-T: "
        + v
        + b"\r\n"
        + v
        + b": trailer-name\r\n\r\n"
    )


def test_key_echoed_in_every_corner_of_a_response_is_scrubbed(scripted) -> None:
    """Interim response, header name and value, Location, chunk extension, 1-byte chunks, trailer name and value."""
    key = new_secret("API_KEY", [HOST])
    up, sc = scripted(echo_everywhere, key)
    with tls_client(sc, f"{HOST}:443") as c:
        c.send(
            b"GET /leak HTTP/1.1\r\nHost: api.oshu.test\r\nx-api-key: %b\r\nConnection: close\r\n\r\n"
            % key.sealed.encode()
        )
        seen = read_until_close(c)
    assert up.received and header_value(up.received[0][0], b"x-api-key") == key.value.encode()
    assert b"103 Early Hints" in seen and b"302 Found" in seen and b"trailer-name" in seen
    assert_clean(seen, [key])
    t = key.sealed.encode()  # what the agent sees instead: its own token, in every place
    for where in (
        b"Link: </hint?k=" + t,
        b"Location: https://api.oshu.test/x?k=" + t,
        b"\r\n" + t + b": in-a-name",
        b"X-Echo: " + t,
        b"X-T: " + t,
        b"\r\n" + t + b": trailer-name",
    ):
        assert where in seen
    assert b"ext=" not in seen  # chunk extensions are not forwarded at all


def test_percent_encoded_query_value_echoed_in_a_redirect_is_scrubbed(
    sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    """The proxy puts a query secret in percent-encoded; the upstream's redirect re-encodes it its own way.

    Before: only the raw value was scrubbed, so `Location` carried the key with `+` for its spaces.
    """
    key = keys["QUERY_KEY"]  # "q-secret/with space+plus&amp": slash, space, plus, ampersand
    with tls_client(sidecar, f"{HOST}:443") as c:
        resp = c.request("GET", f"/redirect?to=/echo%3Fk%3D{key.sealed}", {"Host": HOST})
        echoed = c.request("GET", f"/echo?k={key.sealed}", {"Host": HOST})
    assert resp.status == 302
    assert quote(key.value, safe="") in upstream.requests[0].raw_path
    location = resp.header("location") or ""
    assert key.sealed in location
    assert_clean(resp.raw_head + resp.body + echoed.raw_head + echoed.body, keys)
    for form in ("q-secret/with+space+plus&amp", "with space%2Bplus%26amp"):  # yarl's mixes
        assert form.encode() not in resp.raw_head + resp.body + echoed.raw_head + echoed.body


def escape_everywhere(head: bytes, body: bytes) -> bytes:
    """An upstream echoing the query value of its request target under several common escapings, one per line."""
    raw = head.split(b" ")[1].decode().split("k=", 1)[1]
    value = unquote(raw)
    js = json.dumps(value)[1:-1]
    forms = [
        raw,
        raw.lower(),  # as received; hex in lower case
        quote_plus(value),
        quote(value, safe="/"),
        quote(value, safe="/&+<>'\""),  # other encoders' choices
        js.replace("/", "\\/"),  # PHP's json_encode
        js.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e"),  # Go's encoding/json
        html.escape(value),
        value.replace(" ", "&#32;").replace("/", "&#x2F;"),  # HTML
    ]
    payload = "\n".join(forms).encode()
    return b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%b" % (
        len(payload),
        payload,
    )


def test_escaped_forms_of_a_key_are_scrubbed(scripted) -> None:
    """Before: only the raw bytes of a value were recognized in responses."""
    key = new_secret("QUERY_KEY", [HOST], value="a/b c+d&e<f>\"g'h", locations=["headers", "query"])
    up, sc = scripted(escape_everywhere, key)
    with tls_client(sc, f"{HOST}:443") as c:
        resp = c.request("GET", f"/q?k={key.sealed}", {"Host": HOST})
    assert resp.status == 400
    assert up.received and quote(key.value, safe="").encode() in up.received[0][0]
    assert resp.body.split(b"\n") == [key.sealed.encode()] * 9
    assert_clean(resp.raw_head + resp.body, [key])


@pytest.mark.parametrize("user", ["", "u", "uu", "user@example"])
def test_basic_credentials_echoed_back_are_scrubbed(
    user: str, sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    """The proxy builds base64(user:key) itself; an upstream echoing the header must not hand it out.

    Before: only the raw value was scrubbed, and base64 hides it at every alignment.
    """
    key = keys["API_KEY"]
    creds = base64.b64encode(f"{user}:{key.sealed}".encode()).decode()
    with tls_client(sidecar, f"{HOST}:443") as c:
        resp = c.request("GET", "/reflect?header=authorization", {"Host": HOST, "Authorization": f"Basic {creds}"})
    assert resp.status == 200
    sent = upstream.last.header("authorization") or ""
    assert base64.b64decode(sent.split()[1]) == f"{user}:{key.value}".encode()
    assert_clean(resp.raw_head + resp.body, keys)


def storing_upstream() -> Callable[[bytes, bytes], bytes]:
    """Stores what is POSTed; GET returns it, gzip-compressed when the request accepts gzip (as servers do)."""
    stored: list[bytes] = [b""]

    def respond(head: bytes, body: bytes) -> bytes:
        if head.startswith(b"POST"):
            if b"transfer-encoding: chunked" in head.lower():
                body = b"".join(body.split(b"\r\n")[1::2])  # dechunk (single-line chunks in these tests)
            stored[0] = body
        data, extra = stored[0], b""
        if b"gzip" in header_value(head, b"accept-encoding"):
            data, extra = gzip.compress(data), b"Content-Encoding: gzip\r\n"
        return b"HTTP/1.1 200 OK\r\n%bContent-Length: %d\r\n\r\n%b" % (extra, len(data), data)

    return respond


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_key_stored_by_the_upstream_cannot_come_back_compressed(framing: str, scripted) -> None:
    """Store the key upstream via body substitution, then fetch it with `Accept-Encoding: gzip`.

    Before: the proxy only asked for `identity` when it had substituted into headers, so a
    streamed (chunked) body substitution, or any later request without a token, came back
    gzip-compressed: unscrubbable.
    """
    key = new_secret("BODY_KEY", [HOST], locations=["body"])
    up, sc = scripted(storing_upstream(), key)
    note = b'{"note": "' + key.sealed.encode() + b'"}'
    with tls_client(sc, f"{HOST}:443") as c:
        if framing == "length":
            c.send(
                b"POST /notes HTTP/1.1\r\nHost: api.oshu.test\r\nAccept-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%b"
                % (len(note), note)
            )
        else:
            c.send(
                b"POST /notes HTTP/1.1\r\nHost: api.oshu.test\r\nAccept-Encoding: gzip\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%b\r\n0\r\n\r\n" % (len(note), note)
            )
        posted = c.response()
        fetched = c.request("GET", "/notes", {"Host": HOST, "Accept-Encoding": "gzip, br"})
    assert key.value.encode() in up.received[0][1]  # the key really was stored upstream
    for resp in (posted, fetched):
        assert resp.status == 200
        body = gzip.decompress(resp.body) if resp.header("content-encoding") == "gzip" else resp.body
        assert body == note
        assert_clean(resp.raw_head + body, [key])


def test_scrubber_finds_every_form_split_at_every_point() -> None:
    """Streaming: a recognized form split anywhere across two pieces is still replaced, and nothing else held."""
    from oshu_sidecar.scrub import Scrubber

    value, sealed = b"k3y/with space&more", b"SEALED_0123456789abcdefghijklmn"
    scrubber = Scrubber([(value, sealed, "K")])
    basic = base64.b64encode(b"user:" + value)
    forms = [
        value,
        quote(value, safe="").encode(),
        quote(value, safe="").lower().encode(),
        quote_plus(value).encode(),
        value.replace(b"/", b"\\/"),
        value.replace(b"&", b"&amp;"),
        value.replace(b"&", b"\\u0026"),
    ]
    for form in [*forms, basic]:
        text = b'data: {"echo": "' + form + b'"}\n\n'
        for cut in range(len(text) + 1):
            stream = scrubber.stream()
            out = stream.feed(text[:cut]) + stream.feed(text[cut:]) + stream.flush()
            assert value not in out and form not in out, (form, cut)
            assert stream.names == ["K"]
    # A tail that cannot grow into a form is never held back (SSE events go out at once).
    stream = scrubber.stream()
    assert stream.feed(b"data: k3y/with spa\n\n") == b"data: k3y/with spa\n\n"
    assert stream.feed(b"data: k3y%2Fwith%20") == b"data: "
    assert stream.feed(b"nothing\n\n") == b"k3y%2Fwith%20nothing\n\n"


def test_scrubbing_unreserved_values_compiles_nothing() -> None:
    """The common case (keys of letters, digits, -._~) stays on plain `in` scans."""
    from oshu_sidecar.scrub import Scrubber

    scrubber = Scrubber([(b"sk-ant-api03_abc.DEF~ghi", b"SEALED_0123456789abcdefghijklmn", "K")])
    assert scrubber.patterns == ()
    assert all(isinstance(n, bytes) for n in scrubber.needles)


# -- expiry and revocation ------------------------------------------------------------------------
def revoke(sc: SidecarProcess) -> None:
    sc.delete_session()
    sc.wait_for_log(lambda r: "revoked" in r.get("msg", ""), timeout=WAIT)


def test_streamed_body_substitution_stops_at_revocation(make_sidecar, upstream: Upstream) -> None:
    """Start a chunked upload while the session is live, keep it going after revocation.

    Before: the stream kept substituting the real key into every later chunk, forever
    (bodies have no timeout).
    """
    key = new_secret("BODY_KEY", [HOST], locations=["headers", "body"])
    sc = make_sidecar(new_session(key))
    with tls_client(sc, f"{HOST}:443") as c:
        c.send(b"POST /upload HTTP/1.1\r\nHost: api.oshu.test\r\nTransfer-Encoding: chunked\r\n\r\n")
        piece = b"k=" + key.sealed.encode() + b"\n"
        c.send(b"%x\r\n%b\r\n" % (len(piece), piece))
        assert upstream.wait_for(lambda u: "upload:first-chunk" in u.events, WAIT)
        revoke(sc)
        c.send(b"%x\r\n%b\r\n0\r\n\r\n" % (len(piece), piece))
        resp = c.response()
    assert resp.status == 403 and error_code(resp) == "session_revoked"
    assert all(r.body.count(key.value.encode()) <= 1 for r in upstream.requests)


def test_slow_buffered_body_is_checked_again_before_sending(make_sidecar, upstream: Upstream) -> None:
    """A body the proxy buffers (to substitute into it) can take long to arrive: the session is checked again.

    Before: head and body substitution were decided when the head arrived and sent with the
    body whenever it completed, after revocation included.
    """
    key = new_secret("BODY_KEY", [HOST], locations=["headers", "body"])
    sc = make_sidecar(new_session(key))
    body = b'{"k": "' + key.sealed.encode() + b'"}'
    with tls_client(sc, f"{HOST}:443") as c:
        c.send(
            b"POST /echo/slow HTTP/1.1\r\nHost: api.oshu.test\r\nx-api-key: %b\r\nContent-Length: %d\r\n\r\n%b"
            % (key.sealed.encode(), len(body), body[:5])
        )
        revoke(sc)
        c.send(body[5:])
        resp = c.response()
    assert resp.status == 403 and error_code(resp) == "session_revoked"
    assert upstream.requests == []


def test_expiry_boundary_is_inclusive() -> None:
    """At `expiresAt` exactly the session is expired; a microsecond before it is not."""
    key = new_secret("API_KEY", [HOST])
    session = new_session(key, expires_in=3600)
    policy = Policy(session)
    assert policy.expires_at is not None
    assert policy.inactive(now=policy.expires_at - 1e-6) is None
    refusal = policy.inactive(now=policy.expires_at)
    assert refusal is not None and refusal.code == "session_expired"
    assert key.value not in refusal.message


def test_malformed_session_file_then_deletion_still_revokes(make_sidecar, upstream: Upstream) -> None:
    key = new_secret("API_KEY", [HOST])
    sc = make_sidecar(new_session(key))
    sc.write_session(b'{"session": "agents/test", "secrets": [')  # truncated JSON
    sc.wait_for_log(lambda r: "rejected" in r.get("msg", ""), timeout=WAIT)
    with tls_client(sc, f"{HOST}:443") as c:  # the last good session is still served
        assert c.request("GET", "/echo/kept", {"Host": HOST, "x-api-key": key.sealed}).status == 200
    assert upstream.last.header("x-api-key") == key.value
    sc.write_session(
        b'{"session": "agents/test", "secrets": [{"name": "K", "sealed": "x", "value": "%s"}]}' % key.value.encode()
    )  # invalid, and carrying a value: the error must not echo it
    sc.wait_for_log(lambda r: "sealed must look like" in r.get("error", ""), timeout=WAIT)
    revoke(sc)
    with tls_client(sc, f"{HOST}:443") as c:
        resp = c.request("GET", "/echo/revoked", {"Host": HOST, "x-api-key": key.sealed})
    assert resp.status == 403 and error_code(resp) == "session_revoked"
    assert upstream.last.path == "/echo/kept"
    assert sc.metric("oshu_session_revoked") == 1


# -- exhaustion: metrics cardinality, connections, slow clients -----------------------------------
def test_wildcard_hosts_do_not_mint_a_metric_series_each(make_sidecar, upstream: Upstream) -> None:
    """Made-up subdomains under a wildcard are counted under the pattern.

    Before: each subdomain got its own `host` label, so a loop over random names grew the
    metrics without bound (memory, and every scrape).
    """
    key = new_secret("WILD_KEY", ["*.wild.oshu.test"])
    sc = make_sidecar(
        new_session(key, egress=["*.egress.oshu.test:80"]),
        hosts=[],
        connect_to=[f":80:127.0.0.1:{upstream.http_port}", f"::127.0.0.1:{upstream.port}"],
    )
    for i in range(12):
        host = f"n{i}.wild.oshu.test"
        with tls_client(sc, f"{host}:443") as c:
            assert c.request("GET", "/echo/w", {"Host": host, "x-api-key": key.sealed}).status == 200
        with RawClient(sc.listen, timeout=TIMEOUT) as c:
            assert c.request("GET", f"http://n{i}.egress.oshu.test/echo/e", {}).status == 200
    text = sc.metrics_text()
    assert 'host="n0.wild.oshu.test"' not in text and 'host="n0.egress.oshu.test:80"' not in text
    assert sc.metric("oshu_requests_total", host="*.wild.oshu.test", outcome="forwarded") == 12
    assert sc.metric("oshu_requests_total", host="*.egress.oshu.test:80", outcome="forwarded") == 12
    assert sc.metric("oshu_substitutions_total", secret="WILD_KEY", host="*.wild.oshu.test") == 12


def test_a_rotated_out_key_is_still_scrubbed(make_sidecar, upstream: Upstream) -> None:
    """The key is rotated (new value, same name); an upstream that kept the old one echoes it later.

    Before: a reload forgot old values, so responses echoing them passed through.
    """
    old = new_secret("API_KEY", [HOST])
    new = SecretBinding(name="API_KEY", sealed=old.sealed, value="sk-rotated-" + "n" * 24, hosts=old.hosts)
    sc = make_sidecar(new_session(old), values=[old.value, new.value])
    sc.write_session(new_session(new))
    sc.wait_for_log(lambda r: r.get("msg") == "session reloaded", timeout=WAIT)
    with tls_client(sc, f"{HOST}:443") as c:  # the upstream echoes a header: here, the old key itself
        resp = c.request("GET", "/reflect?header=x-stored", {"Host": HOST, "x-stored": old.value})
        fresh = c.request("GET", "/reflect", {"Host": HOST, "x-api-key": old.sealed})
    assert upstream.requests[0].header("x-stored") == old.value
    assert_clean(resp.raw_head + resp.body, [old, new])
    assert upstream.last.header("x-api-key") == new.value
    assert_clean(fresh.raw_head + fresh.body, [old, new])


def run_with_fd_limit(directory: Path, soft: int) -> str:
    """A python wrapper that starts the sidecar with a low soft limit on open files (as many containers do)."""
    import sys

    wrapper = directory / "python-lowfd"
    wrapper.write_text(f'#!/bin/sh\nulimit -S -n {soft}\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def test_many_idle_connections_do_not_lock_others_out(make_sidecar, upstream: Upstream, tmp_path: Path) -> None:
    """Hold more half-open connections than a container's default soft file limit, then ask for service.

    Before: with a soft limit of 1024 (or, here, 256), the sidecar ran out of descriptors and
    stopped accepting until the agent let go; it now raises its soft limit to the hard one.
    """
    key = new_secret("API_KEY", [HOST])
    sc = make_sidecar(new_session(key), python=run_with_fd_limit(tmp_path, 256))
    held: list[socket.socket] = []
    try:
        for _ in range(300):
            s = socket.create_connection(sc.listen, timeout=TIMEOUT)
            s.sendall(b"GET http://api.oshu.test/ HTTP/1.1\r\nHost: api")  # ...and never finishes
            held.append(s)
        for _ in range(20):
            with tls_client(sc, f"{HOST}:443") as c:  # intercepted, idle: also held
                assert c.request("GET", "/echo/held", {"Host": HOST}).status == 200
        still_serving(sc, upstream, key)
    finally:
        for s in held:
            s.close()
    assert sc.admin_get("/readyz")[0] == 200
    limits = Path(f"/proc/{sc.proc.pid}/limits").read_text()
    soft, hard = next(ln.split()[3:5] for ln in limits.splitlines() if ln.startswith("Max open files"))
    assert soft == hard


def test_admin_endpoint_drops_clients_that_never_finish(make_sidecar, upstream: Upstream) -> None:
    """The admin port is reachable from the agent's container: half-sent heads must not pile up forever.

    Before: an admin connection with a partial head stayed open indefinitely.
    """
    key = new_secret("API_KEY", [HOST])
    sc = make_sidecar(new_session(key), extra_args=["--header-timeout", "1"])
    with socket.create_connection(sc.admin, timeout=TIMEOUT) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x")
        data = b""
        for _ in range(100):
            piece = s.recv(4096)
            if not piece:
                break
            data += piece
    assert data == b"" or b" 408 " in data.split(b"\r\n")[0]
    assert sc.admin_get("/readyz")[0] == 200


def test_slow_upload_does_not_hold_up_others(
    sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    """A body trickling in (slowloris on bodies) ties up its own exchange only."""
    key = keys["API_KEY"]
    with tls_client(sidecar, f"{HOST}:443") as slow:
        slow.send(
            b"POST /upload HTTP/1.1\r\nHost: api.oshu.test\r\nx-api-key: %b\r\nContent-Length: 1000\r\n\r\nab"
            % key.sealed.encode()
        )
        for _ in range(3):
            still_serving(sidecar, upstream, key)
            slow.send(b"c")
        slow.send(b"d" * 995)
        assert slow.response().status == 200
    assert upstream.last.path == "/upload" and len(upstream.last.body) == 1000


@pytest.mark.parametrize("shape", ["one long line", "many fields"])
def test_oversized_heads_inside_the_tunnel_get_431_and_memory_stays_flat(
    shape: str, sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    def rss() -> int:
        assert sidecar.proc is not None
        status = Path(f"/proc/{sidecar.proc.pid}/status").read_text()
        return int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmRSS:")))

    fields = (b"X-Long: " + b"a" * 200_000 + b"\r\n") if shape == "one long line" else b"X-F: v\r\n" * 20_000
    before = rss()
    for _ in range(20):
        with tls_client(sidecar, f"{HOST}:443") as c:
            c.send(b"GET /echo HTTP/1.1\r\nHost: api.oshu.test\r\nx-api-key: %b\r\n" % keys["API_KEY"].sealed.encode())
            with contextlib.suppress(ConnectionError, ssl.SSLError):  # the proxy may close while we still write
                c.send(fields + b"\r\n")
            resp = c.response()
            assert resp.status == 431 and error_code(resp) == "headers_too_large"
    assert rss() - before < 32 * 1024  # KiB: twenty refused 200 KB heads leave nothing behind
    assert upstream.requests == []
    still_serving(sidecar, upstream, keys["API_KEY"])


# -- sealed tokens where they must not be substituted ---------------------------------------------
def test_tokens_in_disguise_are_never_substituted(
    sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    """Only the exact token, in a header value (or opted-in place) of a secret allowed here, is replaced."""
    key, other, wild = keys["API_KEY"], keys["OTHER_KEY"], keys["WILD_KEY"]
    t = key.sealed
    half = len(t) // 2
    headers = [
        ("Host", HOST),
        ("x-lower", t.lower()),
        ("x-upper", t.upper()),
        ("x-urlenc", quote(t, safe="").replace("_", "%5F")),
        ("x-split-a", t[:half]),
        ("x-split-b", t[half:]),
        ("x-other-secret", other.sealed),  # allowed only for other.oshu.test
        ("x-wild-secret", wild.sealed),  # allowed only for *.wild.oshu.test
        ("Authorization", "Basic " + base64.b64encode(f"u:{t}".encode()).decode().rstrip("=")),  # no padding
        ("x-b64url", base64.urlsafe_b64encode(f"u:{t}?".encode()).decode()),
        (t, "token-as-a-field-name"),
    ]
    body = f"k={t}".encode()
    with tls_client(sidecar, f"{HOST}:443") as c:
        resp = c.request("POST", f"/echo/{t}?q={t}", headers, body)  # headers-only secret: path, query, body untouched
    assert resp.status == 200
    got = upstream.last
    for name, value in headers[1:]:
        assert got.header(name) == value, name
    assert t in got.raw_path and got.body == body
    assert key.value not in json.dumps(got.headers) + got.raw_path and key.value.encode() not in got.body
    assert_clean(resp.raw_head + resp.body, keys)


@pytest.mark.parametrize("auth", ["basic {b}", "BASIC {b}", "Basic   {b}", "Basic {b}\t"])
def test_basic_credentials_variants_are_substituted(
    auth: str, sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    key = keys["API_KEY"]
    b = base64.b64encode(f"user:{key.sealed}".encode()).decode()
    with tls_client(sidecar, f"{HOST}:443") as c:
        resp = c.request("GET", "/echo/basic", {"Host": HOST, "Authorization": auth.format(b=b)})
    assert resp.status == 200
    sent = (upstream.last.header("authorization") or "").split()[-1]
    assert base64.b64decode(sent) == f"user:{key.value}".encode()
    assert_clean(resp.raw_head + resp.body, keys)


def test_token_in_a_cookie_is_a_header_value_like_any_other(
    sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    key = keys["API_KEY"]
    with tls_client(sidecar, f"{HOST}:443") as c:
        resp = c.request("GET", "/reflect?header=cookie", {"Host": HOST, "Cookie": f"a=1; k={key.sealed}; b=2"})
    assert upstream.last.header("cookie") == f"a=1; k={key.value}; b=2"
    assert resp.header("x-echo") == f"a=1; k={key.sealed}; b=2"  # and the echo comes back sealed
    assert_clean(resp.raw_head + resp.body, keys)


def test_websocket_tricks(sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]) -> None:
    """A WebSocket handshake over plain http:// with a token is refused; to a host no secret names it is blind."""
    key = keys["API_KEY"]
    ws = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    with RawClient(sidecar.listen, timeout=TIMEOUT) as c:
        resp = c.request("GET", f"http://{HOST}/ws", {"Host": HOST, "x-api-key": key.sealed, **ws})
    assert resp.status == 403 and error_code(resp) == "plaintext_secret"
    with RawClient(sidecar.listen, timeout=TIMEOUT) as c:  # a blind tunnel: TLS with the real upstream, no proxy CA
        assert c.connect(f"{TUNNEL}:443").status == 200
        c.start_tls(TUNNEL, upstream.ca_file)
        c.send(
            b"GET /ws HTTP/1.1\r\nHost: tunnel.oshu.test\r\nx-api-key: %b\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            % key.sealed.encode()
        )
        assert c.response().status == 101
    assert upstream.last.path == "/ws" and upstream.last.header("x-api-key") == key.sealed


def test_error_bodies_never_echo_what_was_substituted(
    sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    """Every refusal the proxy writes after substitution could have happened is free of values."""
    key, body_key = keys["API_KEY"], keys["BODY_KEY"]
    seen = b""
    with tls_client(sidecar, f"{HOST}:443") as c:  # 421 after the token was seen
        seen += c.request("GET", "/echo", {"Host": OTHER, "x-api-key": key.sealed}).body
    with tls_client(sidecar, f"{HOST}:443") as c:  # upstream gone mid-request: 502
        r = c.request("GET", "/status/599", {"Host": HOST, "x-api-key": key.sealed})
        seen += r.raw_head + r.body
    with tls_client(sidecar, f"{HOST}:443") as c:  # body substitution then a bad chunk
        c.send(
            b"POST /upload HTTP/1.1\r\nHost: api.oshu.test\r\nx-api-key: %b\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"%x\r\n%b\r\nzz\r\n" % (key.sealed.encode(), len(body_key.sealed), body_key.sealed.encode())
        )
        seen += read_until_close(c)
    assert_clean(seen, keys)
    assert_clean(sidecar.log_text() + sidecar.metrics_text(), keys)


@pytest.mark.parametrize("encoding", ["gzip", "br", "x-made-up"])
@pytest.mark.parametrize("size", [100, 2 << 20])
def test_a_content_encoding_label_does_not_switch_scrubbing_off(encoding: str, size: int, scripted) -> None:
    """An upstream that labels a plain body as compressed (object stores serve back whatever
    `Content-Encoding` the uploader set), or a gzip stream of stored blocks, still carries raw bytes.

    Before: any `Content-Encoding` other than identity turned scrubbing off.
    """
    key = new_secret("API_KEY", [HOST])

    def respond(head: bytes, body: bytes) -> bytes:
        v = header_value(head, b"x-api-key")
        payload = (b"." * size + b" key=" + v + b"\n") if size > 1000 else b"key=" + v + b"\n"
        payload += gzip.compress(v, compresslevel=0)  # deflate's stored blocks keep the bytes as they are
        return b"HTTP/1.1 200 OK\r\nContent-Encoding: %b\r\nContent-Length: %d\r\n\r\n%b" % (
            encoding.encode(),
            len(payload),
            payload,
        )

    _up, sc = scripted(respond, key)
    with tls_client(sc, f"{HOST}:443") as c:
        resp = c.request("GET", "/object", {"Host": HOST, "x-api-key": key.sealed})
    assert resp.status == 200 and resp.header("content-encoding") == encoding
    assert key.sealed.encode() in resp.body
    assert_clean(resp.raw_head + resp.body, [key])


def test_scrubbing_cannot_be_made_to_blow_up() -> None:
    """A value of repeated escapable characters against crafted data: no exponential backtracking.

    Before (first version of escaped-form scrubbing): `\\\\` vs `\\` choices multiplied per
    character, and a 22-backslash value took seconds on 45 bytes.
    """
    from oshu_sidecar.scrub import Scrubber

    value = b"\\" * 40 + b"x"
    scrubber = Scrubber([(value, b"SEALED_0123456789abcdefghijklmn", "K")])
    crafted = b"\\" * 80 + b"y"
    for _ in range(50):  # each call would take longer than the test timeout with backtracking
        assert scrubber.scrub(crafted, []) == crafted
    stream = scrubber.stream()
    assert stream.feed(crafted[:-1]) + stream.feed(b"y") + stream.flush() == crafted
    assert scrubber.scrub(b"<" + value + b">", []) == b"<SEALED_0123456789abcdefghijklmn>"
    assert scrubber.scrub(b"<" + value.replace(b"\\", b"\\\\") + b">", []) == b"<SEALED_0123456789abcdefghijklmn>"


def test_websocket_handshake_to_a_plain_endpoint_then_a_pipelined_request(
    sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    """A handshake the upstream does not accept leaves the connection parsed request by request."""
    key, other = keys["API_KEY"], keys["OTHER_KEY"]
    handshake = (
        b"GET /echo/not-ws HTTP/1.1\r\nHost: api.oshu.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nx-api-key: %b\r\n\r\n"
        % key.sealed.encode()
    )
    smuggled = b"GET /echo/second HTTP/1.1\r\nHost: other.oshu.test\r\nx-api-key: %b\r\n\r\n" % other.sealed.encode()
    with tls_client(sidecar, f"{HOST}:443") as c:
        c.send(handshake + smuggled)
        first = c.response()
        assert first.status == 200
        try:
            second = c.response()
            assert second.status == 421
        except ConnectionError:
            pass  # or the proxy closed after a refused upgrade: either way nothing was forwarded
    assert [r.path for r in upstream.requests] == ["/echo/not-ws"]
    assert_clean(first.raw_head + first.body, keys)


def test_upstream_connection_option_cannot_strip_the_response_length(scripted) -> None:
    """The response side of `Connection: content-length`: the client must still see the body's length."""
    key = new_secret("API_KEY", [HOST])
    _up, sc = scripted(
        lambda head, body: (
            b"HTTP/1.1 200 OK\r\nConnection: content-length, x-drop\r\nX-Drop: 1\r\nContent-Length: 5\r\n\r\nhello"
        ),
        key,
    )
    with tls_client(sc, f"{HOST}:443") as c:
        first = c.request("GET", "/one", {"Host": HOST})
        second = c.request("GET", "/two", {"Host": HOST})  # the connection is still in step
    for resp in (first, second):
        assert resp.status == 200 and resp.body == b"hello"
        assert resp.header("content-length") == "5" and resp.header("x-drop") is None
