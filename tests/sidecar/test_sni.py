"""Server names the TLS layer cannot decode (issue 12, item 9).

Before: a ClientHello whose SNI was not ASCII made CPython's SNI hook print "Exception
ignored in: b'...' ... UnicodeDecodeError" with a traceback on the sidecar's stderr,
outside the JSON log. Now the handshake is still refused (OpenSSL's alert, nothing
forwarded, no leaf served) and the event is one JSON line; the sidecar keeps serving.

Python's ssl module refuses to send such a name, so the ClientHello is built by hand.
"""

from __future__ import annotations

import json
import os
import struct

import pytest

from oshu_contract.session import SecretBinding
from oshu_testkit.rawclient import RawClient
from oshu_testkit.scripted import tls_client
from oshu_testkit.sidecar_process import SidecarProcess
from oshu_testkit.upstreams import HOST, Upstream

TIMEOUT = 10.0


def client_hello(server_name: bytes) -> bytes:
    """A TLS 1.2/1.3 ClientHello record carrying `server_name` as its SNI host name, byte for byte."""
    ciphers = b"\x13\x01\x13\x02\xc0\x2f\xc0\x2b"
    names = b"\x00" + struct.pack(">H", len(server_name)) + server_name
    sni = struct.pack(">HHH", 0, len(names) + 2, len(names)) + names
    groups = b"\x00\x1d\x00\x17"
    sigalgs = b"\x04\x03\x08\x04\x04\x01"
    versions = b"\x04\x03\x04\x03\x03"
    exts = (
        sni
        + struct.pack(">HHH", 10, len(groups) + 2, len(groups))
        + groups
        + struct.pack(">HHH", 13, len(sigalgs) + 2, len(sigalgs))
        + sigalgs
        + struct.pack(">HH", 43, len(versions))
        + versions
    )
    body = (
        b"\x03\x03"
        + os.urandom(32)
        + b"\x00"
        + struct.pack(">H", len(ciphers))
        + ciphers
        + b"\x01\x00"
        + struct.pack(">H", len(exts))
        + exts
    )
    handshake = b"\x01" + struct.pack(">I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack(">H", len(handshake)) + handshake


def stderr_lines(sc: SidecarProcess) -> list[str]:
    return [ln for ln in sc.log_text().splitlines() if ln.strip()]


@pytest.mark.parametrize(
    "name", ["é.oshu.test".encode(), b"api.oshu.test\x80", b"\xff\xfe\xfd", "пример.oshu.test".encode()]
)
def test_a_non_ascii_server_name_is_refused_with_one_json_line(
    name: bytes, sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    assert sidecar.listen is not None
    with RawClient(sidecar.listen, timeout=TIMEOUT) as c:
        assert c.connect(f"{HOST}:443").status == 200
        c.sock.sendall(client_hello(name))
        answer = b""
        for _ in range(100):
            try:
                piece = c.sock.recv(4096)
            except (TimeoutError, ConnectionError):
                break
            if not piece:
                break
            answer += piece
    # Refused: no ServerHello (so no certificate), at most a fatal alert, and the connection closed.
    assert answer == b"" or (answer[:1] == b"\x15" and answer[5:6] == b"\x02"), answer[:16]
    expected = name.decode("ascii", "backslashreplace")
    record = sidecar.wait_for_log(lambda r: r.get("reason") == "sni_not_ascii" and r.get("sni") == expected)
    assert record["msg"] == "client TLS handshake refused: server name is not ASCII"
    lines = stderr_lines(sidecar)
    for line in lines:  # only JSON on stderr: no "Exception ignored", no traceback
        assert isinstance(json.loads(line), dict), line
    assert not any("Traceback" in ln or "Exception ignored" in ln for ln in lines)
    assert upstream.requests == []
    # And the sidecar goes on serving.
    key = keys["API_KEY"]
    with tls_client(sidecar, f"{HOST}:443") as ok:
        resp = ok.request("GET", "/echo/after", {"Host": HOST, "x-api-key": key.sealed})
    assert resp.status == 200 and upstream.last.header("x-api-key") == key.value


def test_an_ascii_server_name_naming_another_host_still_gets_421(
    sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    """The ASCII path is unchanged: the name reaches the proxy's check and a mismatch is refused."""
    key = keys["API_KEY"]
    with tls_client(sidecar, f"{HOST}:443", sni="other.oshu.test") as c:
        resp = c.request("GET", "/echo/x", {"Host": HOST, "x-api-key": key.sealed})
    assert resp.status == 421
    assert upstream.requests == []


CHILD = r"""
import threading, warnings
from oshu_sidecar.logs import setup_logging
setup_logging()

class Finalizer:
    def __del__(self):
        raise ValueError("from a finalizer")

Finalizer()
t = threading.Thread(target=lambda: 1 / 0, name="worker")
t.start()
t.join()
warnings.warn("a warning")
"""


def test_whatever_python_would_print_on_stderr_is_a_json_line() -> None:
    """The class of item 9: ignored exceptions, a thread's uncaught exception and warnings, each one JSON line."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stderr.splitlines() if line.strip()]
    assert [r["msg"] for r in records][:2] == ["exception ignored", "uncaught exception in a thread"]
    assert records[0]["error"] == "ValueError: from a finalizer"
    assert records[1]["thread"] == "worker" and records[1]["error"].startswith("ZeroDivisionError")
    assert any("a warning" in r["msg"] for r in records[2:])
