"""A blocking raw-socket client for protocol-level tests of the proxy (malformed input, SNI, pipelining)."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class RawResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    raw_head: bytes = b""

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def json(self) -> Any:
        return json.loads(self.body)


class RawClient:
    """A blocking socket to the proxy for protocol-level tests (malformed input, SNI games, pipelining).

    `connect(authority)` sends CONNECT; `start_tls(server_name)` wraps the tunnel with TLS
    trusting `ca_file` (the session CA); `send()` writes raw bytes; `response()` reads one
    HTTP/1.1 response (Content-Length, chunked, close-delimited or body-less).
    """

    def __init__(self, address: tuple[str, int] | None, timeout: float = 10.0) -> None:
        # None: the address of a process not started (SidecarProcess.listen before start()).
        if address is None:
            raise ValueError("no address to connect to: is the process started?")
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection(address, timeout=timeout)
        self._buf = b""

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def connect(self, authority: str) -> RawResponse:
        self.send(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        return self.response(method="CONNECT")

    def start_tls(self, server_name: str | None, ca_file: Path | str, check_hostname: bool = True) -> None:
        ctx = ssl.create_default_context(cafile=str(ca_file))
        ctx.check_hostname = check_hostname and server_name is not None
        if not ctx.check_hostname:
            ctx.verify_mode = ssl.CERT_NONE  # only for SNI mismatch tests: the proxy is what is under test
        assert not self._buf, "bytes after the CONNECT response"
        self.sock = ctx.wrap_socket(self.sock, server_hostname=server_name)

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self._buf += data
        return True

    def _line(self) -> bytes:
        while b"\r\n" not in self._buf:
            if not self._fill():
                raise ConnectionError("connection closed inside a line")
        line, self._buf = self._buf.split(b"\r\n", 1)
        return line

    def closed_by_peer(self) -> bool:
        """True if the proxy has closed the connection (EOF or reset) and sent nothing more."""
        try:
            return not self._buf and not self._fill()
        except (ConnectionError, ssl.SSLError):
            return True

    def response(self, method: str = "GET") -> RawResponse:
        while b"\r\n\r\n" not in self._buf:
            if not self._fill():
                raise ConnectionError(f"connection closed before a complete response head: {self._buf[:200]!r}")
        head, self._buf = self._buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        _, status, reason = ([*lines[0].split(" ", 2), ""])[:3]
        headers = [(k.strip(), v.strip()) for k, _, v in (ln.partition(":") for ln in lines[1:])]
        resp = RawResponse(int(status), reason, headers, b"", head)
        code = resp.status
        te = (resp.header("transfer-encoding") or "").lower()
        if method in ("HEAD",) or code < 200 or code in (204, 304) or (method == "CONNECT" and code == 200):
            return resp
        if te == "chunked":
            body = b""
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line():
                        pass
                    break
                while len(self._buf) < size + 2:
                    if not self._fill():
                        raise ConnectionError("closed inside a chunk")
                body += self._buf[:size]
                self._buf = self._buf[size + 2 :]
            resp.body = body
        elif resp.header("content-length") is not None:
            n = int(resp.header("content-length") or 0)
            while len(self._buf) < n:
                if not self._fill():
                    raise ConnectionError("closed inside the body")
            resp.body, self._buf = self._buf[:n], self._buf[n:]
        else:
            while self._fill():
                pass
            resp.body, self._buf = self._buf, b""
        return resp

    def request(
        self, method: str, target: str, headers: Mapping[str, str] | Sequence[tuple[str, str]] = (), body: bytes = b""
    ) -> RawResponse:
        items = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
        if body and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in items):
            items.append(("Content-Length", str(len(body))))
        head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in items) + "\r\n"
        self.send(head.encode("latin-1") + body)
        return self.response(method)
