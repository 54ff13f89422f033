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

import base64
import contextlib
import ctypes
import json
import os
import queue
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from oshu_contract.session import SecretBinding
from oshu_sidecar.clienthello import MAX_PEEK
from oshu_sidecar.config import TRANSPARENT_PORT, ConfigError, load_config
from oshu_sidecar.decide import Decision, Facts, decide
from oshu_sidecar.http1 import edit_head, parse_request_head
from oshu_sidecar.policy import Policy
from oshu_sidecar.transparent import CANARY_BANNER, decode_original_dst
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
CLOSED = "closed.oshu.test"  # egress-allowed, but nothing listens where it leads
IP_HOST = "10.250.0.50"  # a secret names this address itself
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
    ip daddr 127.86.86.1 tcp dport 9 redirect to :{PORT}
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
        self.coverage_dir = self.directory / "coverage"
        self.coverage_dir.mkdir()
        self.coverage_home = _redirect_coverage(self.env, self.coverage_dir)
        run("chown", "-R", f"{uid}:{uid}", str(self.directory))

    def admin_get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        return self.ns.call(lambda: SidecarProcess.admin_get(self, path, timeout), timeout + 5)

    def stop(self, timeout: float = 10.0) -> int | None:
        code = super().stop(timeout)
        if self.coverage_home is not None:  # hand the measurements of uid 65532 to the run's combine
            for f in self.coverage_dir.glob(".coverage.*"):
                shutil.move(f, self.coverage_home / f.name)
        return code


def _redirect_coverage(env: dict[str, str], directory: Path) -> Path | None:
    """Under `pytest --cov` (subprocesses measured), let the child write its data where uid 65532 can.

    Returns the directory the run combines from, or None when coverage is not measuring.
    """
    raw = env.get("COVERAGE_PROCESS_CONFIG")
    if not raw:
        return None
    config = json.loads(base64.b64decode(raw))
    home = Path(config["data_file"]).parent
    config["data_file"] = str(directory / ".coverage")
    env["COVERAGE_PROCESS_CONFIG"] = base64.b64encode(json.dumps(config).encode()).decode()
    return home


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
    session = new_session(key, new_secret("IP_KEY", [IP_HOST]), egress=[TUNNEL, CLOSED, f"{HOST}:80"])
    sc = NetnsSidecar(
        ns,
        session,
        upstream=upstream,
        hosts=[HOST, TUNNEL, DENIED, IP_HOST],
        directory=base_dir / "sidecar",
        extra_args=[
            "--transparent-listen",
            f"127.0.0.1:{PORT}",
            "--transparent-listen",
            f"[::1]:{PORT}",
            "--header-timeout",
            "1",
            "--require-redirect",  # ready only once the canary is redirected here: the fixture proves it
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


POLICY = Policy(new_session(new_secret("API_KEY", [HOST]), egress=[f"{HOST}:80", f"{HOST}:8080"]))


def plain(raw: bytes, port: int = 80) -> Decision:
    """The decision for plain HTTP the redirect brought in on original port `port`."""
    return decide(parse_request_head(raw), POLICY, Facts(False, "", port))


def upstream_head(raw: bytes, d: Decision) -> bytes:
    req = parse_request_head(raw)
    return edit_head(req.raw, d.edits, d.extra + d.extra_tail)


@pytest.mark.parametrize(
    ("raw", "port", "host", "path"),
    [
        (b"GET /a?b=1 HTTP/1.1\r\nHost: API.oshu.test\r\n\r\n", 80, HOST, b"/a?b=1"),
        (b"GET /a HTTP/1.1\r\nHost: api.oshu.test:8080\r\n\r\n", 8080, HOST, b"/a"),
        (b"GET /a HTTP/1.1\r\nHost: api.oshu.test\r\n\r\n", 8080, HOST, b"/a"),  # the original port
        (b"GET http://api.oshu.test/x HTTP/1.1\r\nHost: api.oshu.test\r\n\r\n", 80, HOST, b"/x"),
        (b"OPTIONS * HTTP/1.1\r\nHost: api.oshu.test\r\n\r\n", 80, HOST, b"*"),
    ],
)
def test_plain_redirected_request_routed_by_host_and_original_port(
    raw: bytes, port: int, host: str, path: bytes
) -> None:
    d = plain(raw, port)
    assert d.refusal is None and (d.host, d.port, d.path) == (host, port, path)
    out = upstream_head(raw, d)
    assert out.split(b"\r\n", 1)[0] == d.path.join([parse_request_head(raw).method + b" ", b" HTTP/1.1"])
    want = b"Host: api.oshu.test\r\n" if port == 80 else b"Host: api.oshu.test:8080\r\n"
    assert want in out and out.count(b"Host:") == 1


@pytest.mark.parametrize(
    ("raw", "port", "code", "routed"),
    [
        (b"GET /a HTTP/1.1\r\nHost: api.oshu.test:8080\r\n\r\n", 80, "host_mismatch", True),
        (b"GET http://other.oshu.test/ HTTP/1.1\r\nHost: api.oshu.test\r\n\r\n", 80, "host_mismatch", False),
        (b"GET https://api.oshu.test/ HTTP/1.1\r\nHost: api.oshu.test\r\n\r\n", 80, "bad_request", False),
        (b"GET /a HTTP/1.1\r\n\r\n", 80, "bad_request", False),
        (b"GET /a HTTP/1.1\r\nHost: a@b\r\n\r\n", 80, "bad_request", False),
        (b"CONNECT api.oshu.test:443 HTTP/1.1\r\nHost: api.oshu.test:443\r\n\r\n", 80, "bad_request", False),
        (b"GET /a HTTP/1.1\r\nHost: denied.oshu.test\r\n\r\n", 80, "egress_denied", True),
    ],
)
def test_plain_redirected_request_refusals(raw: bytes, port: int, code: str, routed: bool) -> None:
    d = plain(raw, port)
    assert d.refusal is not None and d.refusal.code == code
    assert d.routed is routed


def test_explicit_proxy_port_still_requires_absolute_form() -> None:
    d = decide(parse_request_head(b"GET /a HTTP/1.1\r\nHost: api.oshu.test\r\n\r\n"), POLICY, Facts(False))
    assert d.refusal is not None and d.refusal.code == "not_a_proxy_request"


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


def tls_request(ns: Netns, addr: str, name: str | None, cafile: Path, head: str, port: int = 443) -> tuple[int, bytes]:
    """A Python client with no proxy: TLS to addr:port with SNI `name`, one request; (status, whole response)."""

    def go() -> tuple[int, bytes]:
        ctx = ssl.create_default_context(cafile=str(cafile))
        if name is None:
            ctx.check_hostname = False
        with socket.create_connection((addr, port), timeout=10) as raw, ctx.wrap_socket(raw, server_hostname=name) as s:
            s.sendall(head.encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return int(data.split(b" ", 2)[1]), data

    return ns.call(go)


def raw_exchange(ns: Netns, addr: str, port: int, send: bytes, *more: bytes) -> bytes | str:
    """What a raw TCP client gets back (until the peer closes), or the name of the error it sees.

    `more`: further pieces, each sent a moment after the last (so they arrive as separate segments).
    """

    def go() -> bytes | str:
        try:
            with socket.create_connection((addr, port), timeout=10) as s:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for i, piece in enumerate((send, *more)):
                    if i:
                        time.sleep(0.05)
                    if piece:
                        s.sendall(piece)
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
                return data
        except OSError as e:
            return e.__class__.__name__

    return ns.call(go)


def tls_handshake_error(ns: Netns, addr: str, name: str | None, port: int = 443) -> str:
    def go() -> str:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        try:
            with socket.create_connection((addr, port), timeout=10) as raw, ctx.wrap_socket(raw, server_hostname=name):
                return "handshake completed"
        except OSError as e:
            return e.__class__.__name__

    return ns.call(go)


def refusal(sc: SidecarProcess, host: str) -> dict[str, Any]:
    return sc.wait_for_log(lambda r: r.get("method") == "TRANSPARENT" and r.get("host") == host, timeout=10)


def test_python_client_any_address_intercepted(sidecar: NetnsSidecar, upstream: Upstream, key: SecretBinding) -> None:
    head = f"GET /echo HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {key.sealed}\r\nConnection: close\r\n\r\n"
    status, data = tls_request(sidecar.ns, "10.250.0.77", HOST, sidecar.ca_cert_file, head)
    assert status == 200, data
    assert upstream.requests[-1].header("authorization") == f"Bearer {key.value}"
    assert key.value.encode() not in data


def test_host_header_must_agree_with_the_sni(sidecar: NetnsSidecar, upstream: Upstream, key: SecretBinding) -> None:
    head = f"GET /echo HTTP/1.1\r\nHost: {TUNNEL}\r\nx-api-key: {key.sealed}\r\nConnection: close\r\n\r\n"
    status, data = tls_request(sidecar.ns, V4, HOST, sidecar.ca_cert_file, head)
    assert status == 421 and b"host_mismatch" in data
    assert upstream.requests == []


def test_ipv6_intercepted(sidecar: NetnsSidecar, upstream: Upstream, key: SecretBinding) -> None:
    p = curl(
        sidecar.ns,
        "--cacert",
        str(sidecar.ca_cert_file),
        "--resolve",
        f"{HOST}:443:[{V6}]",
        "-H",
        f"x-api-key: {key.sealed}",
        f"https://{HOST}/echo",
    )
    assert p.returncode == 0, p.stderr + sidecar.log_text()[-2000:]
    assert upstream.requests[-1].header("x-api-key") == key.value


def test_egress_allowed_name_is_tunnelled_blind_by_name(
    sidecar: NetnsSidecar, upstream: Upstream, key: SecretBinding
) -> None:
    # Trusting only the upstream's own CA: the client must see the real server's certificate.
    p = curl(
        sidecar.ns,
        "--cacert",
        str(upstream.ca_file),
        "--resolve",
        f"{TUNNEL}:443:10.250.0.99",
        "-H",
        f"x-api-key: {key.sealed}",
        f"https://{TUNNEL}/echo",
    )
    assert p.returncode == 0, p.stderr + sidecar.log_text()[-2000:]
    assert upstream.requests[-1].header("x-api-key") == key.sealed  # never substituted outside its hosts
    assert (sidecar.metric("oshu_tunnels_total", mode="transparent_blind") or 0) >= 1


def test_denied_name_is_reset_and_audited(sidecar: NetnsSidecar, upstream: Upstream) -> None:
    assert tls_handshake_error(sidecar.ns, V4, DENIED) == "ConnectionResetError"
    p = curl(sidecar.ns, "--insecure", "--resolve", f"{DENIED}:443:{V4}", f"https://{DENIED}/echo")
    assert p.returncode != 0
    rec = refusal(sidecar, DENIED)
    assert rec["outcome"] == "egress_denied" and rec["status"] == 403 and rec["scheme"] == "https"
    assert upstream.requests == []


def test_tls_without_sni_is_decided_by_the_original_address(sidecar: NetnsSidecar) -> None:
    assert tls_handshake_error(sidecar.ns, "10.250.0.31", None) == "ConnectionResetError"
    assert refusal(sidecar, "10.250.0.31")["outcome"] == "egress_denied"


def test_malformed_client_hello_is_reset(sidecar: NetnsSidecar) -> None:
    hello = b"\x16\x03\x01\x00\x08\x01\x00\x00\x04\x03\x03\x00\x00"  # a ClientHello cut short inside
    assert raw_exchange(sidecar.ns, "10.250.0.32", 443, hello) == "ConnectionResetError"
    assert refusal(sidecar, "10.250.0.32:443")["outcome"] == "client_hello_invalid"


def test_plain_http_by_host(sidecar: NetnsSidecar, upstream: Upstream, key: SecretBinding) -> None:
    p = curl(sidecar.ns, "--resolve", f"{HOST}:80:{V4}", f"http://{HOST}/echo?x=1")
    assert p.returncode == 0, p.stderr
    rec = upstream.requests[-1]
    assert rec.scheme == "http" and rec.header("host") == HOST and rec.query_string == "x=1"
    # A sealed token never goes over plain HTTP, redirected or not; a host outside the allowlist is refused.
    p = curl(sidecar.ns, "-i", "--resolve", f"{HOST}:80:{V4}", "-H", f"x-api-key: {key.sealed}", f"http://{HOST}/echo")
    assert " 403 " in p.stdout.splitlines()[0] and "plaintext_secret" in p.stdout
    p = curl(sidecar.ns, "-i", "--resolve", f"{DENIED}:80:{V4}", f"http://{DENIED}/echo")
    assert " 403 " in p.stdout.splitlines()[0] and "egress_denied" in p.stdout
    assert len(upstream.requests) == 1


def test_plain_http_host_port_must_be_the_original_port(sidecar: NetnsSidecar, upstream: Upstream) -> None:
    got = raw_exchange(sidecar.ns, V4, 80, f"GET /echo HTTP/1.1\r\nHost: {HOST}:8080\r\n\r\n".encode())
    assert isinstance(got, bytes) and got.startswith(b"HTTP/1.1 421 ") and b"host_mismatch" in got
    got = raw_exchange(sidecar.ns, V4, 80, f"CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n\r\n".encode())
    assert isinstance(got, bytes) and got.startswith(b"HTTP/1.1 400 ")
    assert upstream.requests == []


def test_other_protocol_to_an_unlisted_port_is_reset(sidecar: NetnsSidecar) -> None:
    ssl_request = b"\x00\x00\x00\x08\x04\xd2\x16\x2f"  # PostgreSQL's first message
    assert raw_exchange(sidecar.ns, "10.250.0.5", 5432, ssl_request) == "ConnectionResetError"
    rec = refusal(sidecar, "10.250.0.5:5432")
    assert rec["outcome"] == "egress_denied" and rec["scheme"] == "tcp"


def test_silent_client_is_dropped_after_the_header_timeout(sidecar: NetnsSidecar) -> None:
    assert raw_exchange(sidecar.ns, "10.250.0.6", 22, b"") == b""


def test_direct_connection_to_the_listener_is_refused(sidecar: NetnsSidecar) -> None:
    got = raw_exchange(sidecar.ns, "127.0.0.1", PORT, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert got == "ConnectionResetError"
    assert refusal(sidecar, f"127.0.0.1:{PORT}")["outcome"] == "not_redirected"


def test_canary_banner_for_every_uid(sidecar: NetnsSidecar) -> None:
    assert raw_exchange(sidecar.ns, "127.86.86.1", 9, b"") == CANARY_BANNER
    uid = str(PROXY_UID)
    script = (
        "import socket; s = socket.create_connection(('127.86.86.1', 9), timeout=10); "
        "import sys; sys.stdout.write(s.recv(100).decode())"
    )
    p = sidecar.ns.exec("setpriv", "--reuid", uid, "--regid", uid, "--clear-groups", sys.executable, "-c", script)
    assert p.stdout.encode() == CANARY_BANNER, p.stderr


def test_transparent_listen_flag_and_environment() -> None:
    base = ["--session-file", "s", "--ca-cert", "c", "--ca-key", "k"]
    cfg = load_config([*base, "--transparent-listen", f"127.0.0.1:{PORT}", "--transparent-listen", f"[::1]:{PORT}"], {})
    assert cfg.transparent_listen == (("127.0.0.1", PORT), ("::1", PORT))
    cfg = load_config(base, {"OSHU_TRANSPARENT_LISTEN": f"127.0.0.1:{PORT} [::1]:{PORT}"})
    assert cfg.transparent_listen == (("127.0.0.1", PORT), ("::1", PORT))
    assert load_config(base, {}).transparent_listen == ()
    with pytest.raises(ConfigError, match="--transparent-listen"):
        load_config([*base, "--transparent-listen", "localhost"], {})


def split_hello_request(ns: Netns, addr: str, cafile: Path, head: str) -> bytes:
    """TLS driven through a MemoryBIO so the ClientHello goes out in three pieces (the listener must
    wait for the rest without consuming any of it); then one request; the whole response."""

    def go() -> bytes:
        ctx = ssl.create_default_context(cafile=str(cafile))
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(incoming, outgoing, server_hostname=HOST)
        with socket.create_connection((addr, 443), timeout=10) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with contextlib.suppress(ssl.SSLWantReadError):
                obj.do_handshake()
            hello = outgoing.read()
            for piece in (hello[:3], hello[3:60], hello[60:]):
                s.sendall(piece)
                time.sleep(0.05)
            for _ in range(100):
                try:
                    obj.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    if pending := outgoing.read():
                        s.sendall(pending)
                    data = s.recv(65536)
                    if not data:
                        raise ConnectionError("closed during the handshake") from None
                    incoming.write(data)
            obj.write(head.encode())
            s.sendall(outgoing.read())
            response = b""
            for _ in range(1000):
                try:
                    response += obj.read(65536)
                except ssl.SSLWantReadError:
                    data = s.recv(65536)
                    if not data:
                        break
                    incoming.write(data)
                except ssl.SSLZeroReturnError:
                    break
            return response

    return ns.call(go)


def test_client_hello_in_pieces(sidecar: NetnsSidecar, upstream: Upstream, key: SecretBinding) -> None:
    head = f"GET /echo HTTP/1.1\r\nHost: {HOST}\r\nx-api-key: {key.sealed}\r\nConnection: close\r\n\r\n"
    response = split_hello_request(sidecar.ns, "10.250.0.40", sidecar.ca_cert_file, head)
    assert response.startswith(b"HTTP/1.1 200 "), response[:300]
    assert upstream.requests[-1].header("x-api-key") == key.value


def test_request_line_in_pieces(sidecar: NetnsSidecar, upstream: Upstream) -> None:
    rest = f"T /echo HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
    got = raw_exchange(sidecar.ns, "10.250.0.41", 80, b"GE", rest[:8], rest[8:])
    assert isinstance(got, bytes) and got.startswith(b"HTTP/1.1 200 "), got
    assert upstream.requests[-1].header("host") == HOST


def half_closed_exchange(ns: Netns, addr: str, port: int, send: bytes) -> bytes | str:
    """Send, then end the sending side: what comes back, or the name of the error."""

    def go() -> bytes | str:
        try:
            with socket.create_connection((addr, port), timeout=10) as s:
                s.sendall(send)
                s.shutdown(socket.SHUT_WR)
                return s.recv(65536)
        except OSError as e:
            return e.__class__.__name__

    return ns.call(go)


def test_stream_ending_before_it_says_what_it_is_is_dropped(sidecar: NetnsSidecar) -> None:
    # Closed with the peeked bytes unread, which the kernel answers with a reset; nothing is audited.
    assert half_closed_exchange(sidecar.ns, "10.250.0.42", 443, b"\x16\x03\x01") == "ConnectionResetError"
    assert half_closed_exchange(sidecar.ns, "10.250.0.42", 80, b"GET /") == "ConnectionResetError"
    assert not [r for r in sidecar.audit_records() if r.get("host", "").startswith("10.250.0.42")]


def test_request_line_beyond_the_peek_bound_is_reset(sidecar: NetnsSidecar) -> None:
    got = raw_exchange(sidecar.ns, "10.250.0.43", 80, b"GET /" + b"a" * (MAX_PEEK + 100))
    assert got in ("ConnectionResetError", "BrokenPipeError")
    assert refusal(sidecar, "10.250.0.43:80")["outcome"] == "headers_too_large"


def test_address_named_by_a_secret_intercepted_without_sni(sidecar: NetnsSidecar) -> None:
    def go() -> bytes:
        ctx = ssl.create_default_context(cafile=str(sidecar.ca_cert_file))
        ctx.check_hostname = False  # (verified against the session CA all the same)
        with socket.create_connection((IP_HOST, 443), timeout=10) as raw, ctx.wrap_socket(raw) as s:
            cert = s.getpeercert()
            assert cert is not None and ("IP Address", IP_HOST) in cert.get("subjectAltName", ())
            s.sendall(f"GET /echo HTTP/1.1\r\nHost: {IP_HOST}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            return data

    data = sidecar.ns.call(go)
    # The proxy answered inside the TLS it terminated; the upstream's certificate does not name the IP.
    assert data.startswith(b"HTTP/1.1 502 ") and b"upstream_tls_error" in data
    # A stream that is not TLS cannot be intercepted: reset.
    assert raw_exchange(sidecar.ns, IP_HOST, 443, b"\x00\x01\x02\x03") == "ConnectionResetError"
    assert refusal(sidecar, IP_HOST)["outcome"] == "unsupported_protocol"


def test_unreachable_tunnel_target_is_reset(sidecar: NetnsSidecar) -> None:
    assert tls_handshake_error(sidecar.ns, V4, CLOSED) == "ConnectionResetError"
    assert refusal(sidecar, CLOSED)["outcome"] == "upstream_unreachable"


def test_client_that_does_not_trust_the_session_ca(sidecar: NetnsSidecar, upstream: Upstream) -> None:
    p = curl(sidecar.ns, "--resolve", f"{HOST}:443:{V4}", f"https://{HOST}/echo")
    assert p.returncode == 60, p.stderr  # curl: peer certificate cannot be authenticated
    sidecar.wait_for_log(lambda r: r.get("msg") == "client TLS handshake failed" and r.get("host") == HOST)
    assert upstream.requests == []


def status_of(s: socket.socket) -> str:
    """The status code of the response coming in on `s` (read up to the end of the status line)."""
    data = b""
    for _ in range(50):
        if b"\r\n" in data:
            break
        chunk = s.recv(100)
        if not chunk:
            break
        data += chunk
    return data.split(b" ", 2)[1].decode()


def test_many_connections_at_once_each_decided_on_its_own(
    sidecar: NetnsSidecar, upstream: Upstream, key: SecretBinding
) -> None:
    """Intercepted, tunnelled, refused and plain connections interleaved (descriptors are reused fast)."""
    from concurrent.futures import ThreadPoolExecutor

    def intercepted(i: int) -> str:
        ctx = ssl.create_default_context(cafile=str(sidecar.ca_cert_file))
        addr = (f"10.250.0.{100 + i}", 443)
        with socket.create_connection(addr, timeout=15) as raw, ctx.wrap_socket(raw, server_hostname=HOST) as s:
            s.sendall(f"GET /echo?i={i} HTTP/1.1\r\nHost: {HOST}\r\nx-api-key: {key.sealed}\r\n\r\n".encode())
            return status_of(s)

    def tunnelled(i: int) -> str:
        ctx = ssl.create_default_context(cafile=str(upstream.ca_file))
        addr = (f"10.250.0.{100 + i}", 443)
        with socket.create_connection(addr, timeout=15) as raw, ctx.wrap_socket(raw, server_hostname=TUNNEL) as s:
            s.sendall(f"GET /echo?i={i} HTTP/1.1\r\nHost: {TUNNEL}\r\n\r\n".encode())
            return status_of(s)

    def refused(i: int) -> str:
        ctx = ssl.create_default_context()
        try:
            with socket.create_connection((f"10.250.0.{100 + i}", 443), timeout=15) as raw:
                ctx.wrap_socket(raw, server_hostname=DENIED)
        except ConnectionResetError:
            return "reset"
        return "not reset"

    def plain_http(i: int) -> str:
        with socket.create_connection((f"10.250.0.{100 + i}", 80), timeout=15) as s:
            s.sendall(f"GET /echo?i={i} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
            return status_of(s)

    kinds = [(intercepted, "200"), (tunnelled, "200"), (refused, "reset"), (plain_http, "200")]

    def run_all() -> list[tuple[str, str]]:
        with ThreadPoolExecutor(16) as pool:  # threads started in the namespace stay in it
            futures = [(pool.submit(kinds[i % 4][0], i), kinds[i % 4][1]) for i in range(80)]
            return [(f.result(timeout=30), want) for f, want in futures]

    results = sidecar.ns.call(run_all, timeout=60)
    assert all(got == want for got, want in results), results
    swapped = [r for r in upstream.requests if r.header("x-api-key") == key.value]
    assert len(swapped) == 20 and len(upstream.requests) == 60


def test_in_process_lifecycle(tmp_path: Path) -> None:
    """The listener inside a Sidecar started in this process (host namespace, no redirect rules):
    every dial is direct and reset; an address already in use is a start-up error naming the flag."""
    import asyncio

    from oshu_contract.pki import new_ca
    from oshu_sidecar.app import Sidecar, StartupError
    from oshu_testkit.sessions import session_bytes, write_k8s_secret_dir

    ca = new_ca("t1 in-process CA")
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    (tmp_path / "ca.key").write_bytes(ca.key_pem)
    write_k8s_secret_dir(tmp_path / "s", {"session.json": session_bytes(new_session(new_secret("K", [HOST])))})
    argv = ["--session-file", str(tmp_path / "s" / "session.json"), "--ca-cert", str(tmp_path / "ca.crt")]
    argv += ["--ca-key", str(tmp_path / "ca.key"), "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]

    async def exchange(addr: tuple[str, int], data: bytes) -> bytes | str:
        reader, writer = await asyncio.open_connection(*addr)
        writer.write(data)
        try:
            return await asyncio.wait_for(reader.read(), 10)
        except ConnectionResetError:
            return "reset"
        finally:
            writer.close()

    async def scenario() -> tuple[list[bytes | str], str, int]:
        sc = Sidecar(load_config([*argv, "--transparent-listen", "127.0.0.1:0"], {}))
        await sc.start()
        assert sc.transparent is not None
        addr = sc.transparent.addresses[0]
        got = [await exchange(addr, b"GET / HTTP/1.1\r\n\r\n"), await exchange(addr, b"")]
        clash = Sidecar(load_config([*argv, "--transparent-listen", f"127.0.0.1:{addr[1]}"], {}))
        try:
            await clash.start()
            error = "started"
        except StartupError as e:
            error = str(e)
        await clash.stop()
        refused = sc.metrics.refusals.get("not_redirected", 0)
        await sc.stop()
        return got, error, refused

    got, error, refused = asyncio.run(scenario())
    assert got == ["reset", "reset"] and refused == 2
    assert "--transparent-listen" in error
