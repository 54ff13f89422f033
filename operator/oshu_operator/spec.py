"""A VaultSession's spec, parsed and validated into typed values.

The CRD schema rejects most bad input at the API server; this module is the exact check
(the entry, host and location checks are the contract's own, the ones the sidecar's reader
makes), so the session file the operator writes is always one the sidecar accepts.
Messages name fields, never values.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from oshu_contract.hosts import HostPattern
from oshu_contract.kinds import Kind
from oshu_contract.session import (
    DEFAULT_LOCATIONS,
    SessionError,
    check_entry,
    check_hosts,
    check_kind,
    check_locations,
    optional_hosts,
)

from .credspec import (
    CredentialSpecError,
    OAuth2Spec,
    check_env_collisions,
    check_locations_apply,
    parse_oauth2,
    parse_reference,
)
from .duration import DurationError, parse_duration
from .names import ENFORCEMENTS, RESERVED_ENV_NAMES

MAX_SESSION_NAME = 63


class SpecError(ValueError):
    """The VaultSession spec cannot become a session; the message says which field and why."""


@dataclass(frozen=True, slots=True)
class SecretSpec:
    """One `spec.secrets[]` entry: env name, where the real value lives, where it may go."""

    name: str
    secret_name: str
    key: str  # "" for the kinds that read several keys of one Secret (secretRef: aws, oauth2)
    hosts: tuple[HostPattern, ...]
    locations: frozenset[str] = DEFAULT_LOCATIONS
    kind: Kind = Kind.STATIC
    oauth2: OAuth2Spec | None = None  # kind oauth2 only


@dataclass(frozen=True, slots=True)
class RedirectSpec:
    """`spec.redirect`: what the redirect rules leave alone (enforcement: redirect only)."""

    exclude_cidrs: tuple[str, ...] = ()
    exclude_ports: tuple[int, ...] = ()
    allow_metadata: bool = False


@dataclass(frozen=True, slots=True)
class SessionSpec:
    secrets: tuple[SecretSpec, ...]
    ttl: timedelta | None = None
    egress: tuple[HostPattern, ...] | None = None
    #: `spec.enforcement`; None = the operator's --default-enforcement.
    enforcement: str | None = None
    redirect: RedirectSpec = RedirectSpec()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.secrets)

    @property
    def referenced_secrets(self) -> frozenset[str]:
        return frozenset(s.secret_name for s in self.secrets)

    @property
    def intercepted_hosts(self) -> tuple[HostPattern, ...]:
        """Hosts the sidecar will terminate TLS for (the CA must be able to sign for them)."""
        return tuple(sorted({h for s in self.secrets for h in s.hosts}, key=str))


@contextmanager
def _as_spec_error() -> Iterator[None]:
    """The contract's checks, with their messages, reported as the spec's errors."""
    try:
        yield
    except (SessionError, CredentialSpecError) as e:
        raise SpecError(str(e)) from None


def _parse_secret(raw: object, index: int) -> SecretSpec:
    where = f"spec.secrets[{index}]"
    with _as_spec_error():
        entry, name = check_entry(raw, where)
    if name in RESERVED_ENV_NAMES:
        raise SpecError(f"{where}.name {name} is set by the injection itself (proxy/CA variable)")
    with _as_spec_error():  # the kind decides the reference (secretKeyRef or secretRef) and the extras
        kind = check_kind(entry.get("kind"), f"{where}.kind")
        secret_name, key = parse_reference(entry, kind, where)
        oauth2 = parse_oauth2(entry, kind, where)
        check_locations_apply(entry, kind, where)
        hosts = check_hosts(entry.get("hosts"), f"{where}.hosts")
        locations = check_locations(entry.get("locations"), f"{where}.")
    return SecretSpec(
        name=name, secret_name=secret_name, key=key, hosts=hosts, locations=locations, kind=kind, oauth2=oauth2
    )


def parse_spec(spec: Mapping[str, Any] | None) -> SessionSpec:
    if not isinstance(spec, Mapping):
        raise SpecError("spec is missing")
    raw_secrets = spec.get("secrets")
    if not isinstance(raw_secrets, list) or not raw_secrets:
        raise SpecError("spec.secrets must list at least one secret")
    secrets = tuple(_parse_secret(raw, i) for i, raw in enumerate(raw_secrets))
    seen: set[str] = set()
    for s in secrets:
        if s.name in seen:
            raise SpecError(f"spec.secrets: name {s.name} appears more than once")
        seen.add(s.name)
    with _as_spec_error():
        check_env_collisions((s.name, s.kind) for s in secrets)
    ttl = None
    if spec.get("ttl") is not None:
        try:
            ttl = parse_duration(spec["ttl"])
        except DurationError as e:
            raise SpecError(f"spec.ttl: {e}") from None
        if ttl < timedelta(seconds=1):
            raise SpecError("spec.ttl must be at least 1s")
    with _as_spec_error():
        egress = optional_hosts(spec.get("egress"), "spec.egress")
    enforcement, redirect = parse_enforcement(spec)
    return SessionSpec(secrets=secrets, ttl=ttl, egress=egress, enforcement=enforcement, redirect=redirect)


def parse_enforcement(spec: Mapping[str, Any]) -> tuple[str | None, RedirectSpec]:
    """`spec.enforcement` (None when absent: the operator's default applies) and `spec.redirect`.

    Shared by the reconciler (an Invalid session) and admission (what to inject), so both read
    the same thing. The CIDRs are normalised (`10.1.2.3/8` is refused: host bits set).
    """
    enforcement = spec.get("enforcement")
    if enforcement is not None and enforcement not in ENFORCEMENTS:
        raise SpecError(f"spec.enforcement must be one of {', '.join(ENFORCEMENTS)}")
    raw = spec.get("redirect")
    if raw is None:
        return enforcement, RedirectSpec()
    if not isinstance(raw, Mapping):
        raise SpecError("spec.redirect must be an object")
    cidrs = raw.get("excludeCIDRs") or []
    ports = raw.get("excludePorts") or []
    allow = raw.get("allowMetadata", False)
    if not isinstance(cidrs, list) or not isinstance(ports, list) or not isinstance(allow, bool):
        raise SpecError("spec.redirect: excludeCIDRs and excludePorts are lists, allowMetadata a boolean")
    nets: list[str] = []
    for i, cidr in enumerate(cidrs):
        try:
            net = ipaddress.ip_network(str(cidr), strict=True)
        except ValueError:
            net = None
        if net is None or net.prefixlen == 0:  # /0 would switch enforcement off (the rules command refuses it)
            raise SpecError(f"spec.redirect.excludeCIDRs[{i}] must be a CIDR such as 10.0.0.0/8, not /0")
        nets.append(str(net))
    for i, port in enumerate(ports):
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise SpecError(f"spec.redirect.excludePorts[{i}] must be a port from 1 to 65535")
    return enforcement, RedirectSpec(tuple(dict.fromkeys(nets)), tuple(dict.fromkeys(ports)), allow)


def check_session_name(name: str) -> None:
    if len(name) > MAX_SESSION_NAME:
        raise SpecError(f"name must be at most {MAX_SESSION_NAME} characters (it is used as a label value)")
