"""The proxy's security decisions, table-driven and without sockets (decide.py, policy.withdrawn).

Each row is a request head on a connection (plain proxy port, or an intercepted CONNECT
target with the SNI check's outcome) under a session, and what `decide()` must answer:
a refusal code (and whether the connection closes), or where the request goes and what
the upstream head looks like.
"""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import pytest

from oshu_contract.hosts import HostPattern
from oshu_contract.locations import Location
from oshu_sidecar.decide import Facts, decide, decide_connect, parse_authority, sni_matches
from oshu_sidecar.errors import CODES, ProxyError
from oshu_sidecar.http1 import edit_head, parse_request_head
from oshu_sidecar.policy import Policy, withdrawn
from oshu_testkit.sessions import new_secret, new_session

API = new_secret("API_KEY", ["api.test"])
QUERY = new_secret("QUERY_KEY", ["api.test"], value="q v/&", locations=["headers", "query"])
BODY = new_secret("BODY_KEY", ["api.test"], locations=["headers", "body"])
OTHER = new_secret("OTHER_KEY", ["other.test"])
LIVE = Policy(
    new_session(
        API, QUERY, BODY, OTHER, egress=["ok.test", "ok.test:8080", "api.test:80", "api.test:8443", "127.0.0.1"]
    )
)
REVOKED = Policy(new_session(API, QUERY, BODY, OTHER), revoked_reason="session agents/test has been revoked")
EXPIRED = Policy(new_session(API, QUERY, BODY, OTHER, expires_in=-10))

TUNNEL = Facts(True, "api.test", 443, True)
NO_SNI = Facts(True, "api.test", 443, False)
PLAIN = Facts(False)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def head(line: str, *fields: str) -> bytes:
    return (line + "\r\n" + "".join(f + "\r\n" for f in fields) + "\r\n").encode()


# (head, facts, policy) -> refusal code, whether the refusal closes the connection
REFUSALS: dict[str, tuple[bytes, Facts, Policy, str, bool]] = {
    "Host names another host": (head("GET / HTTP/1.1", "Host: other.test"), TUNNEL, LIVE, "host_mismatch", False),
    "Host with another port": (head("GET / HTTP/1.1", "Host: api.test:8443"), TUNNEL, LIVE, "host_mismatch", False),
    "no Host": (head("GET / HTTP/1.1"), TUNNEL, LIVE, "bad_request", False),
    "SNI disagreed": (head("GET / HTTP/1.1", "Host: api.test"), NO_SNI, LIVE, "host_mismatch", False),
    "absolute URL for another host": (
        head("GET https://other.test/ HTTP/1.1", "Host: api.test"),
        TUNNEL,
        LIVE,
        "host_mismatch",
        False,
    ),
    "http:// URL inside a tunnel": (
        head("GET http://api.test/ HTTP/1.1", "Host: api.test"),
        TUNNEL,
        LIVE,
        "bad_request",
        False,
    ),
    "CONNECT inside a tunnel": (
        head("CONNECT /x HTTP/1.1", "Host: api.test"),
        TUNNEL,
        LIVE,
        "bad_request",
        True,
    ),
    "user info in Host": (head("GET / HTTP/1.1", "Host: u@api.test"), TUNNEL, LIVE, "bad_request", False),
    "token with a revoked session": (
        head("GET / HTTP/1.1", "Host: api.test", f"x-api-key: {API.sealed}"),
        TUNNEL,
        REVOKED,
        "session_revoked",
        False,
    ),
    "token with an expired session": (
        head("GET / HTTP/1.1", "Host: api.test", f"x-api-key: {API.sealed}"),
        TUNNEL,
        EXPIRED,
        "session_expired",
        False,
    ),
    "token in Basic credentials, revoked": (
        head("GET / HTTP/1.1", "Host: api.test", "Authorization: Basic " + b64(f"u:{API.sealed}")),
        TUNNEL,
        REVOKED,
        "session_revoked",
        False,
    ),
    "token over plain http": (
        head("GET http://api.test/ HTTP/1.1", f"x-api-key: {API.sealed}"),
        PLAIN,
        LIVE,
        "plaintext_secret",
        False,
    ),
    "token in the URL over plain http": (
        head(f"GET http://api.test/?k={QUERY.sealed} HTTP/1.1"),
        PLAIN,
        LIVE,
        "plaintext_secret",
        False,
    ),
    "plain request outside the egress list": (
        head("GET http://evil.test/ HTTP/1.1"),
        PLAIN,
        LIVE,
        "egress_denied",
        False,
    ),
    "origin-form to the proxy port": (
        head("GET / HTTP/1.1", "Host: api.test"),
        PLAIN,
        LIVE,
        "not_a_proxy_request",
        True,
    ),
    "bad host in a plain URL": (head("GET http://bad_host!/ HTTP/1.1"), PLAIN, LIVE, "bad_request", True),
    "refusal with a body closes": (
        head("POST / HTTP/1.1", "Host: other.test", "Content-Length: 3"),
        TUNNEL,
        LIVE,
        "host_mismatch",
        False,  # decide() itself does not close; refusal_closes() does (framing)
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals(case: str) -> None:
    raw, facts, policy, code, close = REFUSALS[case]
    d = decide(parse_request_head(raw), policy, facts)
    assert d.refusal is not None, case
    assert d.refusal.code == code and d.refusal.status == CODES[code]
    assert d.close == close
    for s in (API, QUERY, BODY, OTHER):
        assert s.value not in d.refusal.message


# head, facts -> (host, port, the upstream head, secrets substituted, body substitution on)
PLANS: dict[str, tuple[bytes, Facts, Policy, dict[str, Any]]] = {
    "header token substituted": (
        head("GET /v1 HTTP/1.1", "Host: api.test", f"x-api-key: {API.sealed}", "Accept-Encoding: gzip"),
        TUNNEL,
        LIVE,
        {
            "upstream": head("GET /v1 HTTP/1.1", "Host: api.test", f"x-api-key: {API.value}")[:-2]
            + b"Accept-Encoding: identity\r\n\r\n",
            "secrets": ["API_KEY"],
        },
    ),
    "token of a secret not allowed here stays sealed": (
        head("GET / HTTP/1.1", "Host: api.test", f"x-api-key: {OTHER.sealed}"),
        TUNNEL,
        LIVE,
        {"secrets": [], "contains": OTHER.sealed.encode()},
    ),
    "query token only for query secrets": (
        head(f"GET /?a={QUERY.sealed}&b={API.sealed} HTTP/1.1", "Host: api.test"),
        TUNNEL,
        LIVE,
        {"secrets": ["QUERY_KEY"], "line": f"GET /?a=q%20v%2F%26&b={API.sealed} HTTP/1.1".encode()},
    ),
    "absolute-form in a tunnel goes origin-form": (
        head("GET https://api.test/x?y=1 HTTP/1.1", "Host: api.test"),
        TUNNEL,
        LIVE,
        {"line": b"GET /x?y=1 HTTP/1.1", "secrets": []},
    ),
    "plain request: Host from the URL, hop-by-hop dropped": (
        head("GET http://ok.test:8080/p HTTP/1.0", "Host: spoofed.test", "Proxy-Authorization: x", "Keep-Alive: 5"),
        PLAIN,
        LIVE,
        {"host": ("ok.test", 8080), "upstream": head("GET /p HTTP/1.1", "Host: ok.test:8080"), "secrets": []},
    ),
    "body substitution planned on a live session": (
        head("POST / HTTP/1.1", "Host: api.test", "Content-Length: 3"),
        TUNNEL,
        LIVE,
        {"body_subs": ["BODY_KEY"], "secrets": []},
    ),
    "no body substitution once revoked": (
        head("POST / HTTP/1.1", "Host: api.test", "Content-Length: 3"),
        TUNNEL,
        REVOKED,
        {"body_subs": [], "inactive": "session_revoked"},
    ),
    "no body substitution over plain http": (
        head("POST http://api.test/ HTTP/1.1", "Content-Length: 3"),
        PLAIN,
        LIVE,
        {"body_subs": []},
    ),
    "websocket handshake keeps its upgrade": (
        head("GET /ws HTTP/1.1", "Host: api.test", "Connection: Upgrade", "Upgrade: websocket"),
        TUNNEL,
        LIVE,
        {"contains": b"Connection: Upgrade\r\nUpgrade: websocket\r\n"},
    ),
    "Connection-named field dropped": (
        head("GET / HTTP/1.1", "Host: api.test", "Connection: x-a", "X-A: 1", "X-B: 2"),
        TUNNEL,
        LIVE,
        {"absent": b"X-A:", "contains": b"X-B: 2"},
    ),
    "no SNI for an IP target": (
        head("GET / HTTP/1.1", "Host: 127.0.0.1"),
        Facts(True, "127.0.0.1", 443, sni_matches(None, "127.0.0.1")),
        LIVE,
        {"host": ("127.0.0.1", 443)},
    ),
}


@pytest.mark.parametrize("case", sorted(PLANS))
def test_plans(case: str) -> None:
    raw, facts, policy, want = PLANS[case]
    req = parse_request_head(raw)
    d = decide(req, policy, facts)
    assert d.refusal is None, d.refusal and d.refusal.message
    upstream = edit_head(req.raw, d.edits, d.extra + d.extra_tail)
    if "upstream" in want:
        assert upstream == want["upstream"]
    if "line" in want:
        assert upstream.split(b"\r\n", 1)[0] == want["line"]
    if "contains" in want:
        assert want["contains"] in upstream
    if "absent" in want:
        assert want["absent"] not in upstream
    if "host" in want:
        assert (d.host, d.port) == want["host"]
    if "secrets" in want:
        assert d.secrets == want["secrets"]
    if "body_subs" in want:
        assert [s.name for s in d.body_subs] == want["body_subs"]
    if "inactive" in want:
        assert d.inactive is not None and d.inactive.code == want["inactive"]
    assert b"Proxy-" not in upstream and b"Keep-Alive" not in upstream


CONNECTS: dict[str, tuple[bytes, str | None, bool | None]] = {
    # target -> refusal code (None: allowed), intercepted
    "secret host": (b"api.test:443", None, True),
    "secret host, other port": (b"api.test:8443", None, False),
    "egress host": (b"ok.test:443", None, False),
    "outside egress": (b"evil.test:443", "egress_denied", None),
    "no port": (b"api.test", "bad_request", None),
    "user info": (b"u@api.test:443", "bad_request", None),
    "bad name": (b"bad_host!:443", "bad_request", None),
}


@pytest.mark.parametrize("case", sorted(CONNECTS))
def test_connect_decisions(case: str) -> None:
    target, code, intercept = CONNECTS[case]
    try:
        _host, _port, plan, refusal = decide_connect(target, LIVE)
    except ProxyError as e:
        assert e.code == code
        return
    assert (refusal.code if refusal else None) == code
    if intercept is not None:
        assert plan.intercept == intercept


def test_parse_authority_table() -> None:
    assert parse_authority(b"API.test", 443) == ("api.test", 443)
    assert parse_authority(b"[::1]:8443", 443) == ("::1", 8443)
    for bad in (b"a b", b"\xff.test", b"x@y", b"host:99999"):
        with pytest.raises(ProxyError):
            parse_authority(bad, 443)


def test_sni_rules() -> None:
    assert sni_matches("API.test", "api.test")
    assert not sni_matches("other.test", "api.test")
    assert not sni_matches(None, "api.test") and sni_matches(None, "10.0.0.1")


# withdrawn(): a reload that takes a substitution away, for requests in flight
def test_withdrawn_table() -> None:
    plan = LIVE.plan("api.test", 443)
    moved = dataclasses.replace(BODY, hosts=(HostPattern.parse("other.test"),))
    no_body = dataclasses.replace(BODY, locations=frozenset({Location.HEADERS}))
    rows = [
        (LIVE, None, True, None),
        (Policy(new_session(API, QUERY, BODY, OTHER)), None, True, None),  # same secrets, new policy object
        (Policy(new_session(API, QUERY, moved, OTHER)), None, True, "session_changed"),
        (Policy(new_session(API, QUERY, no_body, OTHER)), None, True, "session_changed"),
        (Policy(new_session(API, QUERY, no_body, OTHER)), ["API_KEY"], False, None),  # headers still allowed
        (Policy(new_session(QUERY, BODY, OTHER)), ["API_KEY"], False, "session_changed"),
        (REVOKED, None, True, "session_revoked"),
    ]
    for policy, names, body_only, code in rows:
        got = withdrawn(policy, plan, names, body_only)
        assert (got.code if got else None) == code, (names, body_only)
