"""Upstream connections: verified TLS, address overrides, and a keep-alive pool.

TLS to upstreams is always verified against the system roots plus any
`--upstream-ca-file`s, with SNI and hostname checks against the requested HOST even when
`--resolve`/`--connect-to` send the bytes elsewhere (curl's semantics). There is
deliberately no way to switch verification off.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import ssl
from collections.abc import Callable

import certifi

from .addresses import AddressGuard
from .channel import Channel, Deadlines
from .config import ConnectTo, Resolve
from .errors import ProxyError

_HASH_LINK_RE = re.compile(r"[0-9a-f]{8}\.[0-9]+")


def _has_hash_links(directory: str) -> bool:
    """True if `directory` is an OpenSSL hashed CA directory (c_rehash links like 1a2b3c4d.0)."""
    try:
        with os.scandir(directory) as entries:
            return any(_HASH_LINK_RE.fullmatch(e.name) for e in entries)
    except OSError:
        return False


def client_context(extra_ca_files: tuple[str, ...] = ()) -> ssl.SSLContext:
    """Verifying client context: system roots + extra CA files; verification cannot be turned off.

    System roots come from where OpenSSL looks by default (SSL_CERT_FILE / SSL_CERT_DIR
    honoured). A hashed CA directory is preferred because OpenSSL then loads a root only
    when a chain needs it (start-up stays fast, memory small); otherwise the CA bundle
    file; otherwise certifi's bundle, so a minimal image still verifies public hosts.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname by construction
    paths = ssl.get_default_verify_paths()
    env_file = os.environ.get(paths.openssl_cafile_env) or None
    env_dir = os.environ.get(paths.openssl_capath_env) or None
    if env_file or env_dir:
        ctx.load_verify_locations(cafile=env_file, capath=env_dir)
    elif paths.capath and _has_hash_links(paths.capath):
        ctx.load_verify_locations(capath=paths.capath)
    elif paths.cafile:
        ctx.load_verify_locations(cafile=paths.cafile)
    else:
        ctx.load_verify_locations(cafile=certifi.where())
    for path in extra_ca_files:
        ctx.load_verify_locations(cafile=path)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    return ctx


class Router:
    """Where to actually connect for HOST:PORT, applying --connect-to then --resolve like curl.

    With an `AddressGuard` (the gateway's default), a destination the operator did not pin is
    resolved here and only a vetted address is returned, so a session cannot make the proxy
    connect to loopback, metadata or internal addresses (see addresses.py).
    """

    def __init__(
        self,
        connect_to: tuple[ConnectTo, ...] = (),
        resolve: tuple[Resolve, ...] = (),
        guard: AddressGuard | None = None,
    ) -> None:
        self.connect_to = connect_to
        self.resolve = resolve
        self.guard = guard
        self._cache: dict[tuple[str, int], tuple[str, int, bool]] = {}

    def route(self, host: str, port: int) -> tuple[str, int]:
        chost, cport, _ = self._route(host, port)
        return chost, cport

    def _route(self, host: str, port: int) -> tuple[str, int, bool]:
        """(connect host, connect port, pinned by the operator's --connect-to/--resolve)."""
        key = (host, port)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        chost, cport, pinned = host, port, False
        for rule in self.connect_to:
            if (not rule.host or rule.host == host) and (not rule.port or rule.port == port):
                chost = rule.connect_host or host
                cport = rule.connect_port or port
                pinned = True
                break
        for r in self.resolve:
            if (r.host == "*" or r.host == chost) and r.port == cport:
                chost = r.addresses[0]
                pinned = True
                break
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[key] = (chost, cport, pinned)
        return chost, cport, pinned

    async def destination(self, loop: asyncio.AbstractEventLoop, host: str, port: int) -> tuple[str, int]:
        """The address to connect to; a vetted IP when a guard applies, else `route`'s answer."""
        chost, cport, pinned = self._route(host, port)
        if self.guard is None or pinned:
            return chost, cport
        try:
            infos = await loop.getaddrinfo(chost, cport, type=socket.SOCK_STREAM)
        except OSError as e:
            raise ProxyError(
                "upstream_unreachable", f"cannot resolve upstream {host}: {e.strerror or e.__class__.__name__}"
            ) from None
        for *_, sockaddr in infos:
            address = str(sockaddr[0])
            if self.guard.permits(address):
                return address, cport
        raise ProxyError(
            "upstream_address_denied",
            f"upstream {host}:{port} resolves only to addresses this proxy does not connect to "
            "(loopback, private, link-local or reserved); see --allow-upstream-cidr",
        )


class UpstreamConn(Channel):
    """A connection to one upstream; knows its pool key so it can be returned and evicted."""

    __slots__ = ("idle", "key", "pool")

    def __init__(self, loop: asyncio.AbstractEventLoop, key: tuple[bool, str, int], pool: UpstreamPool) -> None:
        super().__init__(loop)
        self.key = key
        self.idle = False
        self.pool = pool

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.pool.opened(self)

    def data_received(self, data: bytes) -> None:
        if self.idle:  # an idle upstream must not talk: drop the connection rather than mis-frame
            self.pool.evict(self)
            self.abort()
            return
        super().data_received(data)

    def eof_received(self) -> bool | None:
        if self.idle:
            self.pool.evict(self)
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.evict(self)
        self.pool.closed(self)
        super().connection_lost(exc)


class UpstreamPool:
    """Keep-alive connections per (tls, host, port); LIFO reuse, bounded idle count and age."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        ssl_ctx: ssl.SSLContext,
        router: Router,
        connect_timeout: float = 10.0,
        on_open: Callable[[], None] | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.loop = loop
        self.ssl_ctx = ssl_ctx
        self.router = router
        self.connect_timeout = connect_timeout
        self.max_idle_per_key = 64  # idle connections kept per (tls, host, port)
        self.idle_ttl = 30.0  # seconds an idle connection is kept
        self.on_open = on_open
        self.on_close = on_close
        self._idle: dict[tuple[bool, str, int], dict[UpstreamConn, float]] = {}
        self._all: set[UpstreamConn] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self.deadlines: Deadlines | None = None  # set by the proxy: expires slow upstream reads

    # -- bookkeeping ------------------------------------------------------------------
    def opened(self, conn: UpstreamConn) -> None:
        self._all.add(conn)
        if self.deadlines is not None:
            self.deadlines.channels.add(conn)
        if self.on_open:
            self.on_open()

    def closed(self, conn: UpstreamConn) -> None:
        if self.deadlines is not None:
            self.deadlines.channels.discard(conn)
        if conn in self._all:
            self._all.discard(conn)
            if self.on_close:
                self.on_close()

    def evict(self, conn: UpstreamConn) -> None:
        conn.idle = False
        idle = self._idle.get(conn.key)
        if idle is not None:
            idle.pop(conn, None)

    # -- acquire / release ------------------------------------------------------------
    async def acquire(self, tls: bool, host: str, port: int) -> tuple[UpstreamConn, bool]:
        """A connection to host:port (TLS-verified if `tls`), and whether it was reused."""
        key = (tls, host, port)
        idle = self._idle.get(key)
        while idle:
            conn, _ = idle.popitem()
            conn.idle = False
            if not conn.closed and not conn.eof and not conn.buf:
                return conn, True
            conn.abort()
        return await self.connect(key), False

    def release(self, conn: UpstreamConn) -> None:
        """Return a connection whose exchange completed cleanly; it becomes idle and reusable."""
        if conn.closed or conn.eof or conn.buf or conn.peer is not None:
            conn.abort()
            return
        idle = self._idle.setdefault(conn.key, {})
        if len(idle) >= self.max_idle_per_key:
            conn.close()
            return
        conn.idle = True
        conn.deadline = 0.0
        idle[conn] = self.loop.time()
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self.idle_ttl / 2, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        cutoff = self.loop.time() - self.idle_ttl
        pending = False
        for idle in self._idle.values():
            for conn, since in list(idle.items()):
                if since < cutoff:
                    idle.pop(conn, None)
                    conn.idle = False
                    conn.close()
            pending = pending or bool(idle)
        if pending:
            self._sweeper = self.loop.call_later(self.idle_ttl / 2, self._sweep)

    async def connect(self, key: tuple[bool, str, int]) -> UpstreamConn:
        tls, host, port = key
        chost, cport = await self.router.destination(self.loop, host, port)
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await self.loop.create_connection(
                    lambda: UpstreamConn(self.loop, key, self),
                    chost,
                    cport,
                    ssl=self.ssl_ctx if tls else None,
                    server_hostname=host if tls else None,
                    ssl_handshake_timeout=self.connect_timeout if tls else None,
                )
        except ssl.SSLCertVerificationError as e:
            raise ProxyError(
                "upstream_tls_error", f"TLS verification of upstream {host}:{port} failed: {e.verify_message}"
            ) from None
        except ssl.SSLError as e:
            raise ProxyError(
                "upstream_tls_error",
                f"TLS handshake with upstream {host}:{port} failed: {e.reason or e.__class__.__name__}",
            ) from None
        except TimeoutError:
            raise ProxyError("upstream_timeout", f"connecting to upstream {host}:{port} timed out") from None
        except OSError as e:
            raise ProxyError(
                "upstream_unreachable",
                f"cannot connect to upstream {host}:{port}: {e.strerror or e.__class__.__name__}",
            ) from None
        if not tls:
            conn.keep_open_on_eof = True
        return conn

    async def open_tunnel(self, host: str, port: int) -> Channel:
        """A plain TCP connection for a blind CONNECT tunnel (never pooled)."""
        conn = await self.connect((False, host, port))
        conn.keep_open_on_eof = True
        return conn

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self._all):
            conn.abort()
        self._idle.clear()
