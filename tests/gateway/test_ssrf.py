"""The gateway never connects to loopback, private, link-local or metadata addresses for a session.

A shared gateway sits where sandboxes cannot: without this guard a session could tunnel to the
gateway's own loopback services or a cloud metadata endpoint by naming them. Addresses pinned by
the operator (--resolve/--connect-to) and --allow-upstream-cidr ranges are the exceptions.
"""

from __future__ import annotations

import base64
import socket
import threading
from collections.abc import Iterator

import pytest

from oshu_testkit.gateway_process import GatewayProcess


class Listener:
    """A loopback TCP server that only counts the connections that reach it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    lst = Listener()
    yield lst
    lst.close()


def _connect(gw: GatewayProcess, target: str) -> bytes:
    s = gw.create_session({"secrets": {"API_KEY": {"value": "sk-ssrf-" + "q" * 24, "hosts": ["api.oshu.test"]}}})
    cred = base64.b64encode(f"{s['session_id']}:{s['token']}".encode()).decode()
    assert gw.plain_listen is not None
    with socket.create_connection(gw.plain_listen, timeout=10) as sock:
        sock.sendall(
            f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Basic {cred}\r\n\r\n".encode()
        )
        return sock.recv(65536)


def test_internal_destinations_refused(listener: Listener) -> None:
    with GatewayProcess(catch_all=False) as gw:
        for target in (
            f"127.0.0.1:{listener.port}",
            f"localhost:{listener.port}",
            f"[::ffff:127.0.0.1]:{listener.port}",
        ):  # metadata and private ranges: the unit table (tests/sidecar/test_addresses.py); no packet
            # to a non-loopback address is ever risked here
            answer = _connect(gw, target)
            assert answer.startswith(b"HTTP/1.1 403"), (target, answer[:200])
            assert b"upstream_address_denied" in answer
        assert listener.accepted == 0
        # the gateway still serves: its API answers after the refusals
        assert gw.request("GET", "/healthz")[0] == 200


def test_allow_upstream_cidr_is_the_operators_exception(listener: Listener) -> None:
    with GatewayProcess(catch_all=False, extra_args=["--allow-upstream-cidr", "127.0.0.0/8"]) as gw:
        assert _connect(gw, f"127.0.0.1:{listener.port}").startswith(b"HTTP/1.1 200")
    assert listener.accepted == 1
