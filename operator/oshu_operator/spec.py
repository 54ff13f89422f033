"""A VaultSession's spec, parsed and validated into typed values.

The CRD schema rejects most bad input at the API server; this module is the exact check
(the entry, host and location checks are the contract's own, the ones the sidecar's reader
makes), so the session file the operator writes is always one the sidecar accepts.
Messages name fields, never values.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from oshu_contract.hosts import HostPattern
from oshu_contract.session import (
    DEFAULT_LOCATIONS,
    SessionError,
    check_entry,
    check_hosts,
    check_locations,
    optional_hosts,
)

from .duration import DurationError, parse_duration
from .names import RESERVED_ENV_NAMES

_DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_SECRET_KEY_RE = re.compile(r"^[-._a-zA-Z0-9]+$")
MAX_SESSION_NAME = 63


class SpecError(ValueError):
    """The VaultSession spec cannot become a session; the message says which field and why."""


@dataclass(frozen=True, slots=True)
class SecretSpec:
    """One `spec.secrets[]` entry: env name, where the real value lives, where it may go."""

    name: str
    secret_name: str
    key: str
    hosts: tuple[HostPattern, ...]
    locations: frozenset[str] = DEFAULT_LOCATIONS


@dataclass(frozen=True, slots=True)
class SessionSpec:
    secrets: tuple[SecretSpec, ...]
    ttl: timedelta | None = None
    egress: tuple[HostPattern, ...] | None = None

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
    except SessionError as e:
        raise SpecError(str(e)) from None


def _parse_secret(raw: object, index: int) -> SecretSpec:
    where = f"spec.secrets[{index}]"
    with _as_spec_error():
        entry, name = check_entry(raw, where)
    if name in RESERVED_ENV_NAMES:
        raise SpecError(f"{where}.name {name} is set by the injection itself (proxy/CA variable)")
    ref = entry.get("secretKeyRef")
    if not isinstance(ref, Mapping):
        raise SpecError(f"{where}.secretKeyRef must name a Secret and a key")
    secret_name, key = ref.get("name"), ref.get("key")
    if not isinstance(secret_name, str) or len(secret_name) > 253 or not _DNS_SUBDOMAIN_RE.match(secret_name):
        raise SpecError(f"{where}.secretKeyRef.name must be a Secret name (DNS subdomain)")
    if not isinstance(key, str) or len(key) > 253 or not _SECRET_KEY_RE.match(key):
        raise SpecError(f"{where}.secretKeyRef.key must be a Secret key ([-._a-zA-Z0-9]+)")
    with _as_spec_error():
        hosts = check_hosts(entry.get("hosts"), f"{where}.hosts")
        locations = check_locations(entry.get("locations"), f"{where}.")
    return SecretSpec(name=name, secret_name=secret_name, key=key, hosts=hosts, locations=locations)


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
    return SessionSpec(secrets=secrets, ttl=ttl, egress=egress)


def check_session_name(name: str) -> None:
    if len(name) > MAX_SESSION_NAME:
        raise SpecError(f"name must be at most {MAX_SESSION_NAME} characters (it is used as a label value)")
