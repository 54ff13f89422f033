"""Leaf certificates for intercepted hosts: minted off the event loop, cached per name.

Each name gets its own server-side SSLContext (the leaf loaded into it once), so a
fresh intercepted connection with a cached leaf costs a TLS handshake and nothing else.
Concurrent first requests for one name share a single minting job. The contexts record
the client's SNI on the SSL object so the proxy can check it against the CONNECT target.

A server name that is not ASCII never reaches that callback: CPython's SNI hook fails to
decode it, reports "Exception ignored" with a traceback on stderr, and OpenSSL ends the
handshake with an internal_error alert. The handshake is refused either way (no leaf is
served, nothing is forwarded); `refuse_non_ascii_sni` turns the traceback into one JSON line.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .logs import log, unraisable_handlers

if TYPE_CHECKING:  # pki pulls in `cryptography` (~10 MB resident): imported on first mint only
    from oshu_contract.pki import CertificateAuthority, KeyPair

#: Leaves are re-minted when less than this much validity is left.
RENEW_BEFORE = 3600.0
MAX_CACHED = 1024
SNI_ATTR = "oshu_sni"


def _record_sni(sslobj: ssl.SSLObject, server_name: str | None, ctx: ssl.SSLContext) -> None:
    # Stash the SNI on the SSLObject; read back after the handshake via get_extra_info("ssl_object").
    setattr(sslobj, SNI_ATTR, server_name)
    return None


def sni_of(sslobj: object) -> str | None:
    return getattr(sslobj, SNI_ATTR, None)


def non_ascii_server_name(unraisable: Any) -> bytes | None:
    """The raw name, if this "exception ignored" event is CPython's SNI hook failing to decode a
    ClientHello's server name as ASCII (the name is the event's object; no other path reports that)."""
    exc, obj = unraisable.exc_value, unraisable.object
    if (
        isinstance(exc, UnicodeDecodeError)
        and isinstance(obj, bytes)
        and exc.object == obj
        and exc.encoding == "ascii"
        and unraisable.err_msg is None
    ):
        return obj
    return None


def refuse_non_ascii_sni(unraisable: Any) -> bool:
    """Log a refused non-ASCII SNI as one JSON line (OpenSSL has already failed the handshake)."""
    name = non_ascii_server_name(unraisable)
    if name is None:
        return False
    log(
        logging.INFO,
        "client TLS handshake refused: server name is not ASCII",
        reason="sni_not_ascii",
        sni=name[:253].decode("ascii", "backslashreplace"),
    )
    return True


unraisable_handlers.append(refuse_non_ascii_sni)


def _load_chain(ctx: ssl.SSLContext, pair: KeyPair) -> None:
    """Load a PEM cert+key into `ctx` without the key ever touching a filesystem (memfd on Linux)."""
    pem = pair.cert_pem + pair.key_pem
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("oshu-leaf", os.MFD_CLOEXEC)
        try:
            os.write(fd, pem)
            ctx.load_cert_chain(f"/proc/self/fd/{fd}")
            return
        finally:
            os.close(fd)
    with tempfile.NamedTemporaryFile(prefix="oshu-leaf-", suffix=".pem") as f:  # pragma: no cover - non-Linux
        f.write(pem)
        f.flush()
        ctx.load_cert_chain(f.name)


def server_context(pair: KeyPair) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.sni_callback = _record_sni
    # One TLS 1.3 session ticket instead of OpenSSL's two: each costs ~20 us of the fresh
    # connection's critical path, and one is enough for a client to resume (a resumed
    # handshake hands it a new one).
    ctx.num_tickets = 1
    _load_chain(ctx, pair)
    return ctx


class LeafCache:
    """name -> server SSLContext with a leaf for that name, minted on demand in an executor.

    Holds the CA as PEM and parses it (importing `cryptography`) on the first mint, so an
    idle sidecar never pays for the X.509 machinery.
    """

    def __init__(
        self,
        ca_cert_pem: bytes,
        ca_key_pem: bytes,
        on_mint: Callable[[], None] | None = None,
        max_entries: int = MAX_CACHED,
    ) -> None:
        self._ca_pem = (ca_cert_pem, ca_key_pem)
        self._ca: CertificateAuthority | None = None
        self.on_mint = on_mint
        self.max_entries = max_entries
        self._cache: OrderedDict[str, tuple[ssl.SSLContext, float]] = OrderedDict()
        self._pending: dict[str, asyncio.Future[ssl.SSLContext]] = {}

    def replace_ca(self, ca_cert_pem: bytes, ca_key_pem: bytes) -> None:
        """A new CA (rotated by the operator): forget every leaf minted from the old one."""
        self._ca_pem = (ca_cert_pem, ca_key_pem)
        self._ca = None
        self._cache.clear()

    def _mint(self, name: str) -> tuple[ssl.SSLContext, float]:
        from cryptography import x509

        from oshu_contract.pki import CertificateAuthority

        if self._ca is None:
            self._ca = CertificateAuthority.from_pem(*self._ca_pem)
        pair = self._ca.issue_leaf([name])
        not_after = x509.load_pem_x509_certificate(pair.cert_pem).not_valid_after_utc.timestamp()
        return server_context(pair), not_after

    async def context_for(self, name: str) -> ssl.SSLContext:
        hit = self._cache.get(name)
        if hit is not None and hit[1] - time.time() > RENEW_BEFORE:
            self._cache.move_to_end(name)
            return hit[0]
        pending = self._pending.get(name)
        if pending is not None:
            return await asyncio.shield(pending)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[ssl.SSLContext] = loop.create_future()
        self._pending[name] = fut
        try:
            ctx, not_after = await loop.run_in_executor(None, self._mint, name)
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # mark retrieved
            raise
        finally:
            self._pending.pop(name, None)
        if self.on_mint is not None:
            self.on_mint()
        self._cache[name] = (ctx, not_after)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        fut.set_result(ctx)
        return ctx
