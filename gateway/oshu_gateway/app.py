"""The gateway's lifecycle and its hook on the proxy's listener.

One `GatewayProxy` (the sidecar's core, with an audit writer per session) serves the TLS
listener (and the optional plain one).
`Gateway.front` sees every request head read outside an intercepted tunnel: origin-form
requests go to the session API (`api.Api`), CONNECT and absolute-form requests must carry
`Proxy-Authorization: Basic base64(session_id:token)` and are then proxied under that
session's policy (`_policy_for`), or get `407` and nothing is forwarded.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from oshu_contract.pki import CertificateAuthority, new_ca
from oshu_contract.session import Session
from oshu_sidecar.addresses import AddressGuard
from oshu_sidecar.certs import LeafCache
from oshu_sidecar.channel import ChannelClosed
from oshu_sidecar.config import Config
from oshu_sidecar.errors import error_body
from oshu_sidecar.http1 import RequestHead
from oshu_sidecar.logs import AuditLog, log, sink
from oshu_sidecar.metrics import Metrics
from oshu_sidecar.policy import Policy
from oshu_sidecar.server import ClientConn, Proxy
from oshu_sidecar.upstream import Router, UpstreamPool, client_context

from .api import MAX_BODY, Api, ApiDeps, ApiKeys, Response
from .config import GatewayConfig
from .registry import Entry, Registry
from .store import SqliteStore, StoreError, load_or_create_key
from .wire import headers_of, http_response, proxy_auth_required

#: A connection that never authenticated gets this policy: no secrets, no egress.
DENY_ALL = Policy(Session(session="unauthenticated", secrets=(), egress=()))
SWEEP_INTERVAL = 1.0


class StartupError(RuntimeError):
    """The gateway cannot start; the message says what to fix."""


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class GatewayProxy(Proxy):
    """The sidecar's proxy core with one audit line writer per session, kept on its `Entry`.

    The core's own cache holds 64 writers and starts over when full: right for a sidecar (one
    session), but with a hundred sessions in use it rebuilt a writer (and its cached JSON) on
    most requests, 5% of the gateway's CPU under load (py-spy).
    """

    def __init__(self, registry: Registry, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.registry = registry

    def audit_for(self, session: str) -> AuditLog:
        entry = self.registry.sessions.get(session)
        if entry is None:  # deleted or expired meanwhile, or the deny-all policy
            return super().audit_for(session)
        audit = entry.audit
        if audit is None:
            audit = entry.audit = AuditLog(session)
        return audit


class Gateway:
    def __init__(self, cfg: GatewayConfig) -> None:
        self.cfg = cfg
        self.metrics = Metrics()
        self.proxy: Proxy | None = None
        self.plain: asyncio.AbstractServer | None = None
        self.registry: Registry | None = None
        self.api: Api | None = None
        self.ready = False
        self._sweeper: asyncio.Task[None] | None = None
        self.address: tuple[str, int] | None = None
        self.plain_address: tuple[str, int] | None = None

    # -- start-up ---------------------------------------------------------------------
    def _ca(self) -> tuple[Path, Path]:
        cfg = self.cfg
        if cfg.ca_cert and cfg.ca_key:
            return Path(cfg.ca_cert), Path(cfg.ca_key)
        cert, key = cfg.state_dir / "ca.crt", cfg.state_dir / "ca.key"
        if not cert.exists() and not key.exists():
            pair = new_ca("oshu-gateway CA", validity=timedelta(days=3650))
            _write_private(key, pair.key_pem)
            cert.write_bytes(pair.cert_pem)
            log(logging.INFO, "generated the gateway CA", cert=str(cert))
        return cert, key

    def _listener_tls(self, ca: CertificateAuthority) -> ssl.SSLContext:
        cfg = self.cfg
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(["http/1.1"])
        if cfg.tls_cert and cfg.tls_key:
            try:
                ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
            except (OSError, ssl.SSLError) as e:
                raise StartupError(f"unusable --tls-cert/--tls-key: {e}") from None
            return ctx
        names = list(dict.fromkeys([cfg.public_host, "127.0.0.1", "localhost"]))
        pair = ca.issue_leaf(names, validity=timedelta(days=365))
        listener_dir = cfg.state_dir / "listener"
        listener_dir.mkdir(mode=0o700, exist_ok=True)
        cert, key = listener_dir / "tls.crt", listener_dir / "tls.key"
        cert.unlink(missing_ok=True)
        key.unlink(missing_ok=True)
        _write_private(key, pair.key_pem)
        cert.write_bytes(
            pair.cert_pem
            + ca.cert.public_bytes(
                __import__("cryptography.hazmat.primitives.serialization", fromlist=["Encoding"]).Encoding.PEM
            )
        )
        ctx.load_cert_chain(cert, key)
        return ctx

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        sink.attach(loop)
        keys, ca_paths, ca_pems = self._open_state()
        m = self.metrics
        m.set_session("gateway")
        self.proxy = self._build_proxy(loop, ca_paths, ca_pems)
        assert self.registry is not None
        self.api = Api(
            ApiDeps(
                self.registry,
                keys,
                ca_pems[0],
                self.public_url,
                self.cfg.max_ttl,
                self.cfg.default_idle_ttl,
                lambda: self.ready,
                self._metrics_text,
            )
        )
        await self._listen(loop, self._listener_tls(CertificateAuthority.from_pem(*ca_pems)))
        self._sweeper = loop.create_task(self._sweep())
        self.ready = True
        assert self.address is not None
        log(
            logging.INFO,
            "listening",
            listen=_fmt(self.address),
            plain_listen=_fmt(self.plain_address) if self.plain_address else None,
            public_url=self.public_url(),
            sessions=len(self.registry.sessions),
        )

    def _open_state(self) -> tuple[ApiKeys, tuple[Path, Path], tuple[bytes, bytes]]:
        """The state dir, API keys, CA and session store (loaded into `self.registry`)."""
        cfg = self.cfg
        try:
            cfg.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise StartupError(f"cannot create --state-dir {cfg.state_dir}: {e.strerror or e}") from None
        try:
            keys = ApiKeys(cfg.api_key_file)
        except OSError as e:
            raise StartupError(f"cannot read --api-key-file {cfg.api_key_file}: {e.strerror or e}") from None
        ca_cert_path, ca_key_path = self._ca()
        try:
            ca_cert, ca_key = ca_cert_path.read_bytes(), ca_key_path.read_bytes()
            CertificateAuthority.from_pem(ca_cert, ca_key)
        except (OSError, ValueError) as e:
            raise StartupError(f"unusable CA {ca_cert_path} / {ca_key_path}: {e}") from None
        try:
            key = load_or_create_key(cfg.encryption_key_file or cfg.state_dir / "encryption.key")
            self.registry = Registry(SqliteStore(cfg.state_dir / "sessions.db", key))
            self.registry.load(time.time())
        except StoreError as e:
            raise StartupError(str(e)) from None
        return keys, (ca_cert_path, ca_key_path), (ca_cert, ca_key)

    def _build_proxy(
        self, loop: asyncio.AbstractEventLoop, ca_paths: tuple[Path, Path], ca_pems: tuple[bytes, bytes]
    ) -> GatewayProxy:
        """The sidecar's proxy core with the gateway's hook, SSRF guard and per-session policies."""
        cfg, m = self.cfg, self.metrics
        try:
            up_ctx = client_context(cfg.upstream_ca_files)
        except (OSError, ValueError) as e:
            raise StartupError(f"unusable --upstream-ca-file: {e}") from None
        scfg = Config(
            listen=cfg.listen,
            admin_listen=("127.0.0.1", 0),
            session_file="",
            ca_cert=str(ca_paths[0]),
            ca_key=str(ca_paths[1]),
            upstream_ca_files=cfg.upstream_ca_files,
            resolve=cfg.resolve,
            connect_to=cfg.connect_to,
            log_level=cfg.log_level,
        )
        pool = UpstreamPool(
            loop,
            up_ctx,
            Router(cfg.connect_to, cfg.resolve, AddressGuard(cfg.allow_upstream_cidrs)),
            scfg.connect_timeout,
            on_open=lambda: m.opened("upstream"),
            on_close=lambda: m.closed("upstream"),
        )
        leaves = LeafCache(ca_pems[0], ca_pems[1], on_mint=m.leaf_minted)
        assert self.registry is not None
        return GatewayProxy(self.registry, scfg, self._policy_for, m, leaves, pool, front=self.front)

    async def _listen(self, loop: asyncio.AbstractEventLoop, tls: ssl.SSLContext) -> None:
        """The TLS listener (the proxy's) and the optional plain one."""
        cfg, proxy = self.cfg, self.proxy
        assert proxy is not None
        try:
            await proxy.start(tls)
        except OSError as e:
            raise StartupError(f"cannot listen on {cfg.listen[0]}:{cfg.listen[1]}: {e.strerror or e}") from None
        self.address = proxy.address
        if cfg.plain_listen is None:
            return
        try:
            self.plain = await loop.create_server(
                lambda: ClientConn(proxy), *cfg.plain_listen, backlog=1024, reuse_address=True
            )
        except OSError as e:
            raise StartupError(
                f"cannot listen on {cfg.plain_listen[0]}:{cfg.plain_listen[1]}: {e.strerror or e}"
            ) from None
        self.plain_address = self.plain.sockets[0].getsockname()[:2]

    def public_url(self) -> str:
        if self.cfg.public_url:
            return self.cfg.public_url
        host, port = self.address or self.cfg.listen
        if host in ("0.0.0.0", "::"):
            host = self.cfg.public_host
        return f"https://{_fmt((host, port))}"

    # -- the hook on the listener -----------------------------------------------------
    async def front(self, conn: ClientConn, req: RequestHead, t0: float) -> bool | None:
        assert self.registry is not None
        if req.method != b"CONNECT" and req.target.startswith(b"/"):
            return await self._api(conn, req)
        headers = headers_of(req)
        now = time.time()
        entry = self.registry.authenticate(headers.get("proxy-authorization"), now)
        if entry is None:
            conn.principal = None
            self.metrics.refused("proxy_auth_required")
            log(
                logging.INFO,
                "proxy request refused",
                code="proxy_auth_required",
                status=407,
                method=req.method.decode("latin-1"),
            )
            conn.write(proxy_auth_required())
            return False
        entry.touch(now, 1)
        conn.principal = entry
        return None

    def _policy_for(self, conn: object) -> Policy:
        entry = getattr(conn, "principal", None)
        if not isinstance(entry, Entry):
            return DENY_ALL
        now = time.time()
        policy = entry.current_policy(now)
        if policy is entry.policy:  # live: the request renews the idle TTL (Entry.touch, inlined)
            entry.last_used = now
            entry.used = True
        return policy

    async def _api(self, conn: ClientConn, req: RequestHead) -> bool:
        assert self.api is not None
        headers = headers_of(req)
        method = req.method.decode("latin-1")
        path = req.target.decode("latin-1")
        if "transfer-encoding" in headers:
            conn.write(
                http_response(
                    Response(411, error_body("length_required", "send the body with Content-Length")), close=True
                )
            )
            return False
        length = req.content_length or 0
        if length > MAX_BODY:
            conn.write(
                http_response(
                    Response(413, error_body("body_too_large", f"the body limit is {MAX_BODY} bytes")), close=True
                )
            )
            return False
        if length and req.expect_continue:
            conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # curl waits for this before sending a body > 1 KiB
        try:
            body = await conn.read_exactly(length) if length else b""
        except (ChannelClosed, TimeoutError):
            return False
        resp = await self.api.handle(method, path, headers, body)
        close = not req.keep_alive
        conn.write(http_response(resp, close, head_only=method == "HEAD"))
        log(
            logging.INFO,
            "api",
            method=method,
            route=path.split("?")[0] if not path.startswith("/v1/sessions/") else "/v1/sessions/{id}",
            status=resp.status,
        )
        return not close

    def _metrics_text(self) -> bytes:
        r = self.registry
        assert r is not None and self.api is not None
        lines = [
            "# HELP oshu_gateway_sessions_live Sessions currently live.",
            "# TYPE oshu_gateway_sessions_live gauge",
            f"oshu_gateway_sessions_live {len(r.sessions)}",
        ]
        for name, value in (("created", r.created), ("deleted", r.deleted), ("expired", r.expired)):
            lines += [
                f"# HELP oshu_gateway_sessions_{name}_total Sessions {name} since start.",
                f"# TYPE oshu_gateway_sessions_{name}_total counter",
                f"oshu_gateway_sessions_{name}_total {value}",
            ]
        lines += [
            "# HELP oshu_gateway_api_requests_total API requests by route and status.",
            "# TYPE oshu_gateway_api_requests_total counter",
        ]
        lines += [
            f'oshu_gateway_api_requests_total{{route="{route}",status="{status}"}} {n}'
            for (route, status), n in sorted(self.api.counts.items())
        ]
        return self.metrics.render() + ("\n".join(lines) + "\n").encode()

    async def _sweep(self) -> None:
        assert self.registry is not None
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                await self.registry.sweep()
            except Exception:
                logging.getLogger("oshu.gateway").exception("session sweep failed")

    async def stop(self) -> None:
        self.ready = False
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.plain is not None:
            self.plain.close()
        if self.proxy is not None:
            await self.proxy.stop(5.0)
        if self.registry is not None:
            await self.registry.sweep()
            self.registry.close()
        log(logging.INFO, "stopped")
        sink.flush()


def _fmt(addr: tuple[str, int]) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
