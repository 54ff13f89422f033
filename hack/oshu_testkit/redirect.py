"""Helpers for redirect-enforcement tests: install the rules in a namespace, probe as the agent's uid,
and a stand-in for the sidecar's transparent listener (what the rules deliver, without the sidecar).

Used by tests/enforcement and bench/redirect_bench.py; see oshu_testkit.netns for the namespaces.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

from oshu_e2e.paths import REPO_ROOT
from oshu_sidecar import netrules
from oshu_sidecar.config import REDIRECT_CANARY

from .netns import RESOLVER, Topology, as_user, entered, run_in
from .sidecar_process import SidecarProcess

PROBE = Path(__file__).with_name("netprobe.py")
#: The agent's Python: the system one (stdlib only), as an unprivileged uid can execute it from any
#: directory; the project's venv interpreter lives under /root.
CLIENT_PYTHON = "/usr/bin/python3"
AGENT_UID = 1000
PROXY_UID = 65532
TRANSPARENT_PORT = 15001
#: What the stand-in transparent listener answers a redirected canary connection with (T1's CANARY_BANNER).
BANNER = b"OSHU-VAULT-REDIRECT-OK\n"
CANARY = REDIRECT_CANARY


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


# -- the real sidecar in the agent namespace, and clients with no proxy variable -------------------

GO = "/usr/local/go/bin/go"
GO_CLIENT_SRC = REPO_ROOT / "tests" / "enforcement" / "goclient"
#: World-readable, so the agent's uid can run the binary (root's caches are not).
GO_CLIENT_CACHE = Path("/var/tmp/oshu-vault-goclient")


def go_client() -> Path:
    """tests/enforcement/goclient built once per source hash (no dependencies: offline)."""
    digest = hashlib.sha256()
    for f in sorted(GO_CLIENT_SRC.iterdir()):
        if f.suffix in (".go", ".mod"):
            digest.update(f.name.encode() + b"\0" + f.read_bytes())
    out_dir = GO_CLIENT_CACHE / digest.hexdigest()[:16]
    binary = out_dir / "goclient"
    if binary.is_file():
        return binary
    out_dir.mkdir(parents=True, exist_ok=True)
    for d in (GO_CLIENT_CACHE, out_dir):
        d.chmod(0o755)
    tmp = out_dir / f"goclient.{os.getpid()}.tmp"
    env = {**os.environ, "CGO_ENABLED": "0", "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"}
    p = subprocess.run(
        [GO, "build", "-trimpath", "-o", str(tmp), "."],
        cwd=GO_CLIENT_SRC,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if p.returncode != 0:
        raise RuntimeError(f"go build of the Go client failed: {p.stderr[-2000:]}")
    tmp.chmod(0o755)
    tmp.replace(binary)
    return binary


def client_ca_dir(pems: list[bytes]) -> Path:
    """A world-readable directory with `ca.pem` (what an agent container's CA mount shows)."""
    d = Path(tempfile.mkdtemp(prefix="oshu-agent-ca-"))
    d.chmod(0o755)
    (d / "ca.pem").write_bytes(b"".join(pems))
    (d / "ca.pem").chmod(0o644)
    return d


def agent_env(ca_file: Path) -> dict[str, str]:
    """The agent's whole environment: CA variables for each client, and NO proxy variable at all."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/tmp",
        "SSL_CERT_FILE": str(ca_file),
        "CURL_CA_BUNDLE": str(ca_file),
        "REQUESTS_CA_BUNDLE": str(ca_file),
        "NODE_EXTRA_CA_CERTS": str(ca_file),
    }


class NetnsSidecar(SidecarProcess):
    """The real sidecar in the agent namespace as the proxy uid; its admin port is reached from inside.

    Its directory is made the proxy uid's (0700): the agent's uid cannot read the session file.
    """

    def __init__(self, netns: str, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.netns = netns
        self.args = ["ip", "netns", "exec", netns, *as_user(PROXY_UID, []), *self.args]
        subprocess.run(["chown", "-R", f"{PROXY_UID}:{PROXY_UID}", str(self.directory)], check=True, timeout=30)
        self.directory.chmod(0o700)

    def admin_get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        with entered(self.netns):
            return super().admin_get(path, timeout)
