"""Admin endpoints: /metrics, /healthz, /readyz, on their own listener.

Kept off the proxy port so an agent sending requests through the proxy can never reach
them by accident, and so probes do not depend on the proxy's request path.

Three GET endpoints do not need a web framework: this is a small asyncio Protocol on
the proxy's own HTTP/1.1 head parser. (aiohttp served these at first; it cost 11 MB of
resident memory and ~150 ms of start-up, a fifth of the sidecar's budget for both.)

The port is reachable from the agent's container and shares the event loop with the proxy,
so a connection is served one request at a time, one per turn of the loop: pipelined
requests wait in a bounded input buffer (reading pauses past `MAX_INPUT`), nothing more is
served while a response is still unsent (reading pauses too), and `Metrics.render` reuses
its output. A client that sends thousands of requests in one write and never reads costs a
few responses' worth of memory and a render at most, and is dropped after `timeout`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import cast

from .errors import ProxyError
from .http1 import parse_request_head
from .metrics import Metrics
from .transparent import CANARY_BANNER

MAX_HEAD = 8192
#: Unserved (pipelined) input held per connection; reading pauses beyond it.
MAX_INPUT = 2 * MAX_HEAD
#: Prometheus text exposition format, as prometheus-client serves it.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: What the transparent listener answers a redirected canary connection with.
REDIRECT_BANNER = CANARY_BANNER


def _response(status: int, reason: str, body: bytes, content_type: str) -> bytes:
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n\r\n"
    ).encode() + body


class AdminApp:
    """Routes for the admin listener; each handler returns a complete response."""

    def __init__(
        self,
        metrics: Metrics,
        ready: Callable[[], bool],
        status: Callable[[], dict[str, object]],
        redirect: RedirectCheck | None = None,
    ) -> None:
        self.metrics = metrics
        self.ready = ready
        self.status = status
        self.redirect = redirect

    def handle(self, method: bytes, path: bytes) -> bytes:
        path = path.split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return ProxyError("method_not_allowed", "admin endpoints answer GET only").response()
        if path == b"/metrics":
            return _response(200, "OK", self.metrics.render(), METRICS_CONTENT_TYPE)
        if path == b"/healthz":
            return _response(200, "OK", b'{"status":"ok"}\n', "application/json")
        if path == b"/readyz":
            if self.ready() and self.redirect is not None and not self.redirect.ok():
                body = b'{"status":"redirect_missing"}\n'  # --require-redirect: the pod's rules are not there
                return _response(503, "Service Unavailable", body, "application/json")
            if self.ready():
                body = json.dumps({"status": "ready", **self.status()}).encode() + b"\n"
                return _response(200, "OK", body, "application/json")
            return _response(503, "Service Unavailable", b'{"status":"starting"}\n', "application/json")
        return ProxyError("not_found", "admin endpoints: /metrics, /healthz, /readyz").response()


class RedirectCheck:
    """Readiness under `--require-redirect`: are the pod's redirect rules in place?

    The rules send connections to the canary address from every uid, the sidecar's included,
    to the transparent listener, which answers with `REDIRECT_BANNER`; without them the connect
    fails or times out. /readyz must not block the event loop, so `ok()` answers from the last
    probe and starts a new one (bounded by `timeout`) when that result is older than `ttl`
    (`retry` after a failure, so readiness follows the rules' arrival quickly).
    """

    def __init__(self, canary: tuple[str, int], timeout: float = 1.0, ttl: float = 5.0, retry: float = 0.5) -> None:
        self.canary = canary
        self.timeout = timeout
        self.ttl = ttl
        self.retry = retry
        self.result = False
        self.checked_at = -float("inf")
        self.probes = 0
        self._task: asyncio.Task[None] | None = None

    def ok(self) -> bool:
        age = time.monotonic() - self.checked_at
        if age >= (self.ttl if self.result else self.retry):
            self.start()
        return self.result

    def start(self) -> None:
        """Start a probe unless one is running (needs a running loop)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._refresh())

    async def _refresh(self) -> None:
        self.result = await probe_canary(self.canary, self.timeout)
        self.checked_at = time.monotonic()
        self.probes += 1

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()


async def probe_canary(canary: tuple[str, int], timeout: float) -> bool:
    """Connect to the canary and read the banner, all within `timeout` seconds."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(*canary)
            data = await reader.readexactly(len(REDIRECT_BANNER))
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False
    finally:
        if writer is not None:
            writer.close()
    return data == REDIRECT_BANNER


class _AdminProtocol(asyncio.Protocol):
    """One admin connection, served one request per loop turn with backpressure both ways.

    Closed (aborted if it does not read) after `timeout` seconds without a complete request
    served: half-sent heads, and clients that never read their responses, must not pile up.
    """

    def __init__(self, app: AdminApp, timeout: float, connections: set[_AdminProtocol]) -> None:
        self.app = app
        self.timeout = timeout
        self.connections = connections
        self.buf = b""
        self.served = 0
        self.transport: asyncio.Transport | None = None
        self.reading_paused = False
        self.writing_paused = False
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a stream server's transport (uvloop's too)
        # pause_writing() as soon as any byte of a response is left unsent.
        self.transport.set_write_buffer_limits(high=0)
        self.connections.add(self)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        self.buf = b""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(self.timeout, self._expire)

    def _expire(self) -> None:
        self._timer = None
        if self.transport is None or self.transport.is_closing():
            return
        if self.writing_paused:  # it does not read: close() would wait for it forever
            self.transport.abort()
            return
        if self.buf:
            timeout = ProxyError("request_timeout", "request head not received in time")
            self.transport.write(timeout.response(close=True))
        self.transport.close()

    # -- flow control ---------------------------------------------------------------------
    def pause_writing(self) -> None:
        self.writing_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._schedule()

    def _pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None and not self.transport.is_closing():
            self.reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None and not self.transport.is_closing():
            self.reading_paused = False
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) > MAX_INPUT:
            self._pause_reading()
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled and not self.writing_paused:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._serve_one)

    # -- one request ------------------------------------------------------------------------
    def _serve_one(self) -> None:
        self._scheduled = False
        transport = self.transport
        if transport is None or transport.is_closing() or self.writing_paused:
            return
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > MAX_HEAD:
                transport.write(ProxyError("headers_too_large", "request head too large").response(close=True))
                transport.close()
            else:
                self._resume_reading()
            return
        raw, self.buf = self.buf[: end + 4], self.buf[end + 4 :]
        try:
            req = parse_request_head(raw)
        except ProxyError as e:
            transport.write(e.response(close=True))
            transport.close()
            return
        response = self.app.handle(req.method, req.target)
        if req.method == b"HEAD":
            response = response[: response.find(b"\r\n\r\n") + 4]
        self.served += 1
        transport.write(response)  # may call pause_writing(): then nothing more until it is read
        if not req.keep_alive or req.framing:  # admin requests have no bodies
            transport.close()
            return
        self._arm()
        if self.buf:
            self._schedule()  # the next pipelined request, on a later turn of the loop
        elif not self.writing_paused:
            self._resume_reading()


class AdminServer:
    """Explicit lifecycle: start() binds, stop() closes."""

    def __init__(self, app: AdminApp, host: str, port: int, timeout: float = 10.0) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.timeout = timeout
        self.server: asyncio.AbstractServer | None = None
        self.address: tuple[str, int] | None = None
        #: Open admin connections (their buffers are bounded: tests and diagnostics read them).
        self.connections: set[_AdminProtocol] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: _AdminProtocol(self.app, self.timeout, self.connections), self.host, self.port, reuse_address=True
        )
        self.address = self.server.sockets[0].getsockname()[:2]

    async def stop(self) -> None:
        if self.app.redirect is not None:
            await self.app.redirect.stop()
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
