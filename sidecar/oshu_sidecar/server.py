"""The proxy: listener, CONNECT handling, TLS termination and the per-request exchange.

One coroutine per client connection. It reads a request head, decides with the current
`Policy`, rewrites the head (sealed tokens -> real values, hop-by-hop fields dropped),
sends it over a pooled, verified upstream connection and streams the response back,
scrubbing real values out of it. Bodies are never buffered whole except the bounded
cases documented in docs/sidecar.md (a body whose length substitution changes).

Every refusal is a JSON error (errors.py) and leaves the proxy serving everyone else.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import re
import ssl
from time import perf_counter

from .certs import LeafCache, sni_of
from .channel import Channel, ChannelClosed, Deadlines, DeadlineExpired, HeadTooLarge, link
from .config import Config
from .errors import error_response
from .hosts import HostPatternError, normalize_host, split_host_port
from .http1 import (
    CHUNKED, LAST_CHUNK, LENGTH, NO_BODY, UNTIL_CLOSE, ChunkedDecoder, HttpError, RequestHead, ResponseHead,
    bad_request, chunk, edit_head, parse_request_head, parse_response_head, serialize_trailers,
)
from .logs import AuditLog, log
from .metrics import Metrics
from .policy import SEALED_MARK, HostPlan, Policy, Refusal, egress_refusal, plaintext_refusal, withdrawn
from .scrub import Scrubber
from .substitute import (
    StreamReplacer, redact_query, replace_all, substitute_head, substitute_query, tokens_in_request,
)
from .tunnel import CONNECT_OK, run_tunnel
from .upstream import UpstreamConn, UpstreamError, UpstreamPool

#: Bodies whose length substitution or scrubbing may change are buffered up to this size
#: so Content-Length stays exact; larger ones are re-framed as chunked instead.
BODY_BUFFER_LIMIT = 1 << 20
#: Largest upstream response head accepted.
MAX_RESPONSE_HEAD = 256 * 1024

_HOSTNAME_RE = re.compile(r"[a-z0-9_](?:[a-z0-9_.-]{0,251}[a-z0-9_])?")
_ACCEPT_IDENTITY = b"Accept-Encoding: identity\r\n"
_WS_UPGRADE = b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
_TE_CHUNKED = b"Transfer-Encoding: chunked\r\n"
_CONN_CLOSE = b"Connection: close\r\n"
_KEEP_101 = frozenset({b"connection", b"upgrade"})


def parse_authority(text: bytes, default_port: int | None) -> tuple[str, int]:
    """host[:port] from a request target or Host field; HttpError(400) if unusable."""
    try:
        value = text.decode("ascii")
    except UnicodeDecodeError:
        raise bad_request("non-ASCII authority") from None
    if "@" in value:
        raise bad_request("user information in the authority is not accepted")
    try:
        host, port = split_host_port(value, default_port=default_port if default_port is not None else -1)
    except HostPatternError as e:
        raise bad_request(f"invalid authority: {e}") from None
    if port < 0:
        raise bad_request("CONNECT target must be host:port")
    if not _HOSTNAME_RE.fullmatch(host):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise bad_request("invalid host name") from None
    return host, port


def split_absolute(target: bytes, scheme: bytes) -> tuple[bytes, bytes] | None:
    """(authority, origin-form path) of an absolute-form target with `scheme`, else None."""
    prefix = scheme + b"://"
    if target[: len(prefix)].lower() != prefix:
        return None
    rest = target[len(prefix):]
    cut = len(rest)
    for sep in (b"/", b"?", b"#"):
        i = rest.find(sep)
        if 0 <= i < cut:
            cut = i
    authority, path = rest[:cut], rest[cut:]
    if path.startswith(b"?"):
        path = b"/" + path
    path = path.split(b"#", 1)[0] or b"/"
    return authority, path


@functools.lru_cache(maxsize=1024)
def _display(host: str, port: int, default: int) -> str:
    h = f"[{host}]" if ":" in host else host
    return h if port == default else f"{h}:{port}"


class ClientConn(Channel):
    """A client connection; owns the coroutine that serves it."""

    __slots__ = ("proxy", "task", "upstream")

    def __init__(self, proxy: "Proxy") -> None:
        super().__init__(proxy.loop)
        self.proxy = proxy
        self.task: asyncio.Task[None] | None = None
        self.upstream: Channel | None = None  # the upstream of the exchange in progress
        self.keep_open_on_eof = True  # plain TCP until a CONNECT turns it into TLS

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        proxy = self.proxy
        proxy.metrics.opened("client")
        proxy.deadlines.channels.add(self)
        proxy.clients.add(self)
        self.task = proxy.loop.create_task(proxy.serve(self))

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        proxy = self.proxy
        proxy.metrics.closed("client")
        proxy.deadlines.channels.discard(self)
        proxy.clients.discard(self)
        up = self.upstream
        if up is not None and up.peer is None:
            up.abort()  # the client is gone: stop whatever the upstream is still sending


class Exchange:
    """Per-request bookkeeping for the audit line and metrics."""

    __slots__ = ("t0", "host", "port", "label", "method", "target", "scheme", "status", "outcome", "bytes_in",
                 "bytes_out", "secrets", "scrubbed", "plan")

    def __init__(self, t0: float, scheme: str, req: RequestHead) -> None:
        self.t0 = t0
        self.scheme = scheme
        self.method = req.method
        self.target = req.target
        self.host = ""
        self.port = 0
        self.label = "other"
        self.status = 0
        self.outcome = "forwarded"
        self.bytes_in = 0
        self.bytes_out = 0
        self.secrets: list[str] = []
        self.scrubbed: list[str] = []
        self.plan: HostPlan | None = None


class Proxy:
    """Shared state of all connections and the request-handling logic."""

    def __init__(self, cfg: Config, policy: Policy, metrics: Metrics, leaves: LeafCache,
                 pool: UpstreamPool, loop: asyncio.AbstractEventLoop) -> None:
        self.cfg = cfg
        self.policy = policy
        self.metrics = metrics
        self.leaves = leaves
        self.pool = pool
        self.loop = loop
        self.audit = AuditLog(policy.name)
        self.deadlines = Deadlines(loop)
        pool.deadlines = self.deadlines  # upstream reads (response heads) have deadlines too
        self.clients: set[ClientConn] = set()
        self.server: asyncio.AbstractServer | None = None
        self.address: tuple[str, int] | None = None
        self._authorities: dict[bytes, tuple[str, int]] = {}  # Host field value -> parsed (host, port)

    def set_policy(self, policy: Policy) -> None:
        self.policy = policy
        self.audit.set_session(policy.name)

    # -- lifecycle --------------------------------------------------------------------
    async def start(self) -> None:
        host, port = self.cfg.listen
        self.server = await self.loop.create_server(lambda: ClientConn(self), host, port, backlog=1024,
                                                    reuse_address=True)
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
    async def serve(self, conn: ClientConn) -> None:
        try:
            await self._serve(conn)
        except (ChannelClosed, ConnectionError):
            conn.abort()
        except Exception:
            logging.getLogger("oshu.sidecar").exception("unexpected error serving a connection")
            conn.abort()

    async def _read_head(self, conn: ClientConn) -> bytes | None:
        """The next request head, or None after answering/closing for EOF, timeout or oversize."""
        cfg = self.cfg
        try:
            raw = await conn.read_head(cfg.max_header_size, cfg.idle_timeout, cfg.header_timeout)
        except HeadTooLarge:
            self._refuse_conn(conn, 431, "headers_too_large",
                              f"request head exceeds {cfg.max_header_size} bytes")
            return None
        except DeadlineExpired:
            if conn.buf:
                self._refuse_conn(conn, 408, "request_timeout",
                                  f"request head not received within {cfg.header_timeout:g} s")
            else:
                conn.close()
            return None
        if raw is None:
            conn.close()
        elif len(raw) > cfg.max_header_size:
            self._refuse_conn(conn, 431, "headers_too_large", f"request head exceeds {cfg.max_header_size} bytes")
            return None
        return raw

    def _refuse_conn(self, conn: Channel, status: int, code: str, message: str) -> None:
        """An error that ends the connection before any request could be understood."""
        self.metrics.refused(code)
        log(logging.INFO, "connection refused", code=code, status=status)
        conn.write(error_response(status, code, message, close=True))
        conn.close()

    async def _serve(self, conn: ClientConn) -> None:
        while True:
            raw = await self._read_head(conn)
            if raw is None:
                return
            t0 = perf_counter()
            try:
                req = parse_request_head(raw)
            except HttpError as e:
                self._refuse_conn(conn, e.status, e.code, e.message)
                return
            if req.method == b"CONNECT":
                await self._connect(conn, req, t0)
                return
            parts = split_absolute(req.target, b"http")
            if parts is None:
                self._refuse_conn(conn, 400, "not_a_proxy_request",
                                  "this is a forward proxy: send CONNECT host:port or an absolute http:// URL")
                return
            try:
                host, port = parse_authority(parts[0], 80)
            except HttpError as e:
                self._refuse_conn(conn, e.status, e.code, e.message)
                return
            keep = await self.exchange(conn, req, t0, False, host, port, parts[1], True)
            if not keep:
                conn.close()
                return
            # The next pipelined request is read only once the client takes what it was sent:
            # a client that never reads cannot make the proxy fetch and buffer without bound.
            await conn.drain()

    async def _connect(self, conn: ClientConn, req: RequestHead, t0: float) -> None:
        try:
            host, port = parse_authority(req.target, None)
        except HttpError as e:
            self._refuse_conn(conn, e.status, e.code, e.message)
            return
        plan = self.policy.plan(host, port)
        if not plan.egress_allowed:
            refusal = egress_refusal(host, port)
            self.metrics.refused(refusal.code)
            self.metrics.request(plan.label, refusal.code)
            self._audit_connect(host, port, req, refusal.status, refusal.code, t0)
            conn.write(error_response(refusal.status, refusal.code, refusal.message, close=True))
            conn.close()
            return
        if not plan.intercept:
            try:
                await self._blind(conn, host, port)
            except UpstreamError as e:
                self.metrics.refused(e.code)
                self._audit_connect(host, port, req, e.status, e.code, t0)
                conn.write(error_response(e.status, e.code, e.message, close=True))
                conn.close()
            return
        await self._intercept(conn, host, port, req, t0)

    def _audit_connect(self, host: str, port: int, req: RequestHead, status: int, outcome: str, t0: float) -> None:
        self.audit.request(_display(host, port, 443), "CONNECT", "", status, outcome, 0, 0,
                           perf_counter() - t0, (), "https")

    async def _blind(self, conn: ClientConn, host: str, port: int) -> None:
        self.metrics.tunnel("blind")
        await run_tunnel(conn, self.pool, host, port)

    async def _intercept(self, conn: ClientConn, host: str, port: int, req: RequestHead, t0: float) -> None:
        try:
            ctx = await self.leaves.context_for(host)
        except Exception:
            logging.getLogger("oshu.sidecar").exception("minting a leaf certificate failed", extra={"fields": {"host": host}})
            self._refuse_conn(conn, 500, "internal_error", "could not mint a certificate for this host")
            return
        if conn.buf or conn.closed:
            self._refuse_conn(conn, 400, "bad_request", "data sent before the CONNECT response")
            return
        conn.write(CONNECT_OK)
        self.metrics.tunnel("intercept")
        try:
            transport = await self.loop.start_tls(conn.transport, conn, ctx, server_side=True,  # type: ignore[arg-type]
                                                  ssl_handshake_timeout=self.cfg.header_timeout)
        except (ssl.SSLError, ConnectionError, TimeoutError, OSError) as e:
            self.metrics.refused("client_tls_failed")
            log(logging.INFO, "client TLS handshake failed", host=host, error=e.__class__.__name__)
            conn.abort()
            return
        if transport is None:
            conn.abort()
            return
        conn.transport = transport  # type: ignore[assignment]
        conn.keep_open_on_eof = False
        sni = sni_of(transport.get_extra_info("ssl_object"))
        if sni is None:
            sni_ok = _is_ip(host)
        else:
            sni_ok = normalize_host(sni) == host
        while True:
            raw = await self._read_head(conn)
            if raw is None:
                return
            t0 = perf_counter()
            try:
                req = parse_request_head(raw)
            except HttpError as e:
                self._refuse_conn(conn, e.status, e.code, e.message)
                return
            keep = await self.exchange(conn, req, t0, True, host, port, None, sni_ok)
            if not keep:
                conn.close()
                return
            # The next pipelined request is read only once the client takes what it was sent:
            # a client that never reads cannot make the proxy fetch and buffer without bound.
            await conn.drain()

    # -- one request ------------------------------------------------------------------
    def _finish(self, ex: Exchange) -> None:
        m = self.metrics
        m.request(ex.label, ex.outcome)
        if ex.secrets:
            m.substituted(ex.secrets, ex.label)
        if ex.scrubbed:
            m.scrubbed(ex.scrubbed, ex.label)
        if self.audit.enabled:
            self.audit.request(_display(ex.host, ex.port, 443 if ex.scheme == "https" else 80),
                               ex.method.decode("latin-1"), redact_query(ex.target), ex.status, ex.outcome,
                               ex.bytes_in, ex.bytes_out, perf_counter() - ex.t0, ex.secrets, ex.scheme)

    def _refuse(self, conn: Channel, req: RequestHead, ex: Exchange, refusal: Refusal | HttpError | UpstreamError,
                close: bool = False) -> bool:
        """Answer a request with a JSON error; keep the connection only if its framing stays in sync."""
        close = close or not req.keep_alive or req.framing != NO_BODY or req.websocket
        conn.write(error_response(refusal.status, refusal.code, refusal.message, close=close))
        self.metrics.refused(refusal.code)
        ex.status = refusal.status
        ex.outcome = refusal.code
        self._finish(ex)
        return not close

    async def exchange(self, conn: ClientConn, req: RequestHead, t0: float, tls: bool, host: str, port: int,
                       path: bytes | None, sni_ok: bool) -> bool:
        """Proxy one request; returns whether the client connection stays usable."""
        ex = Exchange(t0, "https" if tls else "http", req)
        ex.host, ex.port = host, port
        if path is not None:
            ex.target = path
        policy = self.policy
        plan = policy.plan(host, port)
        ex.label = plan.label
        ex.plan = plan
        if tls:
            mismatch = self._check_authority(req, host, port, sni_ok)
            if isinstance(mismatch, HttpError) or isinstance(mismatch, Refusal):
                return self._refuse(conn, req, ex, mismatch)
            path = mismatch
            ex.target = path
            if req.method == b"CONNECT":
                return self._refuse(conn, req, ex, bad_request("CONNECT inside an intercepted connection"), True)
        assert path is not None
        if not plan.egress_allowed:
            return self._refuse(conn, req, ex, egress_refusal(host, port))

        # Sealed tokens: refuse over plaintext or when the session is no longer live; else substitute.
        raw = req.raw
        target = path
        names: list[str] = ex.secrets
        edits: list[tuple[int, int, bytes]] = []
        active = True
        if SEALED_MARK in raw or req.authorization is not None:
            carried = tokens_in_request(policy, raw, req.authorization)
            if carried:
                if not tls:
                    return self._refuse(conn, req, ex, plaintext_refusal(carried))
                inactive = policy.inactive()
                if inactive is not None:
                    return self._refuse(conn, req, ex, inactive)
                if plan.header_subs:
                    edits = substitute_head(raw, req.line_end + 2, req.authorization, plan.header_subs, names)
                if plan.query_subs:
                    target = substitute_query(target, plan.query_subs, names)
        body_subs = plan.body_subs if tls else ()
        if body_subs and policy.inactive() is not None:
            active = False
            body_subs = ()

        # Request body: decide framing before the head is written.
        body = b""
        stream_body = False
        replacer: StreamReplacer | None = None
        upstream_framing = req.framing
        if req.framing == LENGTH:
            n = req.content_length
            # (With Expect: 100-continue the client waits for upstream's go-ahead: never buffer then.)
            if len(conn.buf) >= n or (body_subs and n <= BODY_BUFFER_LIMIT and not req.expect_continue):
                body = await conn.read_exactly(n)
                ex.bytes_in = n
                if body_subs:
                    body = replace_all(body, tuple((s.sealed, s.value, s.name) for s in body_subs), names)
                elif not active and policy.tokens_in(body):
                    return self._refuse(conn, req, ex, policy.inactive())  # type: ignore[arg-type]
            elif body_subs:
                stream_body = True
                upstream_framing = CHUNKED
                replacer = StreamReplacer(tuple((s.sealed, s.value, s.name) for s in body_subs))
            else:
                stream_body = True
        elif req.framing == CHUNKED:
            stream_body = True
            if body_subs:
                replacer = StreamReplacer(tuple((s.sealed, s.value, s.name) for s in body_subs))

        # Upstream request head: the client's head with slice edits (see http1.edit_head).
        extra = b""
        for start, end in req.drop:
            edits.append((start, end, b""))
        if not tls or target is not req.target or req.version != b"HTTP/1.1":
            edits.append((0, req.line_end, req.method + b" " + target + b" HTTP/1.1"))
        if not tls:  # Host comes from the absolute URL
            edits.extend((start, end, b"") for start, end in req.host_spans)
            extra += b"Host: " + _display(host, port, 80).encode() + b"\r\n"
        if upstream_framing == CHUNKED:
            edits.extend((start, end, b"") for start, end in req.length_spans)
            extra += _TE_CHUNKED
        elif upstream_framing == LENGTH and not stream_body and len(body) != req.content_length:
            edits.extend((start, end, b"") for start, end in req.length_spans)
            extra += b"Content-Length: %d\r\n" % len(body)
        if tls:
            # Every response from an intercepted host must arrive uncompressed to be scrubbable: not
            # only those to requests that carried a key (a streamed body is substituted after the head
            # is sent, and a key an upstream stored earlier can be asked for without any token).
            edits.extend((start, end, b"") for start, end in req.accept_encoding)
            extra += _ACCEPT_IDENTITY
        if req.websocket:
            extra += _WS_UPGRADE
        head = edit_head(raw, edits, extra)

        # Connect (pooled) and send.
        retryable = not stream_body
        try:
            up, reused = await self.pool.acquire(tls, host, port)
        except UpstreamError as e:
            return self._refuse(conn, req, ex, e)
        conn.upstream = up
        try:
            return await self._forward(conn, req, ex, up, reused, head, body, stream_body, replacer, retryable,
                                       tls, host, port, policy)
        finally:
            conn.upstream = None

    def _check_authority(self, req: RequestHead, host: str, port: int, sni_ok: bool) -> bytes | Refusal | HttpError:
        """The origin-form path if CONNECT target, SNI and Host agree; otherwise why not."""
        path = req.target
        if path[:1] != b"/":
            parts = split_absolute(path, b"https")
            if parts is None:
                if path == b"*" and req.method == b"OPTIONS":
                    parts = (req.host or b"", b"*")
                else:
                    return bad_request("request target must be origin-form or an https:// URL")
            try:
                if parse_authority(parts[0], 443) != (host, port):
                    return _mismatch(host, port, "request URL")
            except HttpError as e:
                return e
            path = parts[1]
        if req.host is None:
            return bad_request("missing Host header")
        authority = self._authorities.get(req.host)
        if authority is None:
            try:
                authority = parse_authority(req.host, 443)
            except HttpError as e:
                return e
            if len(self._authorities) >= 1024:
                self._authorities.clear()
            self._authorities[req.host] = authority
        hhost, hport = authority
        if hhost != host or hport != port:
            return _mismatch(host, port, "Host header")
        if not sni_ok:
            return _mismatch(host, port, "TLS SNI")
        return path

    async def _forward(self, conn: ClientConn, req: RequestHead, ex: Exchange, up: UpstreamConn, reused: bool,
                       head: bytes, body: bytes, stream_body: bool, replacer: StreamReplacer | None,
                       retryable: bool, tls: bool, host: str, port: int, policy: Policy) -> bool:
        loop = self.loop
        if ex.secrets:
            # Substitution was decided when the head arrived; a buffered body or the upstream connect
            # may have taken long since. A real key is never sent once the session is no longer live.
            assert ex.plan is not None
            inactive = withdrawn(self.policy, ex.plan, ex.secrets, False)
            if inactive is not None:
                self.pool.release(up)  # nothing was sent on it
                ex.secrets.clear()
                return self._refuse(conn, req, ex, inactive, True)
        up.write(head + body if body else head)
        t_sent = perf_counter()
        upload: asyncio.Task[None] | None = None
        if stream_body:
            upload = loop.create_task(self._upload(conn, up, req, replacer, ex))
            upload.add_done_callback(_retrieve)
        try:
            resp, rhead = await self._response_head(conn, up, req)
        except ChannelClosed:
            stopped = _stopped(upload)
            if stopped is not None:
                return self._refuse(conn, req, ex, stopped.refusal, True)
            if reused and retryable and not up.buf and not conn.closed:
                # A pooled connection the upstream had already closed: retry once on a fresh one.
                up.abort()
                try:
                    up = await self.pool.connect((tls, host, port))
                except UpstreamError as e:
                    return self._refuse(conn, req, ex, e)
                conn.upstream = up
                return await self._forward(conn, req, ex, up, False, head, body, False, None, False, tls, host, port,
                                           policy)
            return self._upstream_failed(conn, req, ex, up, upload, "upstream closed the connection before responding")
        except DeadlineExpired:
            up.abort()
            if upload is not None:
                upload.cancel()
            return self._refuse(conn, req, ex, UpstreamError(
                "upstream_timeout", f"no response from upstream within {self.cfg.upstream_timeout:g} s", 504), True)
        except HttpError as e:
            up.abort()
            if upload is not None:
                upload.cancel()
            return self._refuse(conn, req, ex, e, True)
        except HeadTooLarge:
            up.abort()
            if upload is not None:
                upload.cancel()
            return self._refuse(conn, req, ex, HttpError(502, "upstream_protocol_error",
                                                         "upstream response head too large"), True)
        self.metrics.observe_latency(perf_counter() - t_sent)
        ex.status = resp.status
        keep_client = req.keep_alive
        try:
            if resp.status == 101:
                return await self._upgrade(conn, req, ex, up, resp, rhead, policy, upload)
            keep_client, up_ok = await self._relay_response(conn, req, ex, up, resp, rhead, policy, tls)
        except (ChannelClosed, ConnectionError):
            keep_client, up_ok = False, False
            ex.outcome = "client_closed" if conn.closed else "upstream_closed"
        except HttpError:
            keep_client, up_ok = False, False
            ex.outcome = "upstream_protocol_error"
        if req.websocket:
            up_ok = False  # an llhttp upstream reads whatever follows an upgrade request as the new protocol
        if upload is not None:
            if not upload.done():
                upload.cancel()  # upstream answered before taking the whole body: framing lost
                keep_client = up_ok = False
            elif upload.cancelled() or upload.exception() is not None:
                keep_client = up_ok = False
        if up_ok and not conn.closed:
            self.pool.release(up)
        else:
            up.abort()
        self._finish(ex)
        return keep_client and not conn.closed

    def _upstream_failed(self, conn: ClientConn, req: RequestHead, ex: Exchange, up: UpstreamConn,
                         upload: asyncio.Task[None] | None, message: str) -> bool:
        up.abort()
        if upload is not None:
            upload.cancel()
        if conn.closed:
            ex.outcome = "client_closed"
            self._finish(ex)
            return False
        return self._refuse(conn, req, ex, UpstreamError("upstream_protocol_error", message), True)

    async def _response_head(self, conn: ClientConn, up: UpstreamConn, req: RequestHead) -> tuple[ResponseHead, bytes]:
        """The final response head; interim 1xx responses (other than 101) go to the client as they come."""
        while True:
            raw = await up.read_head(MAX_RESPONSE_HEAD, self.cfg.upstream_timeout, self.cfg.upstream_timeout)
            up.deadline = 0.0
            if raw is None:
                raise ChannelClosed("upstream closed")
            resp = parse_response_head(raw, req.method)
            if 100 <= resp.status < 200 and resp.status != 101:
                conn.write(_response_out(resp, self.policy.scrubber, []))
                continue
            return resp, raw

    async def _relay_response(self, conn: ClientConn, req: RequestHead, ex: Exchange, up: UpstreamConn,
                              resp: ResponseHead, rhead: bytes, policy: Policy, tls: bool) -> tuple[bool, bool]:
        """Stream the response to the client; returns (client keep-alive, upstream reusable)."""
        scrubber = policy.scrubber
        names = ex.scrubbed
        keep_client = req.keep_alive
        up_ok = resp.keep_alive
        http10 = req.version == b"HTTP/1.0"
        # A Content-Encoding label does not switch scrubbing off: an upstream may label plain bytes as
        # compressed (object stores serve back what the uploader set) and deflate's stored blocks keep
        # bytes as they are. A value compressed for real is not recognized (docs: Limits).
        scrub = scrubber.active
        framing = resp.framing
        close_hdr = b"" if keep_client else _CONN_CLOSE

        if framing == NO_BODY:
            conn.write(_response_out(resp, scrubber, names, close_hdr))
            return keep_client, up_ok

        if framing == LENGTH:
            n = resp.content_length
            if len(up.buf) >= n or (scrub and n <= BODY_BUFFER_LIMIT):
                body = await up.read_exactly(n) if len(up.buf) < n else up.take(n)
                if scrub:
                    body = scrubber.scrub(body, names)
                ex.bytes_out = len(body)
                if len(body) != n:
                    conn.write(_response_out(resp, scrubber, names, close_hdr + b"Content-Length: %d\r\n" % len(body),
                                             drop_length=True) + body)
                else:
                    conn.write(_response_out(resp, scrubber, names, close_hdr) + body)
                return keep_client, up_ok
            if not scrub:  # large and not scrubbable (compressed) or nothing to scrub: pass through
                conn.write(_response_out(resp, scrubber, names, close_hdr))
                remaining = n
                while remaining:
                    if not up.buf:
                        await up.wait_data()
                        if not up.buf:
                            raise ChannelClosed("upstream closed mid-body")
                    data = up.take(remaining)
                    remaining -= len(data)
                    ex.bytes_out += len(data)
                    conn.write(data)
                    if conn.closed:
                        raise ChannelClosed("client closed")
                    await conn.drain()
                return keep_client, up_ok

        # Streaming with re-framing: chunked to HTTP/1.1 clients, close-delimited to HTTP/1.0 ones.
        if http10:
            keep_client = False
            conn.write(_response_out(resp, scrubber, names, _CONN_CLOSE, drop_length=True))
        else:
            conn.write(_response_out(resp, scrubber, names, close_hdr + _TE_CHUNKED, drop_length=True))
        replacer = scrubber.stream() if scrub else None
        if framing == CHUNKED:
            decoder = ChunkedDecoder(up, strict=False)
            read = decoder.read
        elif framing == LENGTH:
            remaining = resp.content_length

            async def read() -> bytes:
                nonlocal remaining
                if not remaining:
                    return b""
                if not up.buf:
                    await up.wait_data()
                    if not up.buf:
                        raise ChannelClosed("upstream closed mid-body")
                data = up.take(remaining)
                remaining -= len(data)
                return data
        else:  # UNTIL_CLOSE
            up_ok = False

            async def read() -> bytes:
                if not up.buf:
                    await up.wait_data()
                return up.take(1 << 20)

        while True:
            data = await read()
            if not data:
                break
            if replacer is not None:
                data = replacer.feed(data)
            if data:
                ex.bytes_out += len(data)
                conn.write(data if http10 else chunk(data))
                if conn.closed:
                    raise ChannelClosed("client closed")
                await conn.drain()
        tail = replacer.flush() if replacer is not None else b""
        if replacer is not None and replacer.names:
            names.extend(n for n in replacer.names if n not in names)
        if tail:
            ex.bytes_out += len(tail)
            conn.write(tail if http10 else chunk(tail))
        if not http10:
            if framing == CHUNKED and decoder.trailers:  # names and values scrubbed alike
                conn.write(scrubber.scrub(serialize_trailers(decoder.trailers), names))
            else:
                conn.write(LAST_CHUNK)
        return keep_client, up_ok

    async def _upgrade(self, conn: ClientConn, req: RequestHead, ex: Exchange, up: UpstreamConn, resp: ResponseHead,
                       rhead: bytes, policy: Policy, upload: asyncio.Task[None] | None) -> bool:
        if not req.websocket or upload is not None:
            up.abort()
            return self._refuse(conn, req, ex, HttpError(502, "upstream_protocol_error",
                                                         "upstream switched protocols without a WebSocket request"), True)
        conn.write(_response_out(resp, policy.scrubber, ex.scrubbed, keep=_KEEP_101))
        self._finish(ex)
        conn.upstream = None
        await link(conn, up)
        return False

    async def _upload(self, conn: ClientConn, up: UpstreamConn, req: RequestHead, replacer: StreamReplacer | None,
                      ex: Exchange) -> None:
        """Stream the request body upstream as it arrives (runs beside the response relay)."""
        try:
            if req.framing == LENGTH:
                remaining = req.content_length
                while remaining:
                    if not conn.buf:
                        await conn.wait_data()
                        if not conn.buf:
                            raise ChannelClosed("client closed mid-body")
                    data = conn.take(remaining)
                    remaining -= len(data)
                    ex.bytes_in += len(data)
                    if replacer is not None:
                        self._check_live(ex)
                        data = replacer.feed(data)
                        if data:
                            up.write(chunk(data))
                    else:
                        up.write(data)
                    await up.drain()
                if replacer is not None:
                    tail = replacer.flush()
                    if tail:
                        up.write(chunk(tail))
                    up.write(LAST_CHUNK)
            else:
                decoder = ChunkedDecoder(conn)
                while True:
                    data = await decoder.read()
                    if not data:
                        break
                    ex.bytes_in += len(data)
                    if replacer is not None:
                        self._check_live(ex)
                        data = replacer.feed(data)
                    if data:
                        up.write(chunk(data))
                        await up.drain()
                tail = replacer.flush() if replacer is not None else b""
                if tail:
                    up.write(chunk(tail))
                up.write(serialize_trailers(decoder.trailers) if decoder.trailers else LAST_CHUNK)
            if replacer is not None and replacer.names:
                ex.secrets.extend(n for n in replacer.names if n not in ex.secrets)
        except (ChannelClosed, ConnectionError, HttpError):
            up.abort()
            raise

    def _check_live(self, ex: Exchange) -> None:
        """Raise SubstitutionStopped once the session is revoked or expired or no longer allows the
        substitution for this host (checked per streamed piece)."""
        assert ex.plan is not None
        inactive = withdrawn(self.policy, ex.plan, None, True)
        if inactive is not None:
            raise SubstitutionStopped(inactive)


class SubstitutionStopped(ChannelClosed):
    """A streamed body was being substituted when the session stopped being live: the upload is cut."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


def _stopped(upload: asyncio.Task[None] | None) -> SubstitutionStopped | None:
    if upload is None or not upload.done() or upload.cancelled():
        return None
    exc = upload.exception()
    return exc if isinstance(exc, SubstitutionStopped) else None


def _response_out(resp: ResponseHead, scrubber: Scrubber, names: list[str],
                  extra: bytes = b"", drop_length: bool = False, keep: frozenset[bytes] = frozenset()) -> bytes:
    """The head sent to the client: hop-by-hop lines dropped, HTTP/1.1, `extra` lines, values scrubbed."""
    edits = [(start, end, b"") for start, end, name in resp.drop if name not in keep]
    if drop_length:
        edits.extend((start, end, b"") for start, end in resp.length_spans)
    if resp.minor != 1:
        edits.append((0, resp.line_end, b"HTTP/1.1 %d %b" % (resp.status, resp.reason)))
    return scrubber.scrub(edit_head(resp.raw, edits, extra), names)


def _mismatch(host: str, port: int, what: str) -> Refusal:
    return Refusal(421, "host_mismatch",
                   f"{what} does not name {_display(host, port, 443)}: the CONNECT target, TLS SNI and Host "
                   "header must all name the same host")


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()  # consumed here; the relay decides what a failed upload means


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
