"""The transparent listener end to end, in a network namespace this module creates.

The namespace has loopback, a veth pair carrying 10.250.0.1/24 and fd00:250::1/64 (addresses
that exist only there) with default routes over it, and one nftables rule set: the canary
address from every uid, then every TCP connection of any uid but the sidecar's (65532) that
does not stay on loopback, is redirected to the transparent port. The sidecar runs there as
uid 65532; the local HTTPS upstream and the clients (curl, Python sockets) run there as root,
with no proxy variable at all: they dial addresses of the namespace with the real name pinned
(curl --resolve) and get intercepted, tunnelled, or reset by the same policy as CONNECT.
"""

from __future__ import annotations

import ctypes
import os
import queue
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from oshu_contract.session import SecretBinding
from oshu_sidecar.config import TRANSPARENT_PORT
from oshu_sidecar.transparent import decode_original_dst
from oshu_testkit.clientenv import without_proxy_env
from oshu_testkit.leaks import scan_sidecar
from oshu_testkit.sessions import new_secret, new_session
from oshu_testkit.sidecar_process import SidecarProcess
from oshu_testkit.upstreams import UPSTREAM_NAMES, Upstream

T = TypeVar("T")
PROXY_UID = 65532
PORT = TRANSPARENT_PORT
HOST = "api.oshu.test"  # API_KEY is substituted here
TUNNEL = "tunnel.oshu.test"  # egress-allowed, no secret: blind tunnel
DENIED = "denied.oshu.test"  # neither
V4 = "10.250.0.2"  # nothing listens there: only the redirect makes a connection succeed
V6 = "fd00:250::2"
_CLONE_NEWNET = 0x40000000
_WAIT = 20.0

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("nft") is None, reason="needs root and nft")


def run(*args: str, timeout: float = _WAIT, check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(args)} -> {p.returncode}: {p.stderr}")
    return p


class Netns:
    """A named network namespace (`ip netns`); `call` runs a function on a thread inside it."""

    def __init__(self) -> None:
        self.name = f"oshu-t1-{secrets.token_hex(4)}"

    def create(self) -> Netns:
        run("ip", "netns", "add", self.name)
        ns = ("ip", "-n", self.name)
        run(*ns, "link", "set", "lo", "up")
        run(*ns, "link", "add", "t1a", "type", "veth", "peer", "name", "t1b")
        run(*ns, "link", "set", "t1a", "up")
        run(*ns, "link", "set", "t1b", "up")
        run(*ns, "addr", "add", "10.250.0.1/24", "dev", "t1a")
        run(*ns, "-6", "addr", "add", "fd00:250::1/64", "dev", "t1a", "nodad")
        run(*ns, "route", "add", "default", "dev", "t1a")
        run(*ns, "-6", "route", "add", "default", "dev", "t1a")
        rules = f"""table inet t1 {{
  chain out {{
    type nat hook output priority -100; policy accept;
    ip daddr 192.0.2.1 tcp dport 9 redirect to :{PORT}
    meta skuid {PROXY_UID} accept
    oif lo accept
    meta l4proto tcp redirect to :{PORT}
  }}
}}
"""
        p = subprocess.run(
            ["ip", "netns", "exec", self.name, "nft", "-f", "-"],
            input=rules,
            capture_output=True,
            text=True,
            timeout=_WAIT,
        )
        assert p.returncode == 0, p.stderr
        return self

    def delete(self) -> None:
        run("ip", "netns", "del", self.name, check=False)

    def call(self, fn: Callable[[], T], timeout: float = _WAIT) -> T:
        """fn() on a new thread that entered the namespace (threads it starts stay there too)."""
        out: queue.Queue[tuple[bool, Any]] = queue.Queue()

        def body() -> None:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                with open(f"/run/netns/{self.name}") as f:
                    if libc.setns(f.fileno(), _CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns failed")
                out.put((True, fn()))
            except BaseException as e:  # handed to the caller
                out.put((False, e))

        threading.Thread(target=body, daemon=True, name=f"in-{self.name}").start()
        ok, value = out.get(timeout=timeout)
        if not ok:
            raise value
        return value

    def exec(self, *args: str, timeout: float = _WAIT) -> subprocess.CompletedProcess[str]:
        env = without_proxy_env(os.environ)
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *args], capture_output=True, text=True, timeout=timeout, env=env
        )


class NetnsSidecar(SidecarProcess):
    """The sidecar inside the namespace as uid 65532; its admin endpoint is reached from inside too."""

    def __init__(self, ns: Netns, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.ns = ns
        uid = str(PROXY_UID)
        prefix = ["ip", "netns", "exec", ns.name, "setpriv", "--reuid", uid, "--regid", uid, "--clear-groups"]
        self.args = prefix + self.args
        run("chown", "-R", f"{uid}:{uid}", str(self.directory))

    def admin_get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        return self.ns.call(lambda: SidecarProcess.admin_get(self, path, timeout), timeout + 5)


@pytest.fixture(scope="module")
def ns() -> Iterator[Netns]:
    n = Netns()
    try:
        yield n.create()
    finally:
        n.delete()


@pytest.fixture(scope="module")
def base_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="oshu-t1-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def upstream(ns: Netns, base_dir: Path) -> Iterator[Upstream]:
    """The test upstream on the namespace's loopback (its CA readable by the sidecar's uid)."""
    up = ns.call(lambda: Upstream(names=UPSTREAM_NAMES, directory=base_dir / "upstream").start())
    (base_dir / "upstream").chmod(0o755)
    try:
        yield up
    finally:
        up.stop()


@pytest.fixture(autouse=True)
def _clean_upstream(upstream: Upstream) -> None:
    upstream.clear()


@pytest.fixture(scope="module")
def key() -> SecretBinding:
    return new_secret("API_KEY", [HOST])


@pytest.fixture(scope="module")
def sidecar(ns: Netns, upstream: Upstream, key: SecretBinding, base_dir: Path) -> Iterator[NetnsSidecar]:
    session = new_session(key, egress=[TUNNEL, f"{HOST}:80"])
    sc = NetnsSidecar(
        ns,
        session,
        upstream=upstream,
        hosts=[HOST, TUNNEL, DENIED],
        directory=base_dir / "sidecar",
        extra_args=[
            "--transparent-listen",
            f"127.0.0.1:{PORT}",
            "--transparent-listen",
            f"[::1]:{PORT}",
            "--header-timeout",
            "1",
        ],
    )
    with sc:
        yield sc
        scan_sidecar(sc, [key.value])
    assert sc.returncode == 0, sc.log_text()[-3000:]


def curl(ns: Netns, *args: str) -> subprocess.CompletedProcess[str]:
    return ns.exec("curl", "-sS", "--max-time", "15", "--noproxy", "*", *args)


def transparent_audits(sc: SidecarProcess) -> list[dict[str, Any]]:
    return [r for r in sc.audit_records() if r.get("method") == "TRANSPARENT"]


# -- pure ---------------------------------------------------------------------------------
def test_decode_original_dst() -> None:
    v4 = (socket.AF_INET).to_bytes(2, "little") + (443).to_bytes(2, "big") + socket.inet_aton("10.1.2.3") + bytes(8)
    assert decode_original_dst(v4, socket.AF_INET) == ("10.1.2.3", 443)
    v6 = (
        (socket.AF_INET6).to_bytes(2, "little")
        + (8443).to_bytes(2, "big")
        + bytes(4)
        + socket.inet_pton(socket.AF_INET6, "fd00::1")
        + bytes(4)
    )
    assert decode_original_dst(v6, socket.AF_INET6) == ("fd00::1", 8443)


# -- end to end -----------------------------------------------------------------------------
def test_intercepted_with_the_key_swapped(sidecar: NetnsSidecar, upstream: Upstream, key: SecretBinding) -> None:
    p = curl(
        sidecar.ns,
        "--cacert",
        str(sidecar.ca_cert_file),
        "--resolve",
        f"{HOST}:443:{V4}",
        "-H",
        f"x-api-key: {key.sealed}",
        f"https://{HOST}/echo",
    )
    assert p.returncode == 0, p.stderr + sidecar.log_text()[-2000:]
    rec = upstream.requests[-1]
    assert rec.header("x-api-key") == key.value
    assert key.value not in p.stdout
    assert sidecar.metric("oshu_tunnels_total", mode="transparent_intercept") is not None
