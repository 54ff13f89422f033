"""Framing differential: whatever the proxy forwards, llhttp frames exactly as the proxy did.

The proxy sits between an untrusted client and upstreams that parse HTTP/1.1 with their
own parser; Node's llhttp (also inside aiohttp, uvicorn via httptools) is the most common.
If the proxy and llhttp ever disagree on where a request ends, the bytes after the
disagreement are a request the proxy never checked (issue 12, items 4 and 5).

Every case is a raw client byte stream sent through the REAL proxy, in an intercepted
tunnel (origin- or absolute-form targets) or as plain-HTTP proxy requests, to an upstream
(`LlhttpUpstream`) that parses what it receives with llhttp (the `httptools` binding,
default strict settings) and records it. Then:

- llhttp parses every forwarded byte without error, one complete message per upstream
  connection (the upstream answers `Connection: close`) and nothing after it;
- the k-th response the client gets is, when it comes from the upstream, the k-th message
  llhttp reads in the client's own stream: same method, target (absolute-form made
  origin-form), end-to-end fields, body and trailers. So a message only llhttp or only the
  proxy sees, or a body boundary they place differently, fails the test.

The corpus covers the classic smuggling shapes; hypothesis then mutates well-formed
streams byte by byte (derandomized: the same examples on every run).
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httptools
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oshu_contract.session import SecretBinding
from oshu_testkit.ca import TestCA
from oshu_testkit.rawclient import RawClient, RawResponse
from oshu_testkit.sessions import new_secret, new_session
from oshu_testkit.sidecar_process import SidecarProcess
from oshu_testkit.upstreams import HOST

TIMEOUT = 10.0
#: Responses are read until the proxy closes, or this long after the last expected one
#: (only when llhttp could not read the whole stream: the proxy might see more in it).
SETTLE = 0.3
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
HOP = {
    b"connection",
    b"keep-alive",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"content-length",
    b"host",
    b"accept-encoding",
}


# -- llhttp on both sides --------------------------------------------------------------------
@dataclass
class Message:
    method: bytes = b""
    url: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    upgrade: bool = False
    complete: bool = False


class Llhttp:
    """httptools' request parser collecting messages; stops at the first error or upgrade."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.error: str | None = None
        self.upgraded = False
        self.after_upgrade = b""
        self._cur: Message | None = None
        self._in_head = False
        self._name = b""
        self._parser = httptools.HttpRequestParser(self)

    # callbacks
    def on_message_begin(self) -> None:
        self._cur = Message()
        self._in_head = True

    def on_url(self, url: bytes) -> None:
        assert self._cur is not None
        self._cur.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._cur is not None
        (self._cur.headers if self._in_head else self._cur.trailers).append((name.lower(), value.strip(b" \t")))

    def on_headers_complete(self) -> None:
        assert self._cur is not None
        self._in_head = False
        self._cur.method = self._parser.get_method()

    def on_body(self, data: bytes) -> None:
        assert self._cur is not None
        self._cur.body += data

    def on_message_complete(self) -> None:
        assert self._cur is not None
        self._cur.complete = True
        self.messages.append(self._cur)

    def feed(self, data: bytes) -> None:
        if self.error is not None:
            return
        if self.upgraded:
            self.after_upgrade += data
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self.upgraded = True
            if self.messages:
                self.messages[-1].upgrade = True
            self.after_upgrade += data[e.args[0] :]
        except httptools.HttpParserError as e:
            self.error = f"{e.__class__.__name__}: {e}"

    @classmethod
    def parse_client_stream(cls, data: bytes) -> Llhttp:
        """The client's stream as a server reads it that answers no upgrade (the upstream here never
        sends 101): after an upgrade or CONNECT request, HTTP parsing goes on with a fresh parser."""
        out = cls()
        for _ in range(64):  # bounded: one round per upgrade request
            p = cls()
            p.feed(data)
            out.messages += p.messages
            out.error = p.error
            if not p.upgraded or not p.after_upgrade:
                break
            data = p.after_upgrade
        return out


# -- the upstream ------------------------------------------------------------------------------
class LlhttpUpstream:
    """TLS and plain listeners on 127.0.0.1 that parse with llhttp, record, and answer each message with close."""

    def __init__(self, directory: Path) -> None:
        self.ca = TestCA.new("oshu llhttp upstream CA").write(directory, "llhttp-ca")
        pair = self.ca.issue([HOST])
        pem = directory / "llhttp-leaf.pem"
        pem.write_bytes(pair.cert_pem + pair.key_pem)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(pem)
        self.tls = socket.create_server(("127.0.0.1", 0))
        self.plain = socket.create_server(("127.0.0.1", 0))
        self.conns: list[Llhttp] = []
        self.accepted = 0
        self.finished = 0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> LlhttpUpstream:
        for sock, tls in ((self.tls, True), (self.plain, False)):
            sock.settimeout(0.2)
            t = threading.Thread(target=self._accept, args=(sock, tls), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(TIMEOUT)
        self.tls.close()
        self.plain.close()

    def connect_to(self) -> list[str]:
        return [
            f"{HOST}:443:127.0.0.1:{self.tls.getsockname()[1]}",
            f"{HOST}:80:127.0.0.1:{self.plain.getsockname()[1]}",
        ]

    def reset(self) -> None:
        with self._cond:
            self.conns = []

    def wait_finished(self, accepted: int) -> None:
        """Until `accepted` connections were taken and every one has ended (bounded)."""
        deadline = time.monotonic() + TIMEOUT
        with self._cond:
            while self.accepted < accepted or self.finished < self.accepted:
                left = deadline - time.monotonic()
                assert left > 0, f"upstream connections still open: {self.accepted} accepted, {self.finished} ended"
                self._cond.wait(min(left, 0.2))

    def _accept(self, sock: socket.socket, tls: bool) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = sock.accept()
            except (TimeoutError, OSError):
                continue
            with self._cond:
                self.accepted += 1
            t = threading.Thread(target=self._serve, args=(raw, tls), daemon=True)
            t.start()

    def _serve(self, raw: socket.socket, tls: bool) -> None:
        parser = Llhttp()
        with self._cond:
            self.conns.append(parser)
        raw.settimeout(TIMEOUT)
        conn: socket.socket = raw
        answered = 0
        try:
            if tls:
                conn = self.ctx.wrap_socket(raw, server_side=True)
            for _ in range(10_000):  # reads per connection (bounded)
                data = conn.recv(65536)
                if not data:
                    break
                with self._cond:
                    parser.feed(data)
                while answered < len(parser.messages):
                    answered += 1
                    conn.sendall(OK)  # keep reading: anything after the message is recorded
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()
            with self._cond:
                self.finished += 1
                self._cond.notify_all()


# -- what the proxy may forward ----------------------------------------------------------------
def end_to_end(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Fields that must arrive unchanged: hop-by-hop, framing, Host and Accept-Encoding are the proxy's."""
    named = {t.strip() for n, v in headers if n == b"connection" for t in v.lower().split(b",")}
    return [
        (n, v)
        for n, v in headers
        if n not in HOP
        and n not in named
        and not n.startswith(b"proxy-")
        and n not in (b"sec-websocket-key", b"sec-websocket-version")
    ]


def origin_form(url: bytes) -> bytes:
    for scheme in (b"http://", b"https://"):
        if url[: len(scheme)].lower() == scheme:
            rest = url[len(scheme) :]
            cut = min([i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0] or [len(rest)])
            path = rest[cut:]
            return b"/" + path if path.startswith(b"?") else (path or b"/")
    return url


def check_stream(proxy: Proxied, stream: bytes, tls: bool) -> None:
    """Send `stream` through the proxy; assert llhttp upstream-side reads exactly what llhttp client-side reads."""
    client_view = Llhttp.parse_client_stream(stream)
    expected = client_view.messages
    fully_read = client_view.error is None
    responses = proxy.send(stream, tls, len(expected), settle=not fully_read)
    proxy.upstream.wait_finished(proxy.upstream_connections())
    forwarded = proxy.upstream.conns
    for up in forwarded:
        # llhttp knows a fixed list of methods; the proxy passes any token on. Refused there at the
        # request line, the bytes cannot be read as anything else.
        assert up.error is None or (up.error.startswith("HttpParserInvalidMethodError") and not up.messages), (
            f"llhttp could not parse what the proxy forwarded: {up.error}"
        )
        assert len(up.messages) <= 1, "more than one message on an upstream connection"
        assert not up.after_upgrade, "the proxy sent bytes after an upgrade request"
    got = [m for up in forwarded for m in up.messages]
    upstream_answered = [i for i, r in enumerate(responses) if r.header("x-oshu-error") is None]
    assert len(got) == len(upstream_answered), (responses, got)
    for k, i in enumerate(upstream_answered):
        assert i < len(expected), f"the proxy forwarded a message llhttp does not see in the client stream: {got[k]}"
        want, have = expected[i], got[k]
        assert have.method == want.method
        assert have.url == origin_form(want.url)
        assert end_to_end(have.headers) == end_to_end(want.headers)
        assert (dict(have.headers).get(b"host") or b"").lower() == HOST.encode()
        assert have.body == proxy.substituted(want.body) if tls else have.body == want.body
        assert end_to_end(have.trailers) == end_to_end(want.trailers)


class Proxied:
    """The proxy under test with its llhttp upstream."""

    def __init__(self, sc: SidecarProcess, upstream: LlhttpUpstream, body_key: SecretBinding) -> None:
        self.sc = sc
        self.upstream = upstream
        self.body_key = body_key
        self._opened = 0.0

    def substituted(self, body: bytes) -> bytes:
        return body.replace(self.body_key.sealed.encode(), self.body_key.value.encode())

    def upstream_connections(self) -> int:
        return int(self.sc.metric("oshu_connections_opened_total", side="upstream") or 0) - int(self._opened)

    def send(self, stream: bytes, tls: bool, expected: int, settle: bool) -> list:
        self.upstream.reset()
        self._opened = self.sc.metric("oshu_connections_opened_total", side="upstream") or 0.0
        responses: list[RawResponse] = []
        with RawClient(self.sc.listen, timeout=TIMEOUT) as c:
            if tls:
                assert c.connect(f"{HOST}:443").status == 200
                c.start_tls(HOST, self.sc.ca_cert_file)
            c.send(stream)
            for _ in range(expected + 8):  # bounded: the proxy answers at most once per message it reads
                if len(responses) >= expected:
                    if not settle:
                        break
                    c.sock.settimeout(SETTLE)
                try:
                    responses.append(c.response())
                except (TimeoutError, ConnectionError, ssl.SSLError, OSError, ValueError):
                    break
        return responses


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxied]:
    directory = tmp_path_factory.mktemp("differential")
    body_key = new_secret("BODY_KEY", [HOST], locations=["headers", "body"])
    with LlhttpUpstream(directory) as up:
        sc = SidecarProcess(
            new_session(body_key),
            directory=directory / "sidecar",
            connect_to=up.connect_to(),
            upstream_ca_files=[up.ca.cert_path],
        )
        with sc:
            yield Proxied(sc, up, body_key)
            text = sc.log_text()
        assert body_key.value not in text


# -- the corpus --------------------------------------------------------------------------------
def req(
    target: str = "/echo", fields: bytes = b"", body: bytes = b"", method: bytes = b"GET", version: bytes = b"HTTP/1.1"
) -> bytes:
    return b"%b %b %b\r\nHost: api.oshu.test\r\n%b\r\n%b" % (method, target.encode(), version, fields, body)


def chunked(*pieces: bytes, trailers: bytes = b"", ext: bytes = b"") -> bytes:
    return b"".join(b"%x%b\r\n%b\r\n" % (len(p), ext, p) for p in pieces) + b"0\r\n" + trailers + b"\r\n"


NEXT = req("/echo/next")
CORPUS: dict[str, bytes] = {
    "plain GET": req(),
    "CL body": req(fields=b"Content-Length: 5\r\n", body=b"hello") + NEXT,
    "CL 0": req(method=b"POST", fields=b"Content-Length: 0\r\n") + NEXT,
    "CL leading zeros": req(method=b"POST", fields=b"Content-Length: 005\r\n", body=b"hello") + NEXT,
    "CL twice equal": req(method=b"POST", fields=b"Content-Length: 5\r\nContent-Length: 5\r\n", body=b"hello") + NEXT,
    "CL list equal": req(method=b"POST", fields=b"Content-Length: 5, 5\r\n", body=b"hello") + NEXT,
    "CL conflicting": req(method=b"POST", fields=b"Content-Length: 5\r\nContent-Length: 6\r\n", body=b"hello!") + NEXT,
    "CL plus sign": req(method=b"POST", fields=b"Content-Length: +5\r\n", body=b"hello") + NEXT,
    "CL hex": req(method=b"POST", fields=b"Content-Length: 0x5\r\n", body=b"hello") + NEXT,
    "CL space inside": req(method=b"POST", fields=b"Content-Length: 1 2\r\n", body=b"x" * 12) + NEXT,
    "CL huge": req(method=b"POST", fields=b"Content-Length: 99999999999999999999999\r\n", body=b"x") + NEXT,
    "CL with TE": req(
        method=b"POST", fields=b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", body=chunked(b"hello")
    )
    + NEXT,
    "TE with CL": req(
        method=b"POST", fields=b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", body=chunked(b"hello")
    )
    + NEXT,
    "chunked": req(method=b"POST", fields=b"Transfer-Encoding: chunked\r\n", body=chunked(b"hel", b"lo")) + NEXT,
    "chunked upper": req(method=b"POST", fields=b"Transfer-Encoding: CHUNKED\r\n", body=chunked(b"hello")) + NEXT,
    "chunked with token": req(method=b"POST", fields=b"Transfer-Encoding: chunked\r\n", body=chunked(b"k=SEALED_TOKEN"))
    + NEXT,
    "TE gzip, chunked": req(method=b"POST", fields=b"Transfer-Encoding: gzip, chunked\r\n", body=chunked(b"hello"))
    + NEXT,
    "TE chunked, gzip": req(method=b"POST", fields=b"Transfer-Encoding: chunked, gzip\r\n", body=b"hello") + NEXT,
    "TE identity": req(method=b"POST", fields=b"Transfer-Encoding: identity\r\n", body=b"hello") + NEXT,
    "TE twice": req(
        method=b"POST", fields=b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", body=chunked(b"hello")
    )
    + NEXT,
    "TE space before colon": req(method=b"POST", fields=b"Transfer-Encoding : chunked\r\n", body=chunked(b"hello"))
    + NEXT,
    "TE tab value": req(method=b"POST", fields=b"Transfer-Encoding:\tchunked\r\n", body=chunked(b"hello")) + NEXT,
    "TE vertical tab": req(method=b"POST", fields=b"Transfer-Encoding: \x0bchunked\r\n", body=chunked(b"hello")) + NEXT,
    "TE xchunked": req(method=b"POST", fields=b"Transfer-Encoding: xchunked\r\n", body=chunked(b"hello")) + NEXT,
    "TE in HTTP/1.0": req(
        method=b"POST", version=b"HTTP/1.0", fields=b"Transfer-Encoding: chunked\r\n", body=chunked(b"hello")
    )
    + NEXT,
    "chunk extension": req(
        method=b"POST", fields=b"Transfer-Encoding: chunked\r\n", body=chunked(b"hello", ext=b";name=value")
    )
    + NEXT,
    "chunk extension quoted": req(
        method=b"POST", fields=b"Transfer-Encoding: chunked\r\n", body=chunked(b"hello", ext=b';a="b\\"c"')
    )
    + NEXT,
    "chunk ext bare LF": req(
        method=b"POST", fields=b"Transfer-Encoding: chunked\r\n", body=b"5;a\nb\r\nhello\r\n0\r\n\r\n"
    )
    + NEXT,
    "chunk size leading zeros": req(
        method=b"POST", fields=b"Transfer-Encoding: chunked\r\n", body=b"0005\r\nhello\r\n0\r\n\r\n"
    )
    + NEXT,
    "chunk size with space": req(
        method=b"POST", fields=b"Transfer-Encoding: chunked\r\n", body=b"5 \r\nhello\r\n0\r\n\r\n"
    )
    + NEXT,
    "chunk size overflow": req(
        method=b"POST", fields=b"Transfer-Encoding: chunked\r\n", body=b"10000000000000005\r\nhello\r\n0\r\n\r\n"
    )
    + NEXT,
    "chunk size negative": req(
        method=b"POST", fields=b"Transfer-Encoding: chunked\r\n", body=b"-5\r\nhello\r\n0\r\n\r\n"
    )
    + NEXT,
    "chunk data without CRLF": req(
        method=b"POST", fields=b"Transfer-Encoding: chunked\r\n", body=b"5\r\nhelloXX0\r\n\r\n"
    )
    + NEXT,
    "chunk data bare LF": req(method=b"POST", fields=b"Transfer-Encoding: chunked\r\n", body=b"5\r\nhello\n0\r\n\r\n")
    + NEXT,
    "last chunk bare LF": req(method=b"POST", fields=b"Transfer-Encoding: chunked\r\n", body=b"5\r\nhello\r\n0\n\n")
    + NEXT,
    "trailers": req(
        method=b"POST",
        fields=b"Transfer-Encoding: chunked\r\n",
        body=chunked(b"hello", trailers=b"X-T: 1\r\nX-U: 2\r\n"),
    )
    + NEXT,
    "CL in trailers": req(
        method=b"POST",
        fields=b"Transfer-Encoding: chunked\r\n",
        body=chunked(b"hello", trailers=b"Content-Length: 50\r\n"),
    )
    + NEXT,
    "TE in trailers": req(
        method=b"POST",
        fields=b"Transfer-Encoding: chunked\r\n",
        body=chunked(b"hello", trailers=b"Transfer-Encoding: chunked\r\n"),
    )
    + NEXT,
    "trailer obs-fold": req(
        method=b"POST",
        fields=b"Transfer-Encoding: chunked\r\n",
        body=chunked(b"hello", trailers=b"X-T: 1\r\n folded\r\n"),
    )
    + NEXT,
    "obs-fold": req(fields=b"X-A: 1\r\n folded\r\n") + NEXT,
    "obs-fold into TE": req(method=b"POST", fields=b"X-A: 1\r\n Transfer-Encoding: chunked\r\n", body=chunked(b"hello"))
    + NEXT,
    "bare CR in value": req(fields=b"X-A: 1\rX-B: 2\r\n") + NEXT,
    "bare LF in value": req(fields=b"X-A: 1\nContent-Length: 5\r\n", body=b"hello") + NEXT,
    "bare LF line endings": b"GET /echo HTTP/1.1\nHost: api.oshu.test\n\n" + NEXT,
    "NUL in value": req(fields=b"X-A: a\x00b\r\n") + NEXT,
    "NUL in target": b"GET /ec\x00ho HTTP/1.1\r\nHost: api.oshu.test\r\n\r\n" + NEXT,
    "DEL in value": req(fields=b"X-A: a\x7fb\r\n") + NEXT,
    "high bytes in value": req(fields=b"X-A: caf\xc3\xa9\r\n") + NEXT,
    "space in name": req(fields=b"X A: 1\r\n") + NEXT,
    "empty name": req(fields=b": 1\r\n") + NEXT,
    "leading whitespace line": b"GET /echo HTTP/1.1\r\n Host: api.oshu.test\r\n\r\n" + NEXT,
    "two Hosts": req(fields=b"Host: evil.test\r\n") + NEXT,
    "leading CRLF": b"\r\n" + req() + NEXT,
    "Expect 100-continue": req(method=b"POST", fields=b"Expect: 100-continue\r\nContent-Length: 5\r\n", body=b"hello")
    + NEXT,
    "Expect unknown": req(method=b"POST", fields=b"Expect: 200-ok\r\nContent-Length: 5\r\n", body=b"hello") + NEXT,
    "absolute-form in tunnel": b"GET https://api.oshu.test/echo/abs HTTP/1.1\r\nHost: api.oshu.test\r\n\r\n" + NEXT,
    "absolute-form other host": b"GET https://evil.test/echo HTTP/1.1\r\nHost: api.oshu.test\r\n\r\n" + NEXT,
    "asterisk-form": b"OPTIONS * HTTP/1.1\r\nHost: api.oshu.test\r\n\r\n" + NEXT,
    "pipelined after 421": req(fields=b"").replace(b"Host: api.oshu.test", b"Host: other.oshu.test") + NEXT,
    "pipelined after bad chunk": req(
        method=b"POST", fields=b"Transfer-Encoding: chunked\r\n", body=b"zz\r\nhello\r\n0\r\n\r\n"
    )
    + NEXT,
    "pipelined three": req("/echo/1") + req("/echo/2", b"Content-Length: 3\r\n", b"abc") + req("/echo/3"),
    "HTTP/1.0 keep-alive": req(version=b"HTTP/1.0", fields=b"Connection: keep-alive\r\n") + NEXT,
    "HTTP/1.0 with CL": req(method=b"POST", version=b"HTTP/1.0", fields=b"Content-Length: 5\r\n", body=b"hello") + NEXT,
    "HTTP/1.2": req(version=b"HTTP/1.2") + NEXT,
    "lower-case version": req(version=b"http/1.1") + NEXT,
    "Connection close then more": req(fields=b"Connection: close\r\n") + NEXT,
    "Connection names CL": req(
        method=b"POST", fields=b"Connection: content-length\r\nContent-Length: 5\r\n", body=b"hello"
    )
    + NEXT,
    "Connection names Host": req(fields=b"Connection: host\r\n") + NEXT,
    "websocket no body": req(
        "/ws",
        b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    )
    + NEXT,
    "websocket CL body": req(
        "/ws", b"Connection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: %d\r\n" % len(NEXT), NEXT
    ),
    "websocket chunked body": req(
        "/ws", b"Connection: Upgrade\r\nUpgrade: websocket\r\nTransfer-Encoding: chunked\r\n", chunked(NEXT)
    ),
    "websocket CL 0": req("/ws", b"Connection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 0\r\n") + NEXT,
    "h2c upgrade with body": req(
        "/echo",
        b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nContent-Length: %d\r\n" % len(NEXT),
        NEXT,
    ),
    "upgrade without Connection": req("/echo", b"Upgrade: websocket\r\nContent-Length: 5\r\n", b"hello") + NEXT,
    "CONNECT inside": b"CONNECT api.oshu.test:443 HTTP/1.1\r\nHost: api.oshu.test:443\r\n\r\n" + NEXT,
    "GET with CL body": req("/echo", b"Content-Length: %d\r\n" % len(NEXT), NEXT) + NEXT,
    "HEAD with CL": req("/echo", b"Content-Length: 5\r\n", b"hello", method=b"HEAD") + NEXT,
    "incomplete body": req(method=b"POST", fields=b"Content-Length: 50\r\n", body=b"short"),
    "incomplete chunk": req(method=b"POST", fields=b"Transfer-Encoding: chunked\r\n", body=b"50\r\nshort"),
}


@pytest.mark.parametrize("tls", [True, False], ids=["tunnel", "plain"])
@pytest.mark.parametrize("case", sorted(CORPUS))
def test_corpus(case: str, tls: bool, proxied: Proxied) -> None:
    stream = CORPUS[case].replace(b"SEALED_TOKEN", proxied.body_key.sealed.encode())
    check_stream(proxied, stream if tls else as_proxy_requests(stream), tls)


def as_proxy_requests(stream: bytes) -> bytes:
    """Origin-form targets of request lines made absolute-form http:// (what a client sends a proxy)."""
    return (
        stream.replace(b"GET /", b"GET http://api.oshu.test/")
        .replace(b"POST /", b"POST http://api.oshu.test/")
        .replace(b"HEAD /", b"HEAD http://api.oshu.test/")
        .replace(b"OPTIONS * ", b"OPTIONS http://api.oshu.test/ ")
    )


# -- generated mutations -----------------------------------------------------------------------
FIELDS = [
    b"Content-Length: 5\r\n",
    b"Content-Length: 0\r\n",
    b"Content-Length: 05\r\n",
    b"Content-Length: 5, 5\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: identity\r\n",
    b"Transfer-Encoding: gzip, chunked\r\n",
    b"Connection: close\r\n",
    b"Connection: keep-alive\r\n",
    b"Connection: Upgrade\r\n",
    b"Upgrade: websocket\r\n",
    b"Expect: 100-continue\r\n",
    b"X-A: 1\r\n",
    b"Trailer: X-T\r\n",
    b"Connection: content-length\r\n",
    b"Proxy-Connection: keep-alive\r\n",
]
BODIES = [
    b"",
    b"hello",
    chunked(b"hello"),
    chunked(b"hel", b"lo", trailers=b"X-T: 1\r\n"),
    chunked(b"hi", ext=b";x=y"),
    NEXT,
]
BYTES = [b"\r", b"\n", b"\x00", b" ", b"\t", b":", b",", b";", b"0", b"a", b"\r\n", b"\x0b", b"-", b"\xff"]


@st.composite
def mutated_streams(draw: st.DrawFn) -> bytes:
    """1-3 requests from risky building blocks, then a few single-byte edits anywhere."""
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        method = draw(st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT"]))
        version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]))
        fields = b"".join(draw(st.lists(st.sampled_from(FIELDS), max_size=3)))
        parts.append(
            req(
                draw(st.sampled_from(["/echo", "/echo/a?b=c", "/ws"])),
                fields,
                draw(st.sampled_from(BODIES)),
                method,
                version,
            )
        )
    data = bytearray(b"".join(parts))
    for _ in range(draw(st.integers(0, 3))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "replace", "delete"]))
        piece = draw(st.sampled_from(BYTES))
        if op == "insert":
            data[pos:pos] = piece
        elif op == "replace":
            data[pos : pos + 1] = piece
        else:
            del data[pos : pos + 1]
    return bytes(data)


@settings(
    max_examples=120,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(stream=mutated_streams(), tls=st.booleans())
def test_generated_mutations(stream: bytes, tls: bool, proxied: Proxied) -> None:
    check_stream(proxied, stream if tls else as_proxy_requests(stream), tls)
