"""Admin endpoints: /metrics, /healthz, /readyz, on their own listener.

Kept off the proxy port so an agent sending requests through the proxy can never reach
them by accident, and so probes do not depend on the proxy's request path.

Three GET endpoints do not need a web framework: this is a small asyncio Protocol on
the proxy's own HTTP/1.1 head parser. (aiohttp served these at first; it cost 11 MB of
resident memory and ~150 ms of start-up, a fifth of the sidecar's budget for both.)
"""

from __future__ import annotations

import asyncio
import json
from typing import Callable

from .errors import error_response
from .http1 import HttpError, parse_request_head
from .metrics import Metrics

MAX_HEAD = 8192
#: Prometheus text exposition format, as prometheus-client serves it.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _response(status: int, reason: str, body: bytes, content_type: str) -> bytes:
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            "Cache-Control: no-store\r\n\r\n").encode() + body


class AdminApp:
    """Routes for the admin listener; each handler returns a complete response."""

    def __init__(self, metrics: Metrics, ready: Callable[[], bool], status: Callable[[], dict[str, object]]) -> None:
        self.metrics = metrics
        self.ready = ready
        self.status = status

    def handle(self, method: bytes, path: bytes) -> bytes:
        path = path.split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return error_response(405, "method_not_allowed", "admin endpoints answer GET only")
        if path == b"/metrics":
            return _response(200, "OK", self.metrics.render(), METRICS_CONTENT_TYPE)
        if path == b"/healthz":
            return _response(200, "OK", b'{"status":"ok"}\n', "application/json")
        if path == b"/readyz":
            if self.ready():
                body = json.dumps({"status": "ready", **self.status()}).encode() + b"\n"
                return _response(200, "OK", body, "application/json")
            return _response(503, "Service Unavailable", b'{"status":"starting"}\n', "application/json")
        return error_response(404, "not_found", "admin endpoints: /metrics, /healthz, /readyz")


class _AdminProtocol(asyncio.Protocol):
    """One admin connection. Closed after `timeout` seconds without a complete request: the
    admin port is reachable from the agent's container, and half-sent heads must not pile up."""

    def __init__(self, app: AdminApp, timeout: float) -> None:
        self.app = app
        self.timeout = timeout
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(self.timeout, self._expire)

    def _expire(self) -> None:
        self._timer = None
        if self.transport is not None and not self.transport.is_closing():
            if self.buf:
                self.transport.write(error_response(408, "request_timeout", "request head not received in time", True))
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    self.transport.write(error_response(431, "headers_too_large", "request head too large", True))
                    self.transport.close()
                return
            raw, self.buf = self.buf[: end + 4], self.buf[end + 4:]
            try:
                req = parse_request_head(raw)
            except HttpError as e:
                self.transport.write(error_response(e.status, e.code, e.message, close=True))
                self.transport.close()
                return
            response = self.app.handle(req.method, req.target)
            if req.method == b"HEAD":
                response = response[: response.find(b"\r\n\r\n") + 4]
            self.transport.write(response)
            if not req.keep_alive or req.framing:  # admin requests have no bodies
                self.transport.close()
                return
            self._arm()


class AdminServer:
    """Explicit lifecycle: start() binds, stop() closes."""

    def __init__(self, app: AdminApp, host: str, port: int, timeout: float = 10.0) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.timeout = timeout
        self.server: asyncio.AbstractServer | None = None
        self.address: tuple[str, int] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _AdminProtocol(self.app, self.timeout), self.host, self.port,
                                               reuse_address=True)
        self.address = self.server.sockets[0].getsockname()[:2]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
