"""An upstream that misbehaves on purpose, and a raw TLS client through the proxy.

`ScriptedUpstream` answers each request with raw bytes from a function (`respond(head, body)`):
it can echo a key in a trailer, an interim response, a reason phrase or a header name, where
the aiohttp `Upstream` of `upstreams` is too well-behaved to.
"""

from __future__ import annotations

import functools
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

from .ca import TestCA
from .rawclient import RawClient
from .sidecar_process import SidecarProcess

TIMEOUT = 10.0


class ScriptedUpstream:
    """A TLS server on 127.0.0.1 answering each request with `respond(head, body)` (raw bytes).

    Records every request as received (head, body). Connections are kept alive until the
    peer closes or `respond` returns a response with `Connection: close`.
    """

    def __init__(self, directory: Path, names: list[str], respond: Callable[[bytes, bytes], bytes]) -> None:
        self.ca = TestCA.new("oshu scripted upstream CA").write(directory, "scripted-ca")
        pair = self.ca.issue(names)
        pem = directory / "scripted-leaf.pem"
        pem.write_bytes(pair.cert_pem + pair.key_pem)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(pem)
        self.respond = respond
        self.received: list[tuple[bytes, bytes]] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> ScriptedUpstream:
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in list(self._threads):
            t.join(TIMEOUT)
        self.sock.close()

    def connect_to(self, hosts: list[str]) -> list[str]:
        return [f"{h}:443:127.0.0.1:{self.port}" for h in hosts]

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            t = threading.Thread(target=self._serve, args=(raw,), daemon=True)
            t.start()
            self._threads.append(t)

    def _recv_into(self, conn: ssl.SSLSocket, buf: bytes, done: Callable[[bytes], bool]) -> bytes | None:
        for _ in range(100_000):
            if done(buf):
                return buf
            data = conn.recv(65536)
            if not data:
                return None
            buf += data
        return None

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(TIMEOUT)
        try:
            conn = self.ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        buf: bytes | None = b""
        try:
            for _ in range(100):  # requests per connection (bounded)
                buf = self._recv_into(conn, buf or b"", lambda b: b"\r\n\r\n" in b)
                if buf is None:
                    return
                head, buf = buf.split(b"\r\n\r\n", 1)
                head += b"\r\n\r\n"
                lower = head.lower()
                body = b""
                if b"transfer-encoding: chunked" in lower:
                    buf = self._recv_into(conn, buf, lambda b: b.endswith(b"0\r\n\r\n"))
                    if buf is None:
                        return
                    body, buf = buf, b""
                elif b"content-length:" in lower:
                    n = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
                    buf = self._recv_into(conn, buf, functools.partial(_at_least, n))
                    if buf is None:
                        return
                    body, buf = buf[:n], buf[n:]
                self.received.append((head, body))
                out = self.respond(head, body)
                conn.sendall(out)
                if b"connection: close" in out.split(b"\r\n\r\n")[0].lower():
                    return
        except (OSError, ssl.SSLError, ValueError):
            return
        finally:
            conn.close()


def _at_least(n: int, data: bytes) -> bool:
    return len(data) >= n


def header_value(head: bytes, name: bytes) -> bytes:
    """The first value of field `name` (lower case) in a raw head, or b""."""
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == name:
            return v.strip()
    return b""


def tls_client(sc: SidecarProcess, authority: str, sni: str | None = None, timeout: float = TIMEOUT) -> RawClient:
    """CONNECT `authority` through the proxy, then TLS trusting the session CA (SNI: the host, or `sni`,
    then without checking the certificate's name: only the proxy's SNI check is under test)."""
    assert sc.listen is not None, "not started"
    c = RawClient(sc.listen, timeout=timeout)
    assert c.connect(authority).status == 200
    name = sni or authority.rsplit(":", 1)[0]
    ctx = ssl.create_default_context(cafile=str(sc.ca_cert_file))
    if name != authority.rsplit(":", 1)[0]:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    c.sock = ctx.wrap_socket(c.sock, server_hostname=name)
    return c


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
