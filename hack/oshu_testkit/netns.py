"""Network namespaces for the enforcement tests: an "agent" pod namespace and an "outside" world.

`Topology` creates two namespaces joined by a veth pair (IPv4 and IPv6 ULA), with addresses
only inside them, so nothing a test sends can reach the host's networks:

    agent  eth0 10.231.0.2/24 fd31:7a5b:0:1::2/64  --veth--  outside eth0 10.231.0.1/24 fd31:7a5b:0:1::1/64

The outside namespace also holds, on its loopback: the allowed resolver (10.231.53.1), another
resolver (10.231.53.2) and the metadata addresses (169.254.169.254, fd00:ec2::254). The agent's default
routes point at the outside namespace; its /etc/hosts and /etc/resolv.conf (files under
/etc/netns/<name>/, which `ip netns exec` mounts over /etc) map the test host names to the outside
address and name the allowed resolver.

`entered(ns)` moves the calling thread (and the threads it starts) into a namespace: servers
such as the kit's `Upstream` then bind their sockets there. `Topology.cmd(..., uid=)` builds an
argv that runs a program in a namespace as another user (setpriv, no capabilities left).
Requires root; everything is removed by `close()` (also on a failed start).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/var/run/netns")
ETC_NETNS = Path("/etc/netns")

OUTSIDE_V4, AGENT_V4 = "10.231.0.1", "10.231.0.2"
OUTSIDE_V6, AGENT_V6 = "fd31:7a5b:0:1::1", "fd31:7a5b:0:1::2"
RESOLVER, OTHER_RESOLVER = "10.231.53.1", "10.231.53.2"
METADATA_V4, METADATA_V6 = "169.254.169.254", "fd00:ec2::254"
_IP_TIMEOUT = 20.0


def _libc_setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def entered(name: str) -> Iterator[None]:
    """Run the block (and threads started in it) in network namespace `name`; back afterwards."""
    own = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
    target = os.open(NETNS_DIR / name, os.O_RDONLY)
    try:
        _libc_setns(target)
        try:
            yield
        finally:
            _libc_setns(own)
    finally:
        os.close(target)
        os.close(own)


def ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = ["ip", *(["-n", ns] if ns else []), *args]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=_IP_TIMEOUT, check=False)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {p.stderr.strip()}")
    return p


def run_in(
    ns: str, argv: Sequence[str], *, stdin: str | None = None, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run argv (as root) in namespace `ns`."""
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv], input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )


def as_user(uid: int, argv: Sequence[str], env: dict[str, str] | None = None) -> list[str]:
    """argv run as `uid`/`uid` with no groups and no capabilities, with exactly `env` (if given)."""
    prefix = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all"]
    if env is not None:
        prefix += ["env", "-i", *(f"{k}={v}" for k, v in sorted(env.items()))]
    return [*prefix, *argv]


class Topology:
    """Two namespaces (agent, outside) joined by veth; see the module docstring for the addresses."""

    def __init__(self, prefix: str = "oshu", hosts: Sequence[str] = ()) -> None:
        tag = f"{os.getpid()}-{os.urandom(2).hex()}"
        self.agent = f"{prefix}-agent-{tag}"
        self.outside = f"{prefix}-out-{tag}"
        self.hosts = tuple(hosts)
        self._created: list[str] = []

    def __enter__(self) -> Topology:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> Topology:
        for ns in (self.agent, self.outside):
            ip("netns", "add", ns)
            self._created.append(ns)
            ip("link", "set", "lo", "up", ns=ns)
        ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", self.outside, ns=self.agent)
        for ns, v4, v6 in ((self.agent, AGENT_V4, AGENT_V6), (self.outside, OUTSIDE_V4, OUTSIDE_V6)):
            ip("addr", "add", f"{v4}/24", "dev", "eth0", ns=ns)
            ip("-6", "addr", "add", f"{v6}/64", "dev", "eth0", "nodad", ns=ns)
            ip("link", "set", "eth0", "up", ns=ns)
        ip("route", "add", "default", "via", OUTSIDE_V4, ns=self.agent)
        ip("-6", "route", "add", "default", "via", OUTSIDE_V6, ns=self.agent)
        for addr in (f"{RESOLVER}/32", f"{OTHER_RESOLVER}/32", f"{METADATA_V4}/32"):
            ip("addr", "add", addr, "dev", "lo", ns=self.outside)
        ip("-6", "addr", "add", f"{METADATA_V6}/128", "dev", "lo", "nodad", ns=self.outside)
        etc = ETC_NETNS / self.agent
        etc.mkdir(parents=True, exist_ok=True)
        names = " ".join(self.hosts)
        lines = ["127.0.0.1 localhost", "::1 localhost"]
        if names:
            lines += [f"{OUTSIDE_V4} {names}", f"{OUTSIDE_V6} {names}"]
        (etc / "hosts").write_text("\n".join(lines) + "\n")
        (etc / "resolv.conf").write_text(f"nameserver {RESOLVER}\noptions timeout:1 attempts:1\n")
        return self

    def close(self) -> None:
        for ns in reversed(self._created):
            ip("netns", "del", ns, check=False)  # the veth pair goes with them
        self._created.clear()
        shutil.rmtree(ETC_NETNS / self.agent, ignore_errors=True)

    def cmd(self, argv: Sequence[str], *, uid: int | None = None, env: dict[str, str] | None = None) -> list[str]:
        """argv run in the agent namespace (as `uid` with exactly `env`, if given)."""
        inner = list(argv) if uid is None else as_user(uid, argv, env)
        return ["ip", "netns", "exec", self.agent, *inner]

    def nft_outside(self, text: str) -> None:
        p = run_in(self.outside, ["nft", "-f", "-"], stdin=text)
        if p.returncode != 0:
            raise RuntimeError(f"nft in {self.outside}: {p.stderr.strip()}")

    def forward_ports(self, ports: dict[int, int]) -> None:
        """In the outside namespace, connections to port K reach the local server on ports[K]."""
        rules = "\n".join(f"\t\ttcp dport {k} redirect to :{v}" for k, v in sorted(ports.items()))
        self.nft_outside(
            "table inet oshu_test_outside {\n\tchain pre {\n\t\ttype nat hook prerouting priority -100;\n"
            f"{rules}\n\t}}\n}}\n"
        )


class Recorder:
    """TCP and UDP listeners in a namespace that record who reached them (and answer UDP, echo).

    A test proves a path is closed by showing nothing arrived here, and that the same probe
    arrives when the rules are absent.
    """

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.hits: list[tuple[str, str, int]] = []  # (proto, local address, local port)
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def tcp(self, host: str, port: int) -> None:
        with entered(self.ns):
            s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
            s.listen(16)
        self._serve(s, self._accept_loop, (host, port))

    def udp(self, host: str, port: int) -> None:
        with entered(self.ns):
            s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((host, port))
        self._serve(s, self._udp_loop, (host, port))

    def _serve(self, s: socket.socket, loop: object, where: tuple[str, int]) -> None:
        s.settimeout(0.2)
        self._socks.append(s)
        t = threading.Thread(target=loop, args=(s, where), daemon=True)  # type: ignore[arg-type]
        t.start()
        self._threads.append(t)

    def _accept_loop(self, s: socket.socket, where: tuple[str, int]) -> None:
        while s.fileno() >= 0:
            try:
                conn, _ = s.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.hits.append(("tcp", *where))
            with contextlib.suppress(OSError):
                conn.sendall(b"REACHED\n")
            conn.close()

    def _udp_loop(self, s: socket.socket, where: tuple[str, int]) -> None:
        while s.fileno() >= 0:
            try:
                data, peer = s.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.hits.append(("udp", *where))
            with contextlib.suppress(OSError):
                s.sendto(b"REACHED:" + data[:64], peer)

    def reached(self, proto: str, host: str, port: int) -> int:
        with self._lock:
            return sum(1 for h in self.hits if h == (proto, host, port))

    def clear(self) -> None:
        with self._lock:
            self.hits.clear()

    def close(self) -> None:
        for s in self._socks:
            s.close()
        for t in self._threads:
            t.join(2)
