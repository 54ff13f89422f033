"""Start-up probes: poll /readyz, or a full proxied request, until it succeeds.

Used only for start-up time, where a Python client's speed does not matter:
each attempt is one small request and the poll interval is 5 ms.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from pathlib import Path


def _read_head(sock: socket.socket | ssl.SSLSocket, limit: int = 65536) -> bytes:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            break
        buf += chunk
        if len(buf) > limit:
            break
    return buf


def _status(head: bytes) -> int:
    try:
        return int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0


def readyz(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            return _status(_read_head(s)) == 200
    except OSError:
        return False


def proxied_request(proxy_port: int, target: str, ca: Path, sealed: str, proxy_auth: str = "") -> int:
    """One CONNECT (with `Proxy-Authorization: proxy_auth` if given) + TLS (verified against the proxy CA)
    + GET; returns the status."""
    host = target.rsplit(":", 1)[0]
    ctx = ssl.create_default_context(cafile=str(ca))
    auth = f"Proxy-Authorization: {proxy_auth}\r\n" if proxy_auth else ""
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=5) as raw:
        raw.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n".encode())
        head = b""
        while not head.endswith(b"\r\n\r\n"):  # byte-wise: TLS follows on this socket
            b = raw.recv(1)
            if not b:
                return 0
            head += b
        if _status(head) != 200:
            return _status(head)
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(
                f"GET / HTTP/1.1\r\nHost: {target}\r\nx-api-key: {sealed}\r\nConnection: close\r\n\r\n".encode()
            )
            return _status(_read_head(tls))


def wait_until(check, proc: subprocess.Popen, timeout: float) -> float:
    """Seconds until check() is true; raises if the process dies or time runs out."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before ready")
        try:
            if check():
                return time.perf_counter() - start
        except (OSError, ssl.SSLError):
            pass
        time.sleep(0.005)
    raise TimeoutError(f"not ready after {timeout}s")
