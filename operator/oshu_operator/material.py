"""What goes into a session Secret: sealed tokens, the session CA, the CA bundle, the session file.

Pure functions, no API calls: the reconciler gathers inputs (spec, resolved values, the
previous Secret and status) and these decide what to keep and what to mint. Keeping is the
rule: a sealed token lives as long as its secret name stays in the session, and the CA lives
until it expires or no longer covers the session's hosts.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import certifi
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from oshu_contract.hosts import HostPattern
from oshu_contract.pki import CertificateAuthority, KeyPair, new_ca
from oshu_contract.tokens import is_sealed_token, new_sealed_token

from .names import KEY_CA_BUNDLE, KEY_CA_CERT, KEY_CA_KEY, KEY_SESSION_FILE, KEY_UPSTREAM_CA

#: A CA is renewed once less than this share of its lifetime is left.
CA_RENEW_FRACTION = 1 / 3
#: Sessions with a ttl get a CA that outlives the session by this much (clock skew).
CA_TTL_SLACK = timedelta(minutes=10)


# --- sealed tokens ------------------------------------------------------------------------


def stable_tokens(names: Iterable[str], *sources: Mapping[str, object] | None) -> dict[str, str]:
    """One sealed token per name: the first well-formed one any source remembers, else a new one.

    Sources are consulted in order (status first, then the previous session file's, as
    `oshu_contract.session.recorded_tokens` reads them), so a lost Secret or a lost status
    alone never changes a token.
    """
    out: dict[str, str] = {}
    used: set[str] = set()
    for name in names:
        token = None
        for source in sources:
            candidate = (source or {}).get(name)
            if isinstance(candidate, str) and is_sealed_token(candidate) and candidate not in used:
                token = candidate
                break
        if token is None or any(token in u or u in token for u in used):
            token = new_sealed_token()
        out[name] = token
        used.add(token)
    return out


# --- session CA ---------------------------------------------------------------------------


def constraint_names(hosts: Iterable[HostPattern]) -> list[str] | None:
    """DNS subtrees for the CA's name constraints, or None when constraints cannot be used.

    Every tested client (curl, requests, httpx, aiohttp, Node) honours DNS name constraints
    (tests/operator/test_name_constraints.py). A leaf for an IP literal carries the IP as its
    common name, which OpenSSL checks against the DNS subtrees and rejects, so a session with
    an IP-literal host gets an unconstrained CA.
    """
    names: set[str] = set()
    for h in hosts:
        try:
            ipaddress.ip_address(h.host)
        except ValueError:
            names.add(h.host)
            continue
        return None
    return sorted(names)


def ca_validity(expires_at: datetime | None, now: datetime, default: timedelta) -> timedelta:
    if expires_at is None:
        return default
    return max(expires_at - now, timedelta(0)) + CA_TTL_SLACK


@dataclass(frozen=True, slots=True)
class CAState:
    pair: KeyPair
    not_after: datetime
    minted: bool


def _covers(cert: x509.Certificate, wanted: list[str] | None) -> bool:
    try:
        nc = cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return wanted is None
    if wanted is None:
        return False
    permitted = {n.value for n in nc.permitted_subtrees or [] if isinstance(n, x509.DNSName)}
    return set(wanted) <= permitted


def choose_ca(
    existing: KeyPair | None,
    *,
    common_name: str,
    hosts: Iterable[HostPattern],
    expires_at: datetime | None,
    now: datetime,
    default_validity: timedelta,
) -> CAState:
    """Keep the previous CA while it is valid, covers the hosts and has life left; else mint one."""
    hosts = list(hosts)
    wanted = constraint_names(hosts)
    if existing is not None and existing.cert_pem and existing.key_pem:
        try:
            ca = CertificateAuthority.from_pem(existing.cert_pem, existing.key_pem)
            cert = ca.cert
            lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
            left = cert.not_valid_after_utc - now
            # A ttl session's CA only has to outlive the session; others renew with a third left.
            enough = left >= expires_at - now if expires_at else left > lifetime * CA_RENEW_FRACTION
            covered = not hosts or _covers(cert, wanted)
            if covered and enough:
                return CAState(existing, cert.not_valid_after_utc, minted=False)
        except ValueError:
            pass  # unreadable or mismatched: replace it
    validity = ca_validity(expires_at, now, default_validity)
    pair = new_ca(common_name, validity=validity, permitted_dns=wanted or None, now=now)
    return CAState(pair, now + validity, minted=True)


@functools.cache
def mozilla_roots() -> bytes:
    return open(certifi.where(), "rb").read()


@functools.cache
def _bundle_head() -> bytes:
    """Mozilla roots and a marker line, padded with newlines to a multiple of 3 bytes so that
    its base64 can be computed once and prefixed to the base64 of any session CA."""
    head = mozilla_roots()
    if not head.endswith(b"\n"):
        head += b"\n"
    head += b"# oshu-vault session CA\n"
    return head + b"\n" * (-len(head) % 3)


@functools.cache
def _bundle_head_b64() -> str:
    return base64.b64encode(_bundle_head()).decode("ascii")


def ca_bundle(ca_cert_pem: bytes) -> bytes:
    """Mozilla roots plus the session CA: for clients whose CA variable replaces the system roots."""
    return _bundle_head() + ca_cert_pem


def _ca_bundle_b64(ca_cert_pem: bytes) -> str:
    return _bundle_head_b64() + base64.b64encode(ca_cert_pem).decode("ascii")


# --- the Secret's data --------------------------------------------------------------------


def secret_data(
    session_file: bytes, ca: KeyPair, upstream_ca: bytes = b"", files: Mapping[str, bytes] | None = None
) -> dict[str, str]:
    """The `data` map of the session Secret (base64, as the API wants it); `upstream_ca` (the
    operator's --sidecar-upstream-ca-file) rides along for the sidecar only, when given; `files`
    are the agents' files (gcp service-account JSONs: throwaway key, sealed key id; projected
    into the app containers' CA volume)."""
    raw = {KEY_SESSION_FILE: session_file, KEY_CA_CERT: ca.cert_pem, KEY_CA_KEY: ca.key_pem}
    if upstream_ca:
        raw[KEY_UPSTREAM_CA] = upstream_ca
    for key, content in (files or {}).items():
        if key in raw or key == KEY_CA_BUNDLE:
            raise ValueError(f"agent file {key} would replace a session Secret key")
        raw[key] = content
    data = {k: base64.b64encode(v).decode("ascii") for k, v in raw.items()}
    data[KEY_CA_BUNDLE] = _ca_bundle_b64(ca.cert_pem)
    return data


def upstream_ca(pem: bytes, source: str) -> bytes:
    """Check an upstream CA file: one or more PEM CA certificates, and nothing else.

    Refused at startup rather than found out in each sidecar (which would not start with it).
    Returns the certificates re-encoded, so comments and stray text never reach a Secret.
    """
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as e:
        raise ValueError(f"{source}: no PEM certificate ({e})") from None
    for cert in certs:
        try:
            ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            ca = False
        if not ca:
            raise ValueError(
                f"{source}: {cert.subject.rfc4514_string()} is not a CA certificate (basicConstraints CA:TRUE)"
            )
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def decode_data(data: Mapping[str, str] | None, key: str) -> bytes | None:
    value = (data or {}).get(key)
    if not value:
        return None
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        return None


def stored_ca(data: Mapping[str, str] | None) -> KeyPair | None:
    """The session CA a previous session Secret's data holds, if it holds both halves."""
    cert, key = decode_data(data, KEY_CA_CERT), decode_data(data, KEY_CA_KEY)
    return KeyPair(cert, key) if cert and key else None


def utcnow() -> datetime:
    return datetime.now(UTC)
