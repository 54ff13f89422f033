"""A local HTTPS (and plain HTTP) upstream standing in for a real API, recording what it receives.

`Upstream` is an aiohttp server on 127.0.0.1 in a background thread, with its own CA.
Endpoints: /echo, /sse, /upload, /redirect, /ws, /reflect (echoes a header value back: "the
upstream leaks the key"), /status/{code}, /bytes, /close (close-delimited), /gate (answers
after `release()`). Host names are all under `.oshu.test` and every sidecar the kit starts
maps them to 127.0.0.1: nothing is ever resolved or sent elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import shutil
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from aiohttp import WSMsgType, web

from .ca import TestCA

DEFAULT_HOST = "api.oshu.test"
# The names the sidecar tests use; the shared upstream answers for all of them.
HOST = DEFAULT_HOST  # API_KEY, QUERY_KEY, BODY_KEY are allowed here
OTHER = "other.oshu.test"  # only OTHER_KEY is allowed here
PORTED = "api.oshu.test:8443"  # PORT_KEY: an explicit non-443 port
WILD = "x.wild.oshu.test"  # WILD_KEY: allowed for *.wild.oshu.test
TUNNEL = "tunnel.oshu.test"  # no secret names it: a blind tunnel
UPSTREAM_NAMES = ("api.oshu.test", "*.oshu.test", "*.wild.oshu.test")
ALL_HOSTS = [HOST, OTHER, PORTED, WILD, "wild.oshu.test", TUNNEL]
_START_TIMEOUT = 20.0


def _loopback_socket(host: str = "127.0.0.1") -> socket.socket:
    """A listening socket on `host` ("::" = every IPv4 and IPv6 address, for network namespace tests)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if ":" in host:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind((host, 0))
    return sock


@dataclass
class Recorded:
    """One request as the upstream received it."""

    method: str
    path: str
    query_string: str
    headers: list[tuple[str, str]]
    body: bytes
    scheme: str
    chunks: int = 0  # body pieces as read by the server (for streaming checks)
    raw_path: str = ""  # the request target exactly as sent (query not decoded)

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]


class Upstream:
    """A local HTTPS + HTTP server standing in for a real API (see module docstring for endpoints).

    `port` is the HTTPS port, `http_port` the plain one. `release()` opens one gate for the
    gated endpoints (`/sse?gated=1`, `/upload?gated=1`), so a test can prove streaming
    without timing anything: the next piece is only produced after the client saw the last.
    """

    def __init__(
        self,
        names: Sequence[str] = (DEFAULT_HOST, "*.oshu.test"),
        directory: Path | None = None,
        ca: TestCA | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.names = tuple(names)
        #: Bind address: loopback unless a network namespace test serves it on "::" (see oshu_testkit.netns).
        self.host = host
        self._own_dir = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="oshu-upstream-"))
        self.ca = ca or TestCA.new("oshu test upstream CA")
        if self.ca.cert_file is None:
            self.ca.write(self.directory, "upstream-ca")
        self.requests: list[Recorded] = []
        self.ws_messages: list[str] = []
        self.events: list[str] = []  # markers such as "upload:first-chunk"
        self.port = 0
        self.http_port = 0
        self._cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._gate: asyncio.Semaphore | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    # lifecycle
    def __enter__(self) -> Upstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Upstream:
        self._thread = threading.Thread(target=self._run, name="oshu-test-upstream", daemon=True)
        self._thread.start()
        if not self._started.wait(_START_TIMEOUT):
            raise RuntimeError("test upstream did not start")
        if self._error is not None:
            raise RuntimeError(f"test upstream failed to start: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._runner is not None and not self._loop.is_closed():
            fut = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
            with contextlib.suppress(Exception):
                fut.result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    @property
    def ca_file(self) -> Path:
        assert self.ca.cert_file is not None
        return self.ca.cert_file

    def ssl_context(self) -> ssl.SSLContext:
        pair = self.ca.issue(self.names)
        path = self.directory / "upstream-leaf.pem"
        path.write_bytes(pair.cert_pem + pair.key_pem)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(path)
        path.unlink()
        return ctx

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._start())
        except BaseException as e:  # surfaced to start()
            self._error = e
            self._started.set()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _start(self) -> None:
        self._gate = asyncio.Semaphore(0)
        app = web.Application(client_max_size=1 << 30)
        r = app.router
        r.add_route("*", "/echo", self._echo)
        r.add_route("*", "/echo/{tail:.*}", self._echo)
        r.add_get("/sse", self._sse)
        r.add_post("/upload", self._upload)
        r.add_put("/upload", self._upload)
        r.add_get("/redirect", self._redirect)
        r.add_get("/ws", self._ws)
        r.add_route("*", "/reflect", self._reflect)
        r.add_route("*", "/status/{code}", self._status)
        r.add_get("/bytes", self._bytes)
        r.add_get("/close", self._close)
        r.add_get("/gate", self._gated)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        # Sockets bound here, so their ephemeral ports are known without aiohttp's internals.
        tls_sock, plain_sock = _loopback_socket(self.host), _loopback_socket(self.host)
        await web.SockSite(self._runner, tls_sock, ssl_context=self.ssl_context()).start()
        await web.SockSite(self._runner, plain_sock).start()
        self.port = tls_sock.getsockname()[1]
        self.http_port = plain_sock.getsockname()[1]

    # recording
    def _record(self, request: web.Request, body: bytes, chunks: int = 0) -> Recorded:
        rec = Recorded(
            request.method,
            request.path,
            request.query_string,
            list(request.headers.items()),
            body,
            request.scheme,
            chunks,
            request.raw_path,
        )
        with self._cond:
            self.requests.append(rec)
            self._cond.notify_all()
        return rec

    def _mark(self, event: str) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[Upstream], bool], timeout: float = 10.0) -> bool:
        """Block until `predicate(self)` holds (checked on every recorded event), at most `timeout` s."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))
            return True

    def release(self, n: int = 1) -> None:
        """Open the gate `n` times for gated endpoints."""
        assert self._loop is not None and self._gate is not None
        for _ in range(n):
            self._loop.call_soon_threadsafe(self._gate.release)

    def clear(self) -> None:
        with self._cond:
            self.requests.clear()
            self.events.clear()
            self.ws_messages.clear()

    @property
    def last(self) -> Recorded:
        with self._cond:
            return self.requests[-1]

    # handlers
    async def _echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        self._record(request, body)
        return web.json_response(
            {
                "method": request.method,
                "path": request.path,
                "query": request.query_string,
                "headers": [[k, v] for k, v in request.headers.items()],
                "body": body.decode("utf-8", "replace"),
                "body_len": len(body),
            }
        )

    async def _sse(self, request: web.Request) -> web.StreamResponse:
        self._record(request, b"")
        n = int(request.query.get("n", "3"))
        gated = request.query.get("gated") == "1"
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        assert self._gate is not None
        for i in range(n):
            if gated and i > 0:
                await asyncio.wait_for(self._gate.acquire(), 30)
            await resp.write(f"id: {i}\ndata: event {i}\n\n".encode())
        await resp.write_eof()
        return resp

    async def _upload(self, request: web.Request) -> web.Response:
        gated = request.query.get("gated") == "1"
        h = hashlib.sha256()
        size = 0
        chunks = 0
        body = bytearray()
        async for piece in request.content.iter_any():
            if chunks == 0:
                self._mark("upload:first-chunk")
            chunks += 1
            size += len(piece)
            h.update(piece)
            if len(body) < 1 << 20:
                body += piece
        self._record(request, bytes(body), chunks)
        return web.json_response({"size": size, "sha256": h.hexdigest(), "chunks": chunks, "gated": gated})

    async def _redirect(self, request: web.Request) -> web.Response:
        self._record(request, b"")
        raise web.HTTPFound(request.query.get("to", "/echo"))

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        self._record(request, b"")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str("hello")  # the handshake headers are in self.requests, not echoed into frames
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                with self._cond:
                    self.ws_messages.append(msg.data)
                await ws.send_str("echo: " + msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    async def _reflect(self, request: web.Request) -> web.StreamResponse:
        """Echo the value of header `?header=` back in a response header and in the body.

        `split=N` streams the body in N-byte chunked pieces (values cross chunk boundaries),
        `gzip=1` compresses it, `pad=N` prefixes N filler bytes; otherwise one Content-Length body.
        """
        body_in = await request.read()
        self._record(request, body_in)
        value = request.headers.get(request.query.get("header", "x-api-key"), "")
        pad = b"." * int(request.query.get("pad", "0"))
        text = pad + f'{{"you sent": "{value}", "again": "{value}"}}\n'.encode()
        headers = {"X-Echo": value, "Content-Type": "application/json"}
        if request.query.get("gzip") == "1":
            data = gzip.compress(text)
            headers["Content-Encoding"] = "gzip"
            return web.Response(body=data, headers=headers)
        split = int(request.query.get("split", "0"))
        if split <= 0:
            return web.Response(body=text, headers=headers)
        resp = web.StreamResponse(headers=headers)
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(text), split):
            await resp.write(text[i : i + split])
            await asyncio.sleep(0)
        await resp.write_eof()
        return resp

    async def _status(self, request: web.Request) -> web.Response:
        body = await request.read()
        self._record(request, body)
        code = int(request.match_info["code"])
        return web.json_response({"status": code}, status=code)

    async def _bytes(self, request: web.Request) -> web.Response:
        self._record(request, b"")
        n = int(request.query.get("n", "1024"))
        pattern = (request.query.get("fill", "x") * 1024).encode()[:1024]
        data = (pattern * (n // 1024 + 1))[:n]
        return web.Response(body=data, content_type="application/octet-stream")

    async def _gated(self, request: web.Request) -> web.Response:
        """Answers only once the test calls `release()` (at most 30 s): a slow upstream."""
        self._record(request, b"")
        assert self._gate is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._gate.acquire(), 30)
        return web.json_response({"released": True})

    async def _close(self, request: web.Request) -> web.StreamResponse:
        """A close-delimited response (no Content-Length, no chunking)."""
        self._record(request, b"")
        resp = web.StreamResponse(headers={"Content-Type": "text/plain", "Connection": "close"})
        resp.force_close()
        await resp.prepare(request)
        assert request.transport is not None
        await resp.write(b"until close\n")
        return resp
