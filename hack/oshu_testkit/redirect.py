"""Helpers for redirect-enforcement tests: install the rules in a namespace, probe as the agent's uid,
and a stand-in for the sidecar's transparent listener (what the rules deliver, without the sidecar).

Used by tests/enforcement and bench/redirect_bench.py; see oshu_testkit.netns for the namespaces.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import threading
from pathlib import Path

from oshu_sidecar import netrules

from .netns import RESOLVER, Topology, entered, run_in

PROBE = Path(__file__).with_name("netprobe.py")
#: The agent's Python: the system one (stdlib only), as an unprivileged uid can execute it from any
#: directory; the project's venv interpreter lives under /root.
CLIENT_PYTHON = "/usr/bin/python3"
AGENT_UID = 1000
PROXY_UID = 65532
TRANSPARENT_PORT = 15001
#: What the stand-in transparent listener answers a redirected canary connection with (T1's CANARY_BANNER).
BANNER = b"OSHU-VAULT-REDIRECT-OK\n"
CANARY = ("192.0.2.1", 9)


def install(topo: Topology, *args: str) -> int:
    """`oshu-vault-netrules` in the agent namespace (in-process: its nft child inherits the namespace)."""
    with entered(topo.agent):
        return netrules.main(["--dns-server", RESOLVER, *args])


def remove_rules(topo: Topology) -> None:
    run_in(topo.agent, ["nft", "delete", "table", "inet", "oshu_vault"])


def listing(topo: Topology) -> str:
    p = run_in(topo.agent, ["nft", "list", "table", "inet", "oshu_vault"])
    assert p.returncode == 0, p.stderr
    return p.stdout


def probe(topo: Topology, kind: str, host: str, port: int, send: str = "", uid: int = AGENT_UID) -> dict[str, object]:
    """A raw socket probe (oshu_testkit/netprobe.py) as `uid` in the agent namespace, no proxy variables."""
    env = {"PATH": "/usr/bin:/bin"}
    argv = topo.cmd([CLIENT_PYTHON, str(PROBE), kind, host, str(port), *([send] if send else [])], uid=uid, env=env)
    p = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    out: dict[str, object] = json.loads(p.stdout or '{"ok": false, "error": "no output"}')
    out.setdefault("stderr", p.stderr[-500:])
    return out


def original_dst(sock: socket.socket) -> tuple[str, int]:
    """SO_ORIGINAL_DST (IPv4) / IP6T_SO_ORIGINAL_DST (IPv6) of a redirected connection."""
    if sock.family == socket.AF_INET6:
        raw = sock.getsockopt(socket.IPPROTO_IPV6, 80, 28)
        port = struct.unpack("!H", raw[2:4])[0]
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
    raw = sock.getsockopt(socket.IPPROTO_IP, 80, 16)
    return socket.inet_ntoa(raw[4:8]), struct.unpack("!H", raw[2:4])[0]


class StandIn:
    """A plain listener on the transparent port (loopback, both families) in the agent namespace.

    Answers `ORIG <addr> <port>` with each connection's original destination, or the canary banner:
    what the rules deliver, without the sidecar.
    """

    def __init__(self, ns: str, port: int = TRANSPARENT_PORT) -> None:
        self.seen: list[tuple[str, int]] = []
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        with entered(ns):
            for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
                s = socket.socket(family, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((host, port))
                s.listen(16)
                s.settimeout(0.2)
                self._socks.append(s)
        for s in self._socks:
            t = threading.Thread(target=self._loop, args=(s,), daemon=True)
            t.start()
            self._threads.append(t)

    def _loop(self, s: socket.socket) -> None:
        while s.fileno() >= 0:
            try:
                conn, _ = s.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                dst = original_dst(conn)
                self.seen.append(dst)
                conn.sendall(BANNER if dst == CANARY else f"ORIG {dst[0]} {dst[1]}\n".encode())

    def close(self) -> None:
        for s in self._socks:
            s.close()
        for t in self._threads:
            t.join(2)
