"""The request path against smuggling through upgrades, and policy changes under a running upload.

Issue 12, items 4 and 10: each test reproduces the reported case through the real proxy.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from oshu_contract.hosts import HostPattern
from oshu_contract.locations import Location
from oshu_contract.session import SecretBinding
from oshu_testkit.rawclient import RawClient
from oshu_testkit.sessions import new_secret, new_session
from oshu_testkit.sidecar_process import SidecarProcess
from oshu_testkit.upstreams import HOST, Upstream

TIMEOUT = 10.0
WS = (
    b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
)


def error_code(body: bytes) -> str:
    return json.loads(body)["error"]["code"]


def tls_client(sc: SidecarProcess, host: str = HOST) -> RawClient:
    c = RawClient(sc.listen, timeout=TIMEOUT)
    assert c.connect(f"{host}:443").status == 200
    c.start_tls(host, sc.ca_cert_file)
    return c


def smuggled(body_key: SecretBinding) -> bytes:
    """The second request hidden in the body: another host, a sealed token for body substitution."""
    return b"GET /echo/x/smuggled HTTP/1.1\r\nHost: evil.test\r\nX-Api-Key: %b\r\n\r\n" % body_key.sealed.encode()


def upgrade_with_body(target: bytes, framing: str, inner: bytes) -> bytes:
    head = b"GET %b HTTP/1.1\r\nHost: api.oshu.test\r\n%b" % (target, WS)
    if framing == "length":
        return head + b"Content-Length: %d\r\n\r\n%b" % (len(inner), inner)
    return head + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%b\r\n0\r\n\r\n" % (len(inner), inner)


# -- item 4: an Upgrade request has no body ------------------------------------------------------
@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_upgrade_request_with_a_body_is_refused_inside_the_tunnel(
    framing: str, sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    """llhttp reads no body after an Upgrade request: the body would be a second, unchecked request.

    Before: the proxy read the bytes as a body, substituted the real key into them and forwarded
    them; an llhttp upstream parsed them as `GET /echo/x/smuggled` for evil.test with the key.
    """
    body_key = keys["BODY_KEY"]
    with tls_client(sidecar) as c:
        c.send(upgrade_with_body(b"/echo/x", framing, smuggled(body_key)))
        resp = c.response()
        assert resp.status == 400 and error_code(resp.body) == "bad_request"
        assert c.closed_by_peer()
    assert upstream.requests == []
    with tls_client(sidecar) as c:  # the proxy keeps serving
        assert c.request("GET", "/echo/after", {"Host": HOST}).status == 200


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_upgrade_request_with_a_body_is_refused_on_plain_http(
    framing: str, sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    inner = b"GET /echo/x/smuggled HTTP/1.1\r\nHost: evil.test\r\n\r\n"
    with RawClient(sidecar.listen, timeout=TIMEOUT) as c:
        c.send(upgrade_with_body(b"http://api.oshu.test/echo/x", framing, inner))
        resp = c.response()
        assert resp.status == 400 and error_code(resp.body) == "bad_request"
    assert upstream.requests == []


def test_upgrade_request_with_an_empty_body_is_still_a_handshake(
    sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    """`Content-Length: 0` is no body (llhttp agrees): the handshake goes through."""
    with tls_client(sidecar) as c:
        c.send(b"GET /ws HTTP/1.1\r\nHost: api.oshu.test\r\n%bContent-Length: 0\r\n\r\n" % WS)
        assert c.response().status == 101
    assert upstream.last.path == "/ws"


def test_upstream_connection_is_not_reused_after_a_refused_handshake(
    make_sidecar,
    upstream: Upstream,
) -> None:
    """After an upgrade request an llhttp upstream reads the rest of its connection as the new protocol.

    An upstream that answers a handshake with a plain response has still seen an upgrade request:
    its connection must not carry the next request (before: it went back to the pool).
    """
    sc = make_sidecar(new_session(new_secret("API_KEY", [HOST])))
    with tls_client(sc) as c:
        c.send(b"GET /echo/not-ws HTTP/1.1\r\nHost: api.oshu.test\r\n%b\r\n" % WS)
        assert c.response().status == 200
    with tls_client(sc) as c:
        assert c.request("GET", "/echo/next", {"Host": HOST}).status == 200
    assert sc.metric("oshu_connections_opened_total", side="upstream") == 2


# -- item 10: a policy change reaches streams in flight --------------------------------------------
def test_removing_the_host_from_a_secret_stops_an_upload_in_progress(
    make_sidecar,
    upstream: Upstream,
) -> None:
    """A chunked upload substituting a body secret; a reload takes the host away from the secret.

    Before: real keys kept arriving for the rest of the upload (only revocation and expiry were
    checked per piece).
    """
    key = new_secret("BODY_KEY", [HOST], locations=["headers", "body"])
    sc = make_sidecar(new_session(key))
    with tls_client(sc) as c:
        c.send(b"POST /upload HTTP/1.1\r\nHost: api.oshu.test\r\nTransfer-Encoding: chunked\r\n\r\n")
        piece = b"k=" + key.sealed.encode() + b"\n"
        c.send(b"%x\r\n%b\r\n" % (len(piece), piece))
        assert upstream.wait_for(lambda u: "upload:first-chunk" in u.events, TIMEOUT)
        moved = dataclasses.replace(key, hosts=(HostPattern.parse("other.oshu.test"),))  # same token, value
        sc.write_session(new_session(moved))
        sc.wait_for_log(lambda r: r.get("msg") == "session reloaded", timeout=TIMEOUT)
        c.send(b"%x\r\n%b\r\n0\r\n\r\n" % (len(piece), piece))
        resp = c.response()
    assert resp.status == 403 and error_code(resp.body) == "session_changed"
    assert all(r.body.count(key.value.encode()) <= 1 for r in upstream.requests)


def test_removing_body_from_the_locations_stops_an_upload_in_progress(
    make_sidecar,
    upstream: Upstream,
) -> None:
    key = new_secret("BODY_KEY", [HOST], locations=["headers", "body"])
    sc = make_sidecar(new_session(key))
    with tls_client(sc) as c:
        c.send(b"POST /upload HTTP/1.1\r\nHost: api.oshu.test\r\nTransfer-Encoding: chunked\r\n\r\n")
        piece = b"k=" + key.sealed.encode() + b"\n"
        c.send(b"%x\r\n%b\r\n" % (len(piece), piece))
        assert upstream.wait_for(lambda u: "upload:first-chunk" in u.events, TIMEOUT)
        sc.write_session(new_session(dataclasses.replace(key, locations=frozenset({Location.HEADERS}))))
        sc.wait_for_log(lambda r: r.get("msg") == "session reloaded", timeout=TIMEOUT)
        c.send(b"%x\r\n%b\r\n0\r\n\r\n" % (len(piece), piece))
        resp = c.response()
    assert resp.status == 403 and error_code(resp.body) == "session_changed"
    assert all(r.body.count(key.value.encode()) <= 1 for r in upstream.requests)


def test_a_reload_that_keeps_the_secret_lets_the_upload_finish(
    make_sidecar,
    upstream: Upstream,
) -> None:
    """Only a change that takes the substitution away stops a stream: adding a secret does not."""
    key = new_secret("BODY_KEY", [HOST], locations=["headers", "body"])
    sc = make_sidecar(new_session(key))
    with tls_client(sc) as c:
        c.send(b"POST /upload HTTP/1.1\r\nHost: api.oshu.test\r\nTransfer-Encoding: chunked\r\n\r\n")
        piece = b"k=" + key.sealed.encode() + b"\n"
        c.send(b"%x\r\n%b\r\n" % (len(piece), piece))
        assert upstream.wait_for(lambda u: "upload:first-chunk" in u.events, TIMEOUT)
        sc.write_session(new_session(key, new_secret("OTHER_KEY", ["other.oshu.test"])))
        sc.wait_for_log(lambda r: r.get("msg") == "session reloaded", timeout=TIMEOUT)
        c.send(b"%x\r\n%b\r\n0\r\n\r\n" % (len(piece), piece))
        resp = c.response()
    assert resp.status == 200
    assert upstream.last.body.count(key.value.encode()) == 2


def test_removing_the_host_stops_a_buffered_request_before_it_is_sent(
    make_sidecar,
    upstream: Upstream,
) -> None:
    """A body buffered for substitution takes a while to arrive; the reload lands in between.

    The head's token was substituted when it arrived: the request is checked again against the
    reloaded session right before it is sent, and refused (nothing reaches the upstream).
    """
    key = new_secret("BODY_KEY", [HOST], locations=["headers", "body"])
    sc = make_sidecar(new_session(key))
    body = b'{"k": "' + key.sealed.encode() + b'"}'
    with tls_client(sc) as c:
        c.send(
            b"POST /echo/slow HTTP/1.1\r\nHost: api.oshu.test\r\nx-api-key: %b\r\nContent-Length: %d\r\n\r\n%b"
            % (key.sealed.encode(), len(body), body[:5])
        )
        moved = dataclasses.replace(key, hosts=(HostPattern.parse("other.oshu.test"),))
        sc.write_session(new_session(moved))
        sc.wait_for_log(lambda r: r.get("msg") == "session reloaded", timeout=TIMEOUT)
        c.send(body[5:])
        resp = c.response()
    assert resp.status == 403 and error_code(resp.body) == "session_changed"
    assert upstream.requests == []
