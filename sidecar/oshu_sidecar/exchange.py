"""One request through the proxy: an `Exchange` owns its state from head to audit line.

It asks `decide()` what to do, reads or streams the body, builds the upstream head,
sends it over a pooled, verified upstream connection and hands the response to
response.py. A request a credential handler claimed (credentials.py) goes through that
handler first (credexchange.py: its body buffered if asked, its head, body and response
rewritten). Every refusal goes out as a JSON error (errors.py) through `refuse()`;
every exchange ends in `finish()` (metrics and the audit line).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING

from .body import LAST_CHUNK, BodyReader, chunk, serialize_trailers
from .channel import ChannelClosed, DeadlineExpired, HeadTooLarge
from .credentials import BodyNeed, Rewrite
from .credexchange import prepare, relay_transformed, transform_whole
from .decide import Decision, Facts, body_refusal, decide, display, refusal_closes
from .errors import ProxyError
from .http1 import CHUNKED, LENGTH, NO_BODY, RequestHead, edit_head
from .logs import AuditEntry
from .policy import Policy, withdrawn
from .response import read_response_head, relay, switch_protocols
from .scrub import Scrubber
from .substitute import StreamReplacer, redact_query, replace_all

if TYPE_CHECKING:
    from .server import ClientConn, Proxy
    from .upstream import UpstreamConn

#: Bodies whose length substitution may change are buffered up to this size so Content-Length
#: stays exact; larger ones are re-framed as chunked instead.
BODY_BUFFER_LIMIT = 1 << 20
_TE_CHUNKED = b"Transfer-Encoding: chunked\r\n"


class SubstitutionStopped(ChannelClosed):
    """A streamed body was being substituted when the session stopped allowing it: the upload is cut."""

    def __init__(self, refusal: ProxyError) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


class Exchange:
    """One request's state: head, decision, body plan, upstream, response framing and audit fields."""

    __slots__ = (
        "body",
        "bytes_in",
        "bytes_out",
        "conn",
        "d",
        "facts",
        "outcome",
        "policy",
        "proxy",
        "replacer",
        "req",
        "rewrite",
        "scrubbed",
        "scrubber",
        "secrets",
        "status",
        "stream_body",
        "t0",
        "up",
        "upload",
    )

    def __init__(self, proxy: Proxy, conn: ClientConn, req: RequestHead, facts: Facts, t0: float) -> None:
        self.proxy = proxy
        self.conn = conn
        self.req = req
        self.facts = facts
        self.t0 = t0
        self.policy: Policy = proxy.resolve_policy(conn)
        self.d: Decision = decide(req, self.policy, facts)
        self.status = 0
        self.outcome = "forwarded"
        self.bytes_in = 0
        self.bytes_out = 0
        self.secrets = self.d.secrets
        self.scrubbed: list[str] = []
        self.body = b""
        self.stream_body = False
        self.replacer: StreamReplacer | None = None
        self.rewrite: Rewrite | None = None  # a credential handler's (credentials.py), if one took the request
        #: What the response is scrubbed with: the session's scrubber, plus a rewrite's extra values.
        self.scrubber: Scrubber = self.policy.scrubber
        self.up: UpstreamConn | None = None
        self.upload: asyncio.Task[None] | None = None

    # -- the request --------------------------------------------------------------------
    async def run(self) -> bool:
        """Proxy the request; returns whether the client connection stays usable."""
        d = self.d
        if d.refusal is not None:
            if not d.routed:  # no host to account it to: the connection is refused
                self.proxy.refuse_conn(self.conn, d.refusal)
                return False
            return self.refuse(d.refusal, d.close)
        claim = d.claim
        if claim is not None:
            refusal = await prepare(self, claim)
            if refusal is not None:
                return self.refuse(refusal)
        if self.req.framing != NO_BODY and (claim is None or claim.body != BodyNeed.BUFFER):
            refusal = await self._prepare_body()
            if refusal is not None:
                return self.refuse(refusal)
        try:
            head = self._upstream_head()
        except ProxyError as e:  # a credential handler's head rewrite refused
            return self.refuse(e)
        if claim is not None:  # (after the head: a chunk re-signer chains from the re-signed head)
            refusal = transform_whole(self)
            if refusal is not None:
                return self.refuse(refusal)
        try:
            up, reused = await self.proxy.pool.acquire(self.facts.tls, d.host, d.port)
        except ProxyError as e:
            return self.refuse(e)
        self.conn.upstream = up
        try:
            return await self._forward(up, reused, head)
        finally:
            self.conn.upstream = None

    async def _prepare_body(self) -> ProxyError | None:
        """Buffer (and substitute) the body when that keeps Content-Length exact, else plan streaming."""
        req, d = self.req, self.d
        pairs = tuple((s.sealed, s.value, s.name) for s in d.body_subs)
        if req.framing == LENGTH:
            n = req.content_length
            # (With Expect: 100-continue the client waits for upstream's go-ahead: never buffer then.)
            if len(self.conn.buf) >= n or (pairs and n <= BODY_BUFFER_LIMIT and not req.expect_continue):
                self.body = await self.conn.read_exactly(n)
                self.bytes_in = n
                if pairs:
                    self.body = replace_all(self.body, pairs, self.secrets)
                else:
                    return body_refusal(d, self.policy, self.body)
                return None
        elif req.framing != CHUNKED:
            return None
        self.stream_body = True
        if pairs:
            self.replacer = StreamReplacer(pairs)
        return None

    def _upstream_head(self) -> bytes:
        """The client's head with the decision's edits and the framing the body goes out with."""
        req, d = self.req, self.d
        edits = d.edits
        framing = b""
        if req.framing == CHUNKED or self.replacer is not None:
            edits.extend((start, end, b"") for start, end in req.length_spans)
            framing = _TE_CHUNKED
        elif req.framing == LENGTH and not self.stream_body and len(self.body) != req.content_length:
            edits.extend((start, end, b"") for start, end in req.length_spans)
            framing = b"Content-Length: %d\r\n" % len(self.body)
        head = edit_head(req.raw, edits, d.extra + framing + d.extra_tail)
        rewrite = self.rewrite
        return head if rewrite is None or rewrite.head is None else rewrite.head(head)

    async def _forward(self, up: UpstreamConn, reused: bool, head: bytes) -> bool:
        self.up = up
        if self.secrets:
            # Substitution was decided when the head arrived; a buffered body or the upstream connect
            # may have taken long since. A real key is never sent once the session no longer allows it.
            refusal = self._withdrawn(False)
            if refusal is not None:
                self.proxy.pool.release(up)  # nothing was sent on it
                self.secrets.clear()
                return self.refuse(refusal, True)
        up.write(head + self.body if self.body else head)
        t_sent = perf_counter()
        if self.stream_body:
            self.upload = self.proxy.loop.create_task(self._upload(up))
            self.upload.add_done_callback(_retrieve)
        try:
            resp = await read_response_head(self, up)
        except ChannelClosed:
            stopped = _stopped(self.upload)
            if stopped is not None:
                return self.refuse(stopped.refusal, True)
            if reused and not self.stream_body and not up.buf and not self.conn.closed:
                return await self._retry(up, head)
            return self._upstream_failed("upstream closed the connection before responding")
        except (DeadlineExpired, ProxyError, HeadTooLarge) as e:
            return self._response_head_failed(e)
        self.proxy.metrics.observe_latency(perf_counter() - t_sent)
        self.status = resp.status
        if resp.status == 101:
            return await switch_protocols(self, up, resp)
        transform = self.rewrite.response if self.rewrite is not None else None
        try:
            if transform is not None:
                keep_client, up_ok = await relay_transformed(self, up, resp, transform)
            else:
                keep_client, up_ok = await relay(self, up, resp)
        except (ChannelClosed, ConnectionError):
            keep_client = up_ok = False
            self.outcome = "client_closed" if self.conn.closed else "upstream_closed"
        except ProxyError:
            keep_client = up_ok = False
            self.outcome = "upstream_protocol_error"
        return self._settle(up, keep_client, up_ok)

    async def _retry(self, stale: UpstreamConn, head: bytes) -> bool:
        """A pooled connection the upstream had already closed: once more on a fresh one."""
        stale.abort()
        d = self.d
        try:
            up = await self.proxy.pool.connect((self.facts.tls, d.host, d.port))
        except ProxyError as e:
            return self.refuse(e)
        self.conn.upstream = up
        return await self._forward(up, False, head)

    def _response_head_failed(self, e: Exception) -> bool:
        assert self.up is not None
        self.up.abort()
        if self.upload is not None:
            self.upload.cancel()
        if isinstance(e, DeadlineExpired):
            e = ProxyError(
                "upstream_timeout", f"no response from upstream within {self.proxy.cfg.upstream_timeout:g} s"
            )
        elif isinstance(e, HeadTooLarge):
            e = ProxyError("upstream_protocol_error", "upstream response head too large")
        assert isinstance(e, ProxyError)
        return self.refuse(e, True)

    def _upstream_failed(self, message: str) -> bool:
        assert self.up is not None
        self.up.abort()
        if self.upload is not None:
            self.upload.cancel()
        if self.conn.closed:
            self.outcome = "client_closed"
            self.finish()
            return False
        return self.refuse(ProxyError("upstream_protocol_error", message), True)

    def _settle(self, up: UpstreamConn, keep_client: bool, up_ok: bool) -> bool:
        """After the response: release or drop the upstream, account, tell whether the client stays."""
        if self.req.websocket:
            up_ok = False  # an llhttp upstream reads whatever follows an upgrade request as the new protocol
        upload = self.upload
        if upload is not None:
            if not upload.done():
                upload.cancel()  # upstream answered before taking the whole body: framing lost
                keep_client = up_ok = False
            elif upload.cancelled() or upload.exception() is not None:
                keep_client = up_ok = False
        if up_ok and not self.conn.closed:
            self.proxy.pool.release(up)
        else:
            up.abort()
        self.finish()
        return keep_client and not self.conn.closed

    # -- the streamed request body ----------------------------------------------------------
    async def _upload(self, up: UpstreamConn) -> None:
        """Stream the request body upstream as it arrives (runs beside the response relay)."""
        req, replacer = self.req, self.replacer
        stream = self.rewrite.stream if self.rewrite is not None else None
        reader = BodyReader(self.conn, req.framing, req.content_length)
        rechunk = req.framing == CHUNKED or replacer is not None
        try:
            while True:
                data = await reader.read()
                if not data:
                    break
                self.bytes_in += len(data)
                if replacer is not None:
                    self._check_live()
                    data = replacer.feed(data)
                if stream is not None:
                    self._check_live(False)  # each piece is signed anew with the real key
                    data = _transformed(stream.feed, data)
                if data:
                    up.write(chunk(data) if rechunk else data)
                await up.drain()
            if stream is not None and (tail := _transformed(stream.flush)):
                up.write(chunk(tail) if rechunk else tail)
            if rechunk:
                tail = replacer.flush() if replacer is not None else b""
                if tail:
                    up.write(chunk(tail))
                up.write(serialize_trailers(reader.trailers) if reader.trailers else LAST_CHUNK)
            if replacer is not None and replacer.names:
                self.secrets.extend(n for n in replacer.names if n not in self.secrets)
        except (ChannelClosed, ConnectionError, ProxyError):
            up.abort()
            raise

    def _withdrawn(self, body_only: bool) -> ProxyError | None:
        assert self.d.plan is not None
        names = None if body_only else self.secrets
        return withdrawn(self.proxy.resolve_policy(self.conn), self.d.plan, names, body_only)

    def _check_live(self, body_only: bool = True) -> None:
        """Raise SubstitutionStopped once the session is revoked or expired or no longer allows the
        substitution (`body_only`: body substitution; else also the head's, and the credential a
        handler uses) for this host (checked per streamed piece)."""
        refusal = self._withdrawn(body_only)
        if refusal is not None:
            raise SubstitutionStopped(refusal)

    # -- answers and accounting ---------------------------------------------------------------
    def refuse(self, error: ProxyError, close: bool = False) -> bool:
        """Answer with a JSON error; keep the connection only if its framing stays in sync."""
        close = close or refusal_closes(self.req, self.d)
        self.conn.write(error.response(close))
        self.proxy.metrics.refused(error.code)
        self.status = error.status
        self.outcome = error.code
        self.finish()
        return not close

    def finish(self) -> None:
        proxy, d = self.proxy, self.d
        if self.rewrite is not None and self.rewrite.done is not None:
            self.rewrite.done(self.status)
        label = d.plan.label if d.plan is not None else "other"
        m = proxy.metrics
        m.request(label, self.outcome)
        if self.secrets:
            m.substituted(self.secrets, label)
        if self.scrubbed:
            m.scrubbed(self.scrubbed, label)
        audit = proxy.audit_for(self.policy.name)
        if audit.enabled:
            tls = self.facts.tls
            audit.request(
                AuditEntry(
                    "https" if tls else "http",
                    display(d.host, d.port, 443 if tls else 80),
                    self.req.method.decode("latin-1"),
                    redact_query(d.audit_path),
                    self.status,
                    self.outcome,
                    self.bytes_in,
                    self.bytes_out,
                    perf_counter() - self.t0,
                    self.secrets,
                )
            )


def _transformed(fn: Callable[..., bytes], *args: bytes) -> bytes:
    """A credential stream transform's output; its refusal stops the upload (the client gets it)."""
    try:
        return fn(*args)
    except ProxyError as e:
        raise SubstitutionStopped(e) from None


def _stopped(upload: asyncio.Task[None] | None) -> SubstitutionStopped | None:
    if upload is None or not upload.done() or upload.cancelled():
        return None
    exc = upload.exception()
    return exc if isinstance(exc, SubstitutionStopped) else None


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()  # consumed here; the relay decides what a failed upload means
