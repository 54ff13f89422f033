"""The transparent listener: connections the pod's redirect rules bring here, decided by name.

A program that ignores HTTPS_PROXY still has its TCP connections redirected (nftables, see
netrules.py) to this listener. Per accepted connection: the original destination
(SO_ORIGINAL_DST), then a peek at the first bytes without consuming them (bounded in size
and time, clienthello.py): a TLS ClientHello gives the SNI, an HTTP/1 request line means plain
HTTP, anything else has only the original address. The same policy as CONNECT then decides
(`decide_connect` on name:original-port):

- intercept: TLS terminated with a leaf from the session CA, then the same request loop as an
  intercepted CONNECT (Facts for host and port; OpenSSL's SNI must equal the one peeked);
- blind tunnel for egress-allowed hosts: the proxy resolves the NAME itself and connects there,
  never to the original IP (else a fake SNI would open any address);
- plain HTTP goes to the request loop as absolute-form requests do (Host names the host, the
  original destination the port; decide.py);
- refused otherwise: a TCP reset (SO_LINGER 0) and an audit line with method "TRANSPARENT".

A connection whose original destination is the listener itself was not redirected and is
refused; the redirect canary (readiness, admin.py) gets `CANARY_BANNER`. Nothing here runs on
the explicit proxy's path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import struct
from collections.abc import Coroutine
from time import perf_counter
from typing import Any

from .certs import sni_of
from .channel import Channel, link
from .clienthello import HTTP, MAX_PEEK, TLS, ClientHello, ClientHelloError, parse_client_hello, sniff
from .config import REDIRECT_CANARY
from .decide import Facts, decide_connect, display, sni_matches
from .errors import ProxyError
from .logs import AuditEntry, log
from .policy import Policy
from .server import ClientConn, Proxy

#: What a connection to the redirect canary address gets: proof that the redirect rules are in place.
CANARY_BANNER = b"OSHU-VAULT-REDIRECT-OK\n"
DEFAULT_CANARY = REDIRECT_CANARY
#: getsockopt option of linux/netfilter_ipv4.h (SOL_IP) and of linux/netfilter_ipv6 (IP6T_, SOL_IPV6).
SO_ORIGINAL_DST = 80
SOL_IPV6 = 41  # (the socket module exports IPPROTO_IPV6, the same level, but not the name)
_ACCEPT_BATCH = 64
_LINGER_RESET = struct.pack("ii", 1, 0)
_log = logging.getLogger("oshu.sidecar")


def decode_original_dst(raw: bytes, family: int) -> tuple[str, int]:
    """(address, port) from the sockaddr_in / sockaddr_in6 that SO_ORIGINAL_DST returns."""
    port = int.from_bytes(raw[2:4], "big")
    if family == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
    return socket.inet_ntop(socket.AF_INET, raw[4:8]), port


def original_dst(sock: socket.socket) -> tuple[str, int] | None:
    """Where the client meant to connect before the redirect, or None if the kernel knows of no NAT."""
    try:
        if sock.family == socket.AF_INET6:
            raw = sock.getsockopt(SOL_IPV6, SO_ORIGINAL_DST, 28)
        else:
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:
        return None
    return decode_original_dst(raw, sock.family)


def authority(host: str, port: int) -> bytes:
    """host:port as a CONNECT target (IPv6 in brackets), for `decide_connect`."""
    return (f"[{host}]:{port}" if ":" in host else f"{host}:{port}").encode("ascii")


class TransparentConn(ClientConn):
    """A redirected client connection once decided: intercepted TLS, plain HTTP, or a blind tunnel."""

    __slots__ = ("facts", "tunnel")

    def __init__(self, proxy: Proxy, facts: Facts, tunnel: Channel | None = None) -> None:
        super().__init__(proxy)
        self.facts = facts
        self.tunnel = tunnel

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        facts = self.facts
        if facts.tls:  # the name OpenSSL saw must be the one the decision was made on
            facts.sni_ok = sni_matches(sni_of(transport.get_extra_info("ssl_object")), facts.host)
        super().connection_made(transport)

    def run(self) -> Coroutine[Any, Any, None]:
        if self.tunnel is not None:
            return self._pump(self.tunnel)
        return self.proxy.serve(self, self.facts)

    async def _pump(self, upstream: Channel) -> None:
        self.keep_open_on_eof = True
        try:
            await link(self, upstream)
        except Exception:  # the pump itself cannot fail; a lost peer only resolves it
            pass
        finally:
            self.abort()
            upstream.abort()


class TransparentListener:
    """Accepts redirected connections on loopback addresses and hands each to the proxy once decided."""

    def __init__(
        self, proxy: Proxy, addresses: tuple[tuple[str, int], ...], canary: tuple[str, int] = DEFAULT_CANARY
    ) -> None:
        self.proxy = proxy
        self.loop = proxy.loop
        self.wanted = addresses
        self.canary = canary
        self.sockets: list[socket.socket] = []
        self.addresses: list[tuple[str, int]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        """Bind and listen on every address (OSError propagates: the caller names the address)."""
        for host, port in self.wanted:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((host, port))
                sock.listen(1024)
                sock.setblocking(False)
            except OSError:
                sock.close()
                raise
            self.sockets.append(sock)
            self.addresses.append(sock.getsockname()[:2])
            self.loop.add_reader(sock.fileno(), self._accept, sock)

    def stop(self) -> None:
        """Stop accepting and drop connections still being peeked at (decided ones belong to the proxy)."""
        for sock in self.sockets:
            self.loop.remove_reader(sock.fileno())
            sock.close()
        self.sockets.clear()
        for task in list(self._tasks):
            task.cancel()

    def _accept(self, lsock: socket.socket) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, _peer = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # out of descriptors and the like: the next readiness retries
                log(logging.WARNING, "transparent accept failed", error=e.strerror or e.__class__.__name__)
                return
            sock.setblocking(False)
            task = self.loop.create_task(self._handle(sock))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # -- one connection ---------------------------------------------------------------
    async def _handle(self, sock: socket.socket) -> None:
        handed = False
        try:
            handed = await self._dispatch(sock)
        except asyncio.CancelledError:
            pass
        except Exception:
            _log.exception("unexpected error on a transparent connection")
        finally:
            if not handed:
                sock.close()

    async def _dispatch(self, sock: socket.socket) -> bool:
        """Decide and hand the socket to its handler (True), or refuse/drop it (False: caller closes)."""
        t0 = perf_counter()
        conn = TransparentConn(self.proxy, Facts(False))
        policy = self.proxy.resolve_policy(conn)
        orig = original_dst(sock)
        local = sock.getsockname()[:2]
        if orig is None or orig == local:
            where = display(*local, 0)
            self._reset(sock, policy, "tcp", where, ProxyError("not_redirected", f"{where} was dialled directly"), t0)
            return False
        if orig == self.canary:
            sock.send(CANARY_BANNER)  # 23 bytes into an empty send buffer: never partial
            return False
        peeked = await self._peek(sock)
        if peeked is None:
            return False
        if isinstance(peeked, ProxyError):
            self._reset(sock, policy, "tcp", display(orig[0], orig[1], 0), peeked, t0)
            return False
        kind, hello = peeked
        if kind == HTTP:
            conn.facts = Facts(False, "", orig[1])
            return await self._hand_over(sock, conn, None)
        return await self._decide(sock, conn, policy, orig, hello, t0)

    async def _decide(
        self,
        sock: socket.socket,
        conn: TransparentConn,
        policy: Policy,
        orig: tuple[str, int],
        hello: ClientHello | None,
        t0: float,
    ) -> bool:
        """TLS or an unknown stream: the same decision as CONNECT to (SNI or original address):port."""
        name = hello.server_name if hello is not None and hello.server_name else orig[0]
        scheme = "tcp" if hello is None else "https"
        try:
            host, port, plan, refusal = decide_connect(authority(name, orig[1]), policy)
        except ProxyError as e:
            self._reset(sock, policy, scheme, display(name, orig[1], 0), e, t0)
            return False
        where = display(host, port, 443)
        if refusal is None and plan.intercept and hello is None:
            refusal = ProxyError("unsupported_protocol", f"{where} is intercepted: only TLS is accepted")
        if refusal is not None:
            self.proxy.metrics.request(plan.label, refusal.code)
            self._reset(sock, policy, scheme, where, refusal, t0)
            return False
        if plan.intercept:
            return await self._intercept(sock, conn, host, port)
        try:
            upstream = await self.proxy.pool.open_tunnel(host, port)
        except ProxyError as e:
            self._reset(sock, policy, scheme, where, e, t0)
            return False
        self.proxy.metrics.tunnel("transparent_blind")
        return await self._hand_over(sock, conn, None, upstream)

    async def _intercept(self, sock: socket.socket, conn: TransparentConn, host: str, port: int) -> bool:
        try:
            ctx = await self.proxy.leaves.context_for(host)
        except Exception:
            _log.exception("minting a leaf certificate failed", extra={"fields": {"host": host}})
            return False
        conn.facts = Facts(True, host, port, False)
        self.proxy.metrics.tunnel("transparent_intercept")
        return await self._hand_over(sock, conn, ctx)

    async def _hand_over(
        self, sock: socket.socket, conn: TransparentConn, ctx: ssl.SSLContext | None, upstream: Channel | None = None
    ) -> bool:
        """Give the socket to the event loop as `conn`'s transport (TLS with `ctx`); the loop owns it after."""
        conn.tunnel = upstream
        kwargs: dict[str, Any] = {}
        if ctx is not None:
            kwargs = {"ssl": ctx, "ssl_handshake_timeout": self.proxy.cfg.header_timeout}
        try:
            await self.loop.connect_accepted_socket(lambda: conn, sock, **kwargs)
        except asyncio.CancelledError:  # stopping mid-handshake: the loop closes what it took over
            pass
        except (ssl.SSLError, ConnectionError, TimeoutError, OSError) as e:
            self.proxy.metrics.refused("client_tls_failed")
            log(logging.INFO, "client TLS handshake failed", host=conn.facts.host, error=e.__class__.__name__)
            if upstream is not None:
                upstream.abort()
        return True

    async def _peek(self, sock: socket.socket) -> tuple[str, ClientHello | None] | ProxyError | None:
        """(kind, hello) from the first bytes, left unread; a ProxyError if they are refused; None: drop."""
        deadline = self.loop.time() + self.proxy.cfg.header_timeout
        have = 0
        try:
            while await self._readable(sock, deadline):
                data = sock.recv(MAX_PEEK, socket.MSG_PEEK)
                if len(data) <= have:
                    return None  # the stream ended (or was reset) before it said what it is
                have = len(data)
                kind = sniff(data)
                if kind is None:
                    want = have + 1
                elif kind == TLS:
                    try:
                        got = parse_client_hello(data)
                    except ClientHelloError as e:
                        return ProxyError("client_hello_invalid", str(e))
                    if isinstance(got, ClientHello):
                        return TLS, got
                    want = got.needed
                else:
                    return kind, None
                if want > MAX_PEEK:
                    if kind == TLS:
                        return ProxyError("client_hello_invalid", f"ClientHello exceeds {MAX_PEEK} bytes")
                    return ProxyError("headers_too_large", f"no request line within {MAX_PEEK} bytes")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, want)  # readable once that much is in
        except OSError:
            return None
        finally:
            if have:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
        self.proxy.metrics.refused("request_timeout")
        return None

    async def _readable(self, sock: socket.socket, deadline: float) -> bool:
        """Wait until `sock` is readable (True) or `deadline` (loop time) passes (False)."""
        fut: asyncio.Future[bool] = self.loop.create_future()
        fd = sock.fileno()
        self.loop.add_reader(fd, _settle, fut, True)
        timer = self.loop.call_at(deadline, _settle, fut, False)
        try:
            return await fut
        finally:
            timer.cancel()
            self.loop.remove_reader(fd)

    def _reset(
        self, sock: socket.socket, policy: Policy, scheme: str, where: str, error: ProxyError, t0: float
    ) -> None:
        """Refuse with a TCP reset and an audit line (the client gets no bytes: it spoke no proxy protocol)."""
        self.proxy.metrics.refused(error.code)
        entry = AuditEntry(scheme, where, "TRANSPARENT", "", error.status, error.code, 0, 0, perf_counter() - t0, ())
        self.proxy.audit_for(policy.name).request(entry)
        log(logging.INFO, "transparent connection refused", code=error.code, host=where, reason=error.message)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)


def _settle(fut: asyncio.Future[bool], value: bool) -> None:
    if not fut.done():
        fut.set_result(value)
