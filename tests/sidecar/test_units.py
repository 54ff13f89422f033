"""Unit tests of the pure pieces: config, routing, parsing, policy, substitution and scrubbing."""

from __future__ import annotations

import asyncio
import base64
import itertools

import pytest

from oshu_sidecar.body import ChunkedDecoder
from oshu_sidecar.channel import Channel
from oshu_sidecar.config import ConfigError, load_config, parse_connect_to, parse_resolve
from oshu_sidecar.errors import CODES, ProxyError
from oshu_sidecar.http1 import (
    CHUNKED,
    LENGTH,
    NO_BODY,
    UNTIL_CLOSE,
    edit_head,
    filter_fields,
    parse_request_head,
    parse_response_head,
)
from oshu_sidecar.policy import Policy
from oshu_sidecar.substitute import (
    StreamReplacer,
    decode_basic,
    redact_query,
    substitute_head,
    substitute_query,
    tokens_in_request,
)
from oshu_sidecar.upstream import Router
from oshu_testkit.sessions import new_secret, new_session

REQUIRED = ["--session-file", "s.json", "--ca-cert", "ca.crt", "--ca-key", "ca.key"]


# -- config ------------------------------------------------------------------------------------
def test_flags_and_defaults() -> None:
    cfg = load_config(REQUIRED, environ={})
    assert cfg.listen == ("127.0.0.1", 15080) and cfg.admin_listen == ("127.0.0.1", 15090)
    assert cfg.upstream_ca_files == () and cfg.log_level == "info"


def test_every_flag_has_an_environment_variable() -> None:
    env = {
        "OSHU_LISTEN": "0.0.0.0:1",
        "OSHU_ADMIN_LISTEN": "[::1]:2",
        "OSHU_SESSION_FILE": "/s",
        "OSHU_CA_CERT": "/c",
        "OSHU_CA_KEY": "/k",
        "OSHU_UPSTREAM_CA_FILE": "/a.pem:/b.pem",
        "OSHU_RESOLVE": "api.x.test:443:127.0.0.1  other.x.test:80:[::1]",
        "OSHU_CONNECT_TO": "api.x.test:443:127.0.0.1:8443",
        "OSHU_LOG_LEVEL": "WARNING",
        "OSHU_HEADER_TIMEOUT": "3",
        "OSHU_IDLE_TIMEOUT": "4",
        "OSHU_CONNECT_TIMEOUT": "5",
        "OSHU_UPSTREAM_TIMEOUT": "6",
        "OSHU_MAX_HEADER_SIZE": "1000",
        "OSHU_RELOAD_INTERVAL": "0.25",
    }
    cfg = load_config([], environ=env)
    assert cfg.listen == ("0.0.0.0", 1) and cfg.admin_listen == ("::1", 2)
    assert cfg.upstream_ca_files == ("/a.pem", "/b.pem")
    assert [r.addresses for r in cfg.resolve] == [("127.0.0.1",), ("::1",)]
    assert cfg.connect_to[0].connect_port == 8443 and cfg.log_level == "warning"
    assert (cfg.header_timeout, cfg.idle_timeout, cfg.connect_timeout, cfg.upstream_timeout) == (3, 4, 5, 6)
    assert cfg.max_header_size == 1000 and cfg.reload_interval == 0.25
    # The command line wins over the environment.
    assert load_config(["--listen", "127.0.0.1:9"], environ=env).listen == ("127.0.0.1", 9)


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--listen", "nope"], "--listen"),
        (["--header-timeout", "0"], "--header-timeout"),
        (["--resolve", "a.test:443"], "--resolve"),
        (["--connect-to", "a:443:b"], "--connect-to"),
        (["--connect-to", "a:99999:b:1"], "--connect-to"),
    ],
)
def test_bad_values_name_the_flag(argv: list[str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_config(REQUIRED + argv, environ={})


def test_missing_required_settings_are_listed() -> None:
    with pytest.raises(ConfigError, match=r"--session-file.*OSHU_SESSION_FILE"):
        load_config([], environ={})


def test_connect_to_and_resolve_follow_curl() -> None:
    router = Router(
        connect_to=(parse_connect_to("api.x.test:443:backend.x.test:8443"), parse_connect_to("::127.0.0.2:")),
        resolve=(parse_resolve("backend.x.test:8443:127.0.0.9"), parse_resolve("*:80:127.0.0.3")),
    )
    assert router.route("api.x.test", 443) == ("127.0.0.9", 8443)  # connect-to, then resolve of its target
    assert router.route("other.x.test", 443) == ("127.0.0.2", 443)  # catch-all: host replaced, port kept
    assert parse_connect_to("[::1]:443:[::2]:444").host == "::1"
    assert parse_resolve("+a.test:443:10.0.0.1,10.0.0.2").addresses == ("10.0.0.1", "10.0.0.2")
    assert Router(resolve=(parse_resolve("*:80:127.0.0.3"),)).route("z.test", 80) == ("127.0.0.3", 80)
    assert Router().route("z.test", 443) == ("z.test", 443)


# -- request parsing ---------------------------------------------------------------------------
def test_request_head_fields() -> None:
    req = parse_request_head(
        b"POST /a?b=c HTTP/1.1\r\nHost: api.x.test\r\nContent-Length: 12\r\n"
        b"Authorization: Basic Zm9vOmJhcg==\r\nX-Empty:\r\nX-Pad: \t v \t\r\n\r\n"
    )
    assert (req.method, req.target, req.host) == (b"POST", b"/a?b=c", b"api.x.test")
    assert req.framing == LENGTH and req.content_length == 12 and req.keep_alive and req.basic_auth and req.clean
    assert (b"X-Empty", b"") in req.fields and (b"X-Pad", b"v") in req.fields
    assert req.authorization is not None and req.host_spans and req.length_spans


def test_request_framing_and_connection() -> None:
    chunked = parse_request_head(b"POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\nConnection: close\r\n\r\n")
    assert chunked.framing == CHUNKED and not chunked.keep_alive and not chunked.clean
    ws = parse_request_head(b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    assert ws.websocket
    assert not parse_request_head(b"GET / HTTP/1.0\r\n\r\n").keep_alive
    assert parse_request_head(b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").framing == NO_BODY
    with pytest.raises(ProxyError):  # even equal ones: strict llhttp refuses a duplicate (issue 12, item 5)
        parse_request_head(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n")


@pytest.mark.parametrize(
    "raw",
    [
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\r\n"[:-2] + b"x",  # no terminator
        b"GET  / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: a\x7f\r\n\r\n",
        b"GET /\x01 HTTP/1.1\r\n\r\n",
        b"G\xc3T / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: 1e3\r\n\r\n",
        b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
    ],
)
def test_request_head_rejections(raw: bytes) -> None:
    with pytest.raises(ProxyError) as e:
        parse_request_head(raw)
    assert e.value.status in (400, 501)


def test_response_framing() -> None:
    def p(raw: bytes, method: bytes = b"GET"):
        return parse_response_head(raw, method)

    assert p(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n").framing == LENGTH
    assert p(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").framing == NO_BODY
    assert p(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").framing == CHUNKED
    until = p(b"HTTP/1.1 200 OK\r\n\r\n")
    assert until.framing == UNTIL_CLOSE and not until.keep_alive
    assert p(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", b"HEAD").framing == NO_BODY
    assert p(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 3\r\n\r\n").framing == NO_BODY
    assert p(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 3\r\n\r\n").content_encoded
    assert not p(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n").keep_alive
    assert p(b"HTTP/1.1 200\r\nContent-Length: 1\r\n\r\n").reason == b""
    for bad in (
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"ICY 200 OK\r\n\r\n",
    ):
        with pytest.raises(ProxyError) as e:
            p(bad)
        assert e.value.status == 502


def test_filter_fields_drops_hop_by_hop_and_named() -> None:
    fields = [(b"Connection", b"x-a"), (b"X-A", b"1"), (b"Keep-Alive", b"5"), (b"Proxy-Foo", b"1"), (b"X-B", b"2")]
    assert filter_fields(fields, frozenset({b"x-a"})) == [(b"X-B", b"2")]


def _decode_chunked(wire: bytes, pieces: int) -> tuple[bytes, list]:
    async def go() -> tuple[bytes, list]:
        ch = Channel(asyncio.get_running_loop())
        step = max(1, len(wire) // pieces)
        for i in range(0, len(wire), step):
            ch.data_received(wire[i : i + step])
        ch.eof = True
        dec = ChunkedDecoder(ch)
        out = b""
        while True:
            data = await dec.read()
            if not data:
                return out, dec.trailers
            out += data

    return asyncio.run(go())


def test_chunked_decoder() -> None:
    wire = b"5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nX-T: v\r\n\r\n"
    for pieces in (1, 3, len(wire)):
        assert _decode_chunked(wire, pieces) == (b"hello 0123456789", [(b"X-T", b"v")])
    for bad in (b"zz\r\n", b"5\r\nhelloXX", b"-1\r\n"):
        with pytest.raises(ProxyError):
            _decode_chunked(bad + b"\r\n0\r\n\r\n", 1)


# -- policy ------------------------------------------------------------------------------------
def test_policy_plans() -> None:
    a = new_secret("A", ["api.x.test"])
    w = new_secret("W", ["*.w.test"], locations=["headers", "query", "body"])
    p = Policy(new_session(a, w, egress=["ok.test", "*.ok.test:8080"]))
    plan = p.plan("api.x.test", 443)
    assert plan.intercept and plan.egress_allowed and [s.name for s in plan.header_subs] == ["A"]
    assert not plan.query_subs and not plan.body_subs and plan.label == "api.x.test"
    wplan = p.plan("deep.sub.w.test", 443)
    assert wplan.intercept and [s.name for s in wplan.body_subs] == ["W"]
    assert not p.plan("w.test", 443).intercept
    assert not p.plan("api.x.test", 8443).intercept
    assert p.plan("ok.test", 443).egress_allowed and not p.plan("ok.test", 443).intercept
    assert p.plan("a.ok.test", 8080).egress_allowed and not p.plan("a.ok.test", 443).egress_allowed
    denied = p.plan("evil.test", 443)
    assert not denied.egress_allowed and denied.label == "other"
    assert Policy(new_session(a)).plan("anything.test", 443).egress_allowed  # no allowlist: tunnels allowed


def test_policy_states() -> None:
    a = new_secret("A", ["api.x.test"])
    assert Policy(new_session(a)).inactive() is None
    assert Policy(new_session(a, revoked=True)).inactive().code == "session_revoked"  # type: ignore[union-attr]
    assert Policy(new_session(a), "file deleted").inactive().message.startswith("file deleted")  # type: ignore[union-attr]
    expired = Policy(new_session(a, expires_in=-1)).inactive()
    assert expired is not None and expired.code == "session_expired" and a.value not in expired.message
    assert Policy(new_session(a, expires_in=100)).seconds_until_expiry() > 90
    assert Policy(new_session(a)).seconds_until_expiry() == float("inf")


# -- substitution ------------------------------------------------------------------------------
def test_header_substitution_and_basic() -> None:
    a = new_secret("A", ["api.x.test"])
    b = new_secret("B", ["api.x.test"])
    policy = Policy(new_session(a, b))
    subs = policy.plan("api.x.test", 443).header_subs
    basic = b"Basic " + base64.b64encode(f"user:{a.sealed}".encode())
    raw = (
        b"GET /"
        + a.sealed.encode()
        + b" HTTP/1.1\r\nX-Key: "
        + f"{a.sealed} and {b.sealed}".encode()
        + b"\r\nAuthorization: "
        + basic
        + b"\r\n"
        + a.sealed.encode()
        + b"-name: v\r\nX-Plain: v\r\n\r\n"
    )
    req = parse_request_head(raw)
    names: list[str] = []
    out = parse_request_head(edit_head(raw, substitute_head(raw, req.line_end + 2, req.authorization, subs, names)))
    fields = dict(out.fields)
    assert fields[b"X-Key"] == f"{a.value} and {b.value}".encode()
    assert decode_basic(fields[b"Authorization"]) == f"user:{a.value}".encode()
    assert fields[a.sealed.encode() + b"-name"] == b"v"  # field names and the request line are not values
    assert out.target == b"/" + a.sealed.encode()
    assert fields[b"X-Plain"] == b"v" and sorted(names) == ["A", "B"]
    only_basic = parse_request_head(b"GET / HTTP/1.1\r\nAuthorization: " + basic + b"\r\n\r\n")
    assert tokens_in_request(policy, only_basic.raw, only_basic.authorization) == ["A"]
    assert tokens_in_request(policy, only_basic.raw, None) == []
    assert decode_basic(b"Basic !!!") is None and decode_basic(b"Bearer x") is None


def test_edit_head() -> None:
    req = parse_request_head(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Gone\r\nX-Gone: 1\r\n"
        b"Proxy-Authorization: x\r\nX-Kept: 2\r\n\r\n"
    )
    out = edit_head(
        req.raw, [(s, e, b"") for s, e in req.drop] + [(0, req.line_end, b"GET /x HTTP/1.1")], b"Extra: 3\r\n"
    )
    assert out == b"GET /x HTTP/1.1\r\nHost: a\r\nX-Kept: 2\r\nExtra: 3\r\n\r\n"
    assert edit_head(req.raw, []) is req.raw


def test_query_substitution_and_redaction() -> None:
    q = new_secret("Q", ["api.x.test"], value="a b&c/d=e", locations=["query"])
    subs = Policy(new_session(q)).plan("api.x.test", 443).query_subs
    names: list[str] = []
    target = substitute_query(f"/p/{q.sealed}?k={q.sealed}".encode(), subs, names)
    assert target == f"/p/{q.sealed}?k=a%20b%26c%2Fd%3De".encode() and names == ["Q"]  # the path is never touched
    assert redact_query(b"/p?a=1&b&c=x=y") == "/p?a=&b=&c=" and redact_query(b"/p") == "/p"


VALUE = b"sk-live-0123456789abcdef"
SEALED = b"SEALED_" + b"f" * 40


def _scrub(pieces: list[bytes]) -> bytes:
    r = StreamReplacer(((VALUE, SEALED, "K"),))
    return b"".join(r.feed(p) for p in pieces) + r.flush()


def test_stream_replacer_every_split_point() -> None:
    text = b"start " + VALUE + b" middle " + VALUE + VALUE + b" end"
    expected = text.replace(VALUE, SEALED)
    for i, j in itertools.combinations(range(1, len(text)), 2):
        assert _scrub([text[:i], text[i:j], text[j:]]) == expected
    assert _scrub([bytes([c]) for c in text]) == expected


def test_stream_replacer_holds_back_only_possible_prefixes() -> None:
    r = StreamReplacer(((VALUE, SEALED, "K"),))
    assert r.feed(b"data: event\n\n") == b"data: event\n\n"  # nothing held: SSE flushes at once
    assert r.feed(b"abc sk-li") == b"abc " and r.pending == b"sk-li"
    assert r.feed(b"ve-nope") == b"sk-live-nope"
    assert r.flush() == b""
    assert r.names == []


def test_stream_replacer_prefers_longer_values() -> None:
    short, long_ = b"abcdefgh", b"abcdefgh-longer"
    r = StreamReplacer(tuple(sorted(((short, b"<S>", "S"), (long_, b"<L>", "L")), key=lambda p: -len(p[0]))))
    assert r.feed(b"x abcdefgh-longer y abcdefgh z") + r.flush() == b"x <L> y <S> z"


def test_error_responses_are_json() -> None:
    for code, status in CODES.items():
        raw = ProxyError(code, "msg").response(close=True)
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 %d " % status) and b"Connection: close" in head
        assert b"Content-Length: %d" % len(body) in head
        assert b'"code":"' + code.encode() + b'"' in body
