"""The session file: the one contract between the operator (writer) and the sidecar (reader).

The operator renders a VaultSession into this JSON document and stores it in the
session Secret; the sidecar loads (and hot-reloads) it. Both sides import this module,
so the schema lives here and only here (the per-entry checks in checks.py, the kinds' fields
in kinds.py): the operator builds entries with `new_binding` / `new_kind_binding`
(the same checks the parser makes) and reads a previous file's tokens with
`recorded_tokens`; nothing else parses or writes the file. Documented in
docs/session-file.md.

Error messages never contain a secret value: they name the secret instead.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .checks import (
    ENV_NAME_RE,
    MAX_VALUE_LENGTH,
    MIN_VALUE_LENGTH,
    SessionError,
    check_entry,
    check_hosts,
    check_kind,
    check_kind_parts,
    check_locations,
    check_sealed_and_value,
    format_time,
    optional_hosts,
    parse_time,
)
from .hosts import HostPattern
from .kinds import SECRET_FIELDS, SINGLETON_KINDS, Kind, url_host_pattern
from .locations import DEFAULT_LOCATIONS, LOCATIONS, Location
from .tokens import SEALED_PREFIX, SEALED_RANDOM_BYTES, is_sealed_token, new_sealed_token

__all__ = [
    "DEFAULT_LOCATIONS",
    "ENV_NAME_RE",
    "LOCATIONS",
    "MAX_VALUE_LENGTH",
    "MIN_VALUE_LENGTH",
    "SCHEMA_VERSION",
    "SEALED_PREFIX",
    "SEALED_RANDOM_BYTES",
    "Kind",
    "Location",
    "SecretBinding",
    "Session",
    "SessionError",
    "check_entry",
    "check_hosts",
    "check_kind",
    "check_locations",
    "format_time",
    "load_session_file",
    "loads_session",
    "new_binding",
    "new_kind_binding",
    "new_sealed_token",
    "new_session",
    "optional_hosts",
    "parse_session",
    "parse_time",
    "recorded_tokens",
]

SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class SecretBinding:
    """One real secret (static: `value`; other kinds: `fields`), its sealed stand-ins and where it
    may be sent. `sealed` is the primary stand-in (the one the VaultSession status shows)."""

    name: str
    sealed: str
    value: str = field(repr=False)
    hosts: tuple[HostPattern, ...]
    locations: frozenset[Location] = DEFAULT_LOCATIONS
    kind: Kind = Kind.STATIC
    #: The kind's fields (kinds.FIELDS), real material included: never shown, logged or hashed.
    fields: Mapping[str, str] = field(default_factory=dict, repr=False, hash=False)
    #: Field name -> the sealed stand-in the agent holds for it (kinds.SEALED_FIELDS).
    sealed_fields: Mapping[str, str] = field(default_factory=dict, hash=False)

    def allowed_for(self, host: str, port: int) -> bool:
        return any(p.matches(host, port) for p in self.hosts)

    def secret_values(self) -> tuple[str, ...]:
        """Every real string of this binding, for scrubbing (static: the value)."""
        if self.kind is Kind.STATIC:
            return (self.value,)
        return tuple(self.fields[k] for k in SECRET_FIELDS[self.kind] if self.fields.get(k))

    def sealed_tokens(self) -> tuple[str, ...]:
        """Every sealed stand-in of this binding: the primary one first."""
        return (self.sealed, *self.sealed_fields.values())

    @property
    def token_endpoint(self) -> HostPattern | None:
        """The host:port of the token endpoint (oauth2 tokenUrl, gcp tokenUri), else None.

        The sidecar intercepts a gcp binding's token endpoint as well as its `hosts` (the agent's
        google-auth posts its signed JWT there); an oauth2 one it only calls itself."""
        url = self.fields.get("tokenUrl") or self.fields.get("tokenUri")
        return url_host_pattern(url) if url else None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.kind is not Kind.STATIC:
            out["kind"] = self.kind.value
        out["sealed"] = self.sealed
        if self.kind is Kind.STATIC:
            out["value"] = self.value
        out["hosts"] = [str(h) for h in self.hosts]
        if self.locations != DEFAULT_LOCATIONS:
            out["locations"] = sorted(self.locations)
        if self.kind is not Kind.STATIC:
            out["fields"] = dict(self.fields)
        if self.sealed_fields:
            out["sealedFields"] = dict(self.sealed_fields)
        return out


@dataclass(frozen=True, slots=True)
class Session:
    """A parsed, validated session document."""

    session: str
    secrets: tuple[SecretBinding, ...]
    expires_at: datetime | None = None
    egress: tuple[HostPattern, ...] | None = None
    revoked: bool = False

    @property
    def static_secrets(self) -> tuple[SecretBinding, ...]:
        """The bindings of kind static: the ones a plain string swap serves."""
        return tuple(s for s in self.secrets if s.kind is Kind.STATIC)

    def of_kind(self, kind: Kind) -> tuple[SecretBinding, ...]:
        return tuple(s for s in self.secrets if s.kind is kind)

    def is_expired(self, now: datetime | None = None) -> bool:
        if self.expires_at is None:
            return False
        return (now or datetime.now(UTC)) >= self.expires_at

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schemaVersion": SCHEMA_VERSION, "session": self.session}
        if self.expires_at is not None:
            out["expiresAt"] = format_time(self.expires_at)
        if self.revoked:
            out["revoked"] = True
        if self.egress is not None:
            out["egress"] = [str(h) for h in self.egress]
        out["secrets"] = [s.to_dict() for s in self.secrets]
        return out

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False).encode() + b"\n"


def new_binding(
    name: str, sealed: str, value: str, hosts: Iterable[HostPattern], locations: Iterable[str] | None = None
) -> SecretBinding:
    """A session-file entry, built by the writer with the checks the reader makes (SessionError)."""
    if not ENV_NAME_RE.match(name):
        raise SessionError(f"secret name {name!r} must be a valid environment variable name")
    where = f"secret {name}"
    sealed, value = check_sealed_and_value(where, sealed, value)
    patterns = tuple(hosts)
    if not patterns:
        raise SessionError(f"{where}: hosts must list at least one host")
    parsed = check_locations(None if locations is None else sorted(locations), f"{where}: ")
    return SecretBinding(name=name, sealed=sealed, value=value, hosts=patterns, locations=parsed)


def new_kind_binding(
    name: str,
    kind: Kind,
    sealed: str,
    hosts: Iterable[HostPattern],
    fields: Mapping[str, str],
    sealed_fields: Mapping[str, str] | None = None,
) -> SecretBinding:
    """A session-file entry of a non-static kind (aws, oauth2, gcpServiceAccount), built by the
    writer with the checks the reader makes (SessionError, naming fields, never values)."""
    if not ENV_NAME_RE.match(name):
        raise SessionError(f"secret name {name!r} must be a valid environment variable name")
    where = f"secret {name}"
    if kind is Kind.STATIC:
        raise SessionError(f"{where}: a static secret is built with new_binding")
    patterns = tuple(hosts)
    if not patterns:
        raise SessionError(f"{where}: hosts must list at least one host")
    sealed, checked, sealed_checked = check_kind_parts(where, kind, sealed, fields, sealed_fields)
    return SecretBinding(
        name=name, sealed=sealed, value="", hosts=patterns, kind=kind, fields=checked, sealed_fields=sealed_checked
    )


def _parse_secret(raw: object, index: int) -> SecretBinding:
    entry, name = check_entry(raw, f"secrets[{index}]")
    where = f"secret {name}"
    kind = check_kind(entry.get("kind"), f"{where}: kind")
    if kind is Kind.STATIC:
        sealed, value = check_sealed_and_value(where, entry.get("sealed"), entry.get("value"))
        if entry.get("fields") or entry.get("sealedFields"):
            raise SessionError(f"{where}: fields and sealedFields belong to the other kinds, not static")
        fields: dict[str, str] = {}
        sealed_fields: dict[str, str] = {}
    elif entry.get("value") is not None:
        raise SessionError(f"{where}: value belongs to static secrets; kind {kind.value} keeps its material in fields")
    else:
        value = ""
        sealed, fields, sealed_fields = check_kind_parts(
            where, kind, entry.get("sealed"), entry.get("fields"), entry.get("sealedFields")
        )
    hosts = check_hosts(entry.get("hosts"), f"{where}: hosts")
    locations = check_locations(entry.get("locations"), f"{where}: ")
    return SecretBinding(
        name=name,
        sealed=sealed,
        value=value,
        hosts=hosts,
        locations=locations,
        kind=kind,
        fields=fields,
        sealed_fields=sealed_fields,
    )


def parse_session(doc: object) -> Session:
    """Validate a decoded JSON document and return the Session it describes."""
    if not isinstance(doc, Mapping):
        raise SessionError("session document must be a JSON object")
    version = doc.get("schemaVersion", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise SessionError(f"unsupported schemaVersion {version!r} (this build reads {SCHEMA_VERSION})")
    name = doc.get("session")
    if not isinstance(name, str) or not name:
        raise SessionError("session must be a non-empty string naming the session")
    expires_at = None if doc.get("expiresAt") is None else parse_time(doc["expiresAt"], "expiresAt")
    revoked = doc.get("revoked", False)
    if not isinstance(revoked, bool):
        raise SessionError("revoked must be true or false")
    egress = optional_hosts(doc.get("egress"), "egress")
    raw_secrets = doc.get("secrets", [])
    if not isinstance(raw_secrets, list):
        raise SessionError("secrets must be a list")
    bindings = tuple(_parse_secret(raw, i) for i, raw in enumerate(raw_secrets))
    return new_session(name, bindings, expires_at=expires_at, egress=egress, revoked=revoked)


def new_session(
    name: str,
    secrets: Iterable[SecretBinding],
    *,
    expires_at: datetime | None = None,
    egress: Iterable[HostPattern] | None = None,
    revoked: bool = False,
) -> Session:
    """A session document from checked entries (`new_binding`, `new_kind_binding`), with the checks
    across entries the reader makes: names unique, no sealed token inside another, at most one
    entry of each of `kinds.SINGLETON_KINDS`."""
    bindings = tuple(secrets)
    names = [b.name for b in bindings]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        raise SessionError(f"secret name {dup} appears more than once")
    for kind in sorted(SINGLETON_KINDS):
        of_kind = [b.name for b in bindings if b.kind is kind]
        if len(of_kind) > 1:
            raise SessionError(f"secrets {', '.join(of_kind)}: a session holds at most one of kind {kind.value}")
    tokens = [(b.name, t) for b in bindings for t in b.sealed_tokens()]
    for i, (name_a, a) in enumerate(tokens):
        for j, (name_b, b) in enumerate(tokens):
            if i != j and a in b:
                raise SessionError(f"sealed tokens of {name_a} and {name_b} overlap")
    return Session(
        session=name,
        secrets=bindings,
        expires_at=expires_at,
        egress=None if egress is None else tuple(egress),
        revoked=revoked,
    )


def loads_session(data: bytes | str) -> Session:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise SessionError(
            f"session file is not valid JSON: {e.__class__.__name__} at {getattr(e, 'pos', '?')}"
        ) from None
    return parse_session(doc)


def load_session_file(path: str | Path) -> Session:
    """Read and validate a session file; errors name the path, never a value."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise SessionError(f"cannot read session file {path}: {e.strerror or e}") from None
    try:
        return loads_session(data)
    except SessionError as e:
        raise SessionError(f"{path}: {e}") from None


def recorded_tokens(data: bytes | None) -> dict[str, str]:
    """Secret name -> sealed token recorded in a previous session file, for keeping tokens stable;
    a sealed field's token under `NAME.fieldName` (e.g. `AWS.secretAccessKey`).

    Tolerant where `loads_session` is strict: a file the reader would refuse (revoked,
    partly valid, an older build's) still says which tokens agents were given. Only
    well-formed tokens of well-formed names are returned.
    """
    if not data:
        return {}
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return {}
    entries = doc.get("secrets") if isinstance(doc, dict) else None
    out: dict[str, str] = {}
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict):
            name, sealed = entry.get("name"), entry.get("sealed")
            if not isinstance(name, str) or not ENV_NAME_RE.match(name):
                continue
            if is_sealed_token(sealed):
                out[name] = sealed  # type: ignore[assignment]
            extra = entry.get("sealedFields")
            for key, token in extra.items() if isinstance(extra, dict) else ():
                if isinstance(key, str) and key.isidentifier() and is_sealed_token(token):
                    out[f"{name}.{key}"] = token
    return out
