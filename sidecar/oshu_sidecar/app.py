"""The sidecar's lifecycle: load, start listeners, watch the session, stop cleanly.

`Sidecar` wires the pieces (policy from the session watcher, leaf cache, upstream pool,
proxy, admin endpoints, metrics) and owns their start/stop order, aiohttp-style.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path

from oshu_contract.session import SessionError

from .admin import AdminApp, AdminServer, RedirectCheck
from .certs import LeafCache
from .config import Config
from .logs import log, sink
from .metrics import Metrics
from .policy import Policy
from .server import Proxy
from .sessionwatch import SessionWatcher, file_signature
from .transparent import TransparentListener
from .upstream import Router, UpstreamPool, client_context


class StartupError(RuntimeError):
    """The sidecar cannot start; the message says what to fix."""


def load_ca(cfg: Config) -> tuple[bytes, bytes]:
    """Read the CA and check, with the ssl module alone, that certificate and key parse and match.

    (`cryptography` is only imported when the first leaf is minted.)
    """
    try:
        cert = Path(cfg.ca_cert).read_bytes()
    except OSError as e:
        raise StartupError(f"cannot read --ca-cert {cfg.ca_cert}: {e.strerror or e}") from None
    try:
        key = Path(cfg.ca_key).read_bytes()
    except OSError as e:
        raise StartupError(f"cannot read --ca-key {cfg.ca_key}: {e.strerror or e}") from None
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        probe.load_cert_chain(cfg.ca_cert, cfg.ca_key)
    except ssl.SSLError as e:
        raise StartupError(
            f"unusable CA in --ca-cert/--ca-key (not PEM, or key does not match): {e.reason or e}"
        ) from None
    return cert, key


class Sidecar:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.metrics = Metrics()
        self.proxy: Proxy | None = None
        self.transparent: TransparentListener | None = None
        self.admin: AdminServer | None = None
        self.watcher: SessionWatcher | None = None
        self.pool: UpstreamPool | None = None
        self.leaves: LeafCache | None = None
        self._ca_signature: tuple[object, object] = (None, None)
        self.ready = False
        self._stopped = asyncio.Event()

    def _on_policy(self, policy: Policy) -> None:
        m = self.metrics
        m.set_session(policy.name)
        m.session_revoked = 1 if policy.revoked_reason else 0
        m.session_load_error = 0
        m.bind_expiry(
            lambda: self.watcher.policy.seconds_until_expiry() if self.watcher and self.watcher.policy else float("inf")
        )

    def _policy_for(self, conn: object) -> Policy:
        """Every connection gets the process's session (the watcher's latest policy)."""
        assert self.watcher is not None and self.watcher.policy is not None
        return self.watcher.policy

    def _on_result(self, result: str) -> None:
        self.metrics.reloaded(result)
        if result == "error":
            self.metrics.session_load_error = 1

    async def start(self) -> None:
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        sink.attach(loop)
        ca_cert, ca_key = load_ca(cfg)
        self.watcher = SessionWatcher(cfg.session_file, self._on_policy, cfg.reload_interval, self._on_result)
        try:
            policy = self.watcher.load_initial()
        except SessionError as e:
            raise StartupError(str(e)) from None
        try:
            ssl_ctx = client_context(cfg.upstream_ca_files)
        except (OSError, ValueError) as e:
            raise StartupError(f"unusable --upstream-ca-file: {e}") from None
        m = self.metrics
        self.pool = UpstreamPool(
            loop,
            ssl_ctx,
            Router(cfg.connect_to, cfg.resolve),
            cfg.connect_timeout,
            on_open=lambda: m.opened("upstream"),
            on_close=lambda: m.closed("upstream"),
        )
        leaves = LeafCache(ca_cert, ca_key, on_mint=m.leaf_minted)
        self.leaves = leaves
        self._ca_signature = (file_signature(cfg.ca_cert), file_signature(cfg.ca_key))
        self.watcher.also_poll.append(self._poll_ca)
        self.proxy = Proxy(cfg, self._policy_for, m, leaves, self.pool)
        try:
            await self.proxy.start()
        except OSError as e:
            raise StartupError(f"cannot listen on {cfg.listen[0]}:{cfg.listen[1]}: {e.strerror or e}") from None
        self._start_transparent()
        redirect = RedirectCheck(cfg.redirect_canary) if cfg.require_redirect else None
        self.admin = AdminServer(
            AdminApp(m, lambda: self.ready, self._status, redirect),
            *cfg.admin_listen,
            timeout=max(cfg.header_timeout, 1.0),
        )
        try:
            await self.admin.start()
        except OSError as e:
            raise StartupError(
                f"cannot listen on {cfg.admin_listen[0]}:{cfg.admin_listen[1]}: {e.strerror or e}"
            ) from None
        self.watcher.start()
        self.ready = True
        if redirect is not None:
            redirect.start()  # the first probe now, so /readyz has an answer at once
        assert self.proxy.address and self.admin.address
        log(
            logging.INFO,
            "listening",
            listen=_fmt(self.proxy.address),
            admin=_fmt(self.admin.address),
            transparent=[_fmt(a) for a in self.transparent.addresses] if self.transparent else [],
            session=policy.name,
            secrets=[s.name for s in policy.session.secrets],
        )

    def _start_transparent(self) -> None:
        """The transparent listener, on the proxy's loop, when --transparent-listen names addresses."""
        if not self.cfg.transparent_listen or self.proxy is None:
            return
        self.transparent = TransparentListener(self.proxy, self.cfg.transparent_listen, self.cfg.redirect_canary)
        try:
            self.transparent.start()
        except OSError as e:
            addrs = ", ".join(_fmt(a) for a in self.cfg.transparent_listen)
            raise StartupError(f"cannot listen on --transparent-listen {addrs}: {e.strerror or e}") from None

    def _poll_ca(self) -> None:
        """Pick up a rotated CA (same Secret volume as the session file); keep the old one if unusable."""
        sig = (file_signature(self.cfg.ca_cert), file_signature(self.cfg.ca_key))
        if sig == self._ca_signature or None in sig:
            return
        self._ca_signature = sig
        try:
            cert, key = load_ca(self.cfg)
        except StartupError as e:
            log(logging.ERROR, "CA change rejected; still minting from the previous CA", error=str(e))
            return
        if self.leaves is None:  # not started yet: start() loads the CA itself
            return
        self.leaves.replace_ca(cert, key)
        log(logging.INFO, "CA reloaded; leaf certificates will be re-minted")

    def _status(self) -> dict[str, object]:
        policy = self.watcher.policy if self.watcher else None
        if policy is None:
            return {}
        inactive = policy.inactive()
        return {"session": policy.name, "state": inactive.code if inactive else "active"}

    async def stop(self) -> None:
        self.ready = False
        if self.watcher is not None:
            await self.watcher.stop()
        if self.transparent is not None:
            self.transparent.stop()
        if self.proxy is not None:
            await self.proxy.stop(self.cfg.drain_timeout)
        if self.admin is not None:
            await self.admin.stop()
        log(logging.INFO, "stopped")
        sink.flush()
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


def _fmt(addr: tuple[str, int]) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
