"""The listener: accept, CONNECT, TLS termination and the one request-head reader.

One coroutine per client connection. It reads request heads (`_read_request`, the only
head-reading loop for both the plain proxy port and intercepted tunnels) and hands each
request to an `Exchange` (exchange.py) with the connection's facts: plain, or an
intercepted CONNECT target and whether the client's TLS SNI agreed with it. The session
policy is chosen per connection by `resolve_policy` (by default the process's session).

Every refusal is a JSON error (errors.py) and leaves the proxy serving everyone else.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from time import perf_counter
from typing import Any

from .certs import LeafCache, sni_of
from .channel import Channel, ChannelClosed, DeadlineExpired, Deadlines, HeadTooLarge
from .config import Config
from .decide import Facts, decide_connect, display, sni_matches
from .errors import ProxyError, bad_request
from .exchange import Exchange
from .http1 import RequestHead, parse_request_head
from .logs import AuditEntry, AuditLog, log
from .metrics import Metrics
from .policy import Policy
from .tunnel import CONNECT_OK, run_tunnel
from .upstream import UpstreamPool

#: Chooses the session policy of a client connection (the gateway: one per authenticated client).
PolicyResolver = Callable[[Channel], Policy]
#: The gateway's hook on each request head read outside an intercepted tunnel (origin-form:
#: its session API; CONNECT/absolute-form: Proxy-Authorization, setting `conn.principal`).
#: Returns None to let the proxy handle the request, else True/False once it has answered it
#: (keep the connection open / close it). The sidecar has none.
FrontHook = Callable[["ClientConn", RequestHead, float], Awaitable[bool | None]]
_PLAIN = Facts(tls=False)


class ClientConn(Channel):
    """A client connection; owns the coroutine that serves it."""

    __slots__ = ("principal", "proxy", "task", "upstream")

    def __init__(self, proxy: Proxy) -> None:
        super().__init__(proxy.loop)
        self.proxy = proxy
        self.task: asyncio.Task[None] | None = None
        self.upstream: Channel | None = None  # the upstream of the exchange in progress
        self.principal: object = None  # set by a FrontHook (the gateway: the authenticated session id)
        self.keep_open_on_eof = True  # plain TCP until a CONNECT turns it into TLS

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if transport.get_extra_info("sslcontext") is not None:
            self.keep_open_on_eof = False  # a TLS listener (the gateway's): TLS cannot half-close
        proxy = self.proxy
        proxy.metrics.opened("client")
        proxy.deadlines.channels.add(self)
        proxy.clients.add(self)
        self.task = proxy.loop.create_task(self.run())

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        proxy = self.proxy
        proxy.metrics.closed("client")
        proxy.deadlines.channels.discard(self)
        proxy.clients.discard(self)
        up = self.upstream
        if up is not None and up.peer is None:
            up.abort()  # the client is gone: stop whatever the upstream is still sending

    def run(self) -> Coroutine[Any, Any, None]:
        """The coroutine that serves this connection (the transparent listener's connections differ)."""
        return self.proxy.serve(self)


class Proxy:
    """Shared state of all connections: config, policy resolver, metrics, leaves, upstream pool."""

    def __init__(
        self,
        cfg: Config,
        resolve_policy: PolicyResolver,
        metrics: Metrics,
        leaves: LeafCache,
        pool: UpstreamPool,
        front: FrontHook | None = None,
    ) -> None:
        self.cfg = cfg
        self.front = front
        self.resolve_policy = resolve_policy
        self.metrics = metrics
        self.leaves = leaves
        self.pool = pool
        self.loop = pool.loop
        self.deadlines = Deadlines(self.loop)
        pool.deadlines = self.deadlines  # upstream reads (response heads) have deadlines too
        self.clients: set[ClientConn] = set()
        self.server: asyncio.Server | None = None
        self.address: tuple[str, int] | None = None
        self._audits: dict[str, AuditLog] = {}

    def audit_for(self, session: str) -> AuditLog:
        """The audit line writer of a session (one per session name, so lines name the right one)."""
        audit = self._audits.get(session)
        if audit is None:
            if len(self._audits) >= 64:
                self._audits.clear()
            audit = self._audits[session] = AuditLog(session)
        return audit

    # -- lifecycle --------------------------------------------------------------------
    async def start(self, tls: ssl.SSLContext | None = None) -> None:
        """Listen on `cfg.listen`; with `tls` (the gateway's HTTPS proxy address) clients do TLS first."""
        host, port = self.cfg.listen
        extra: dict[str, Any] = (
            {"ssl": tls, "ssl_handshake_timeout": self.cfg.header_timeout} if tls is not None else {}
        )
        self.server = await self.loop.create_server(
            lambda: ClientConn(self),
            host,
            port,
            backlog=1024,
            reuse_address=True,
            **extra,
        )
        sock = self.server.sockets[0]
        self.address = sock.getsockname()[:2]
        self.deadlines.start()

    async def stop(self, grace: float) -> None:
        """Stop accepting, let in-flight exchanges finish for up to `grace` seconds, then abort."""
        if self.server is not None:
            self.server.close()
        self.deadlines.stop()
        for conn in list(self.clients):
            if conn.upstream is None and conn.peer is None and not conn.buf:
                conn.close()  # idle between requests
        tasks = [c.task for c in list(self.clients) if c.task is not None and not c.task.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        for conn in list(self.clients):
            conn.abort()
        self.pool.close()

    # -- connection -------------------------------------------------------------------
    async def serve(self, conn: ClientConn, facts: Facts = _PLAIN) -> None:
        try:
            await self._requests(conn, facts)
        except (ChannelClosed, ConnectionError):
            conn.abort()
        except Exception:
            logging.getLogger("oshu.sidecar").exception("unexpected error serving a connection")
            conn.abort()

    async def _requests(self, conn: ClientConn, facts: Facts) -> None:
        """Requests one after another on a connection, plain or intercepted."""
        while True:
            got = await self._read_request(conn)
            if got is None:
                return
            req, t0 = got
            if self.front is not None and not facts.tls:
                answered = await self.front(conn, req, t0)
                if answered is not None:
                    if not answered:
                        conn.close()
                        return
                    await conn.drain()
                    continue
            if req.method == b"CONNECT" and not facts.tls and not facts.port:
                await self._connect(conn, req, t0)
                return
            if not await Exchange(self, conn, req, facts, t0).run():
                conn.close()
                return
            # The next pipelined request is read only once the client takes what it was sent:
            # a client that never reads cannot make the proxy fetch and buffer without bound.
            await conn.drain()

    async def _read_request(self, conn: ClientConn) -> tuple[RequestHead, float] | None:
        """The next parsed request head and its arrival time, or None once answered/closed."""
        cfg = self.cfg
        too_large = f"request head exceeds {cfg.max_header_size} bytes"
        try:
            raw = await conn.read_head(cfg.max_header_size, cfg.idle_timeout, cfg.header_timeout)
        except HeadTooLarge:
            self.refuse_conn(conn, ProxyError("headers_too_large", too_large))
            return None
        except DeadlineExpired:
            if conn.buf:
                self.refuse_conn(
                    conn, ProxyError("request_timeout", f"request head not received within {cfg.header_timeout:g} s")
                )
            else:
                conn.close()
            return None
        if raw is None:
            conn.close()
            return None
        if len(raw) > cfg.max_header_size:
            self.refuse_conn(conn, ProxyError("headers_too_large", too_large))
            return None
        t0 = perf_counter()
        try:
            return parse_request_head(raw), t0
        except ProxyError as e:
            self.refuse_conn(conn, e)
            return None

    def refuse_conn(self, conn: Channel, error: ProxyError) -> None:
        """An error that ends the connection before any request could be understood."""
        self.metrics.refused(error.code)
        log(logging.INFO, "connection refused", code=error.code, status=error.status)
        conn.write(error.response(close=True))
        conn.close()

    # -- CONNECT ----------------------------------------------------------------------
    async def _connect(self, conn: ClientConn, req: RequestHead, t0: float) -> None:
        policy = self.resolve_policy(conn)
        try:
            host, port, plan, refusal = decide_connect(req.target, policy)
        except ProxyError as e:
            self.refuse_conn(conn, e)
            return
        if refusal is not None:
            self.metrics.request(plan.label, refusal.code)
            self._refuse_tunnel(conn, policy, (host, port), refusal, t0)
            return
        if not plan.intercept:
            self.metrics.tunnel("blind")
            try:
                await run_tunnel(conn, self.pool, host, port)
            except ProxyError as e:
                self._refuse_tunnel(conn, policy, (host, port), e, t0)
            return
        await self._intercept(conn, host, port)

    def _refuse_tunnel(
        self, conn: ClientConn, policy: Policy, target: tuple[str, int], error: ProxyError, t0: float
    ) -> None:
        self.metrics.refused(error.code)
        entry = AuditEntry(
            "https", display(*target, 443), "CONNECT", "", error.status, error.code, 0, 0, perf_counter() - t0, ()
        )
        self.audit_for(policy.name).request(entry)
        conn.write(error.response(close=True))
        conn.close()

    async def _intercept(self, conn: ClientConn, host: str, port: int) -> None:
        """Answer the CONNECT, terminate TLS with a leaf for `host`, then serve requests inside."""
        try:
            ctx = await self.leaves.context_for(host)
        except Exception:
            logging.getLogger("oshu.sidecar").exception(
                "minting a leaf certificate failed", extra={"fields": {"host": host}}
            )
            self.refuse_conn(conn, ProxyError("internal_error", "could not mint a certificate for this host"))
            return
        if conn.buf or conn.closed:
            self.refuse_conn(conn, bad_request("data sent before the CONNECT response"))
            return
        conn.write(CONNECT_OK)
        self.metrics.tunnel("intercept")
        if conn.transport is None:  # connection_made always ran before a request could arrive
            conn.abort()
            return
        try:
            transport = await self.loop.start_tls(
                conn.transport,
                conn,
                ctx,
                server_side=True,
                ssl_handshake_timeout=self.cfg.header_timeout,
            )
        except (ssl.SSLError, ConnectionError, TimeoutError, OSError) as e:
            self.metrics.refused("client_tls_failed")
            log(logging.INFO, "client TLS handshake failed", host=host, error=e.__class__.__name__)
            conn.abort()
            return
        if transport is None:
            conn.abort()
            return
        conn.transport = transport
        conn.keep_open_on_eof = False
        sni = sni_of(transport.get_extra_info("ssl_object"))
        await self._requests(conn, Facts(True, host, port, sni_matches(sni, host)))
