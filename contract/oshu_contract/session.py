"""The session file: the one contract between the operator (writer) and the sidecar (reader).

The operator renders a VaultSession into this JSON document and stores it in the
session Secret; the sidecar loads (and hot-reloads) it. Both sides import this module,
so the schema lives here and only here: the operator builds entries with `new_binding`
(the same checks the parser makes) and reads a previous file's tokens with
`recorded_tokens`; nothing else parses or writes the file. Documented in
docs/session-file.md.

Error messages never contain a secret value: they name the secret instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .hosts import HostPattern, HostPatternError, parse_patterns
from .locations import DEFAULT_LOCATIONS, LOCATIONS, Location, LocationError
from .locations import parse_locations as _parse_locations
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
    "Location",
    "SecretBinding",
    "Session",
    "SessionError",
    "check_entry",
    "check_hosts",
    "check_locations",
    "format_time",
    "load_session_file",
    "loads_session",
    "new_binding",
    "new_sealed_token",
    "new_session",
    "optional_hosts",
    "parse_session",
    "parse_time",
    "recorded_tokens",
]

SCHEMA_VERSION = 1
#: Shorter values cannot be scrubbed from responses without mangling ordinary text.
MIN_VALUE_LENGTH = 8
MAX_VALUE_LENGTH = 8192

#: Secret names become environment variables in the agent container.
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_VALUE_RE = re.compile(r"^[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?$")  # printable ASCII, no edge spaces


class SessionError(ValueError):
    """The session document is unusable; the message says which field and why."""


@dataclass(frozen=True, slots=True)
class SecretBinding:
    """One real secret, its sealed stand-in and where it may be sent."""

    name: str
    sealed: str
    value: str = field(repr=False)
    hosts: tuple[HostPattern, ...]
    locations: frozenset[Location] = DEFAULT_LOCATIONS

    def allowed_for(self, host: str, port: int) -> bool:
        return any(p.matches(host, port) for p in self.hosts)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "sealed": self.sealed,
            "value": self.value,
            "hosts": [str(h) for h in self.hosts],
        }
        if self.locations != DEFAULT_LOCATIONS:
            out["locations"] = sorted(self.locations)
        return out


@dataclass(frozen=True, slots=True)
class Session:
    """A parsed, validated session document."""

    session: str
    secrets: tuple[SecretBinding, ...]
    expires_at: datetime | None = None
    egress: tuple[HostPattern, ...] | None = None
    revoked: bool = False

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


def format_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: object, what: str) -> datetime:
    if not isinstance(value, str):
        raise SessionError(f"{what} must be an RFC 3339 timestamp string")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise SessionError(f"{what} is not an RFC 3339 timestamp: {value!r}") from None
    if parsed.tzinfo is None:
        raise SessionError(f"{what} must carry a timezone (e.g. a trailing Z)")
    return parsed.astimezone(UTC)


def check_entry(raw: object, where: str) -> tuple[Mapping[str, Any], str]:
    """The object and name checks of one `secrets[]` entry; `where` names the entry in messages
    (`secrets[0]`, the operator's `spec.secrets[0]`)."""
    if not isinstance(raw, Mapping):
        raise SessionError(f"{where} must be an object")
    name = raw.get("name")
    if not isinstance(name, str) or not ENV_NAME_RE.match(name):
        raise SessionError(f"{where}.name must be a valid environment variable name")
    return raw, name


def check_hosts(raw: object, what: str) -> tuple[HostPattern, ...]:
    """A secret's host patterns: a list of at least one; `what` names the field in messages."""
    try:
        hosts = parse_patterns(raw, what)
    except HostPatternError as e:
        raise SessionError(str(e)) from None
    if not hosts:
        raise SessionError(f"{what} must list at least one host")
    return hosts


def optional_hosts(raw: object, what: str) -> tuple[HostPattern, ...] | None:
    """A list of host patterns that may be absent (None), such as `egress`."""
    if raw is None:
        return None
    try:
        return parse_patterns(raw, what)
    except HostPatternError as e:
        raise SessionError(str(e)) from None


def check_locations(raw: object, prefix: str) -> frozenset[Location]:
    """A secret's `locations` (absent: headers only); `prefix` leads the message (`secret X: `)."""
    try:
        return _parse_locations(raw)
    except LocationError as e:
        raise SessionError(f"{prefix}{e}") from None


def new_binding(
    name: str, sealed: str, value: str, hosts: Iterable[HostPattern], locations: Iterable[str] | None = None
) -> SecretBinding:
    """A session-file entry, built by the writer with the checks the reader makes (SessionError)."""
    if not ENV_NAME_RE.match(name):
        raise SessionError(f"secret name {name!r} must be a valid environment variable name")
    where = f"secret {name}"
    sealed, value = _check_sealed_and_value(where, sealed, value)
    patterns = tuple(hosts)
    if not patterns:
        raise SessionError(f"{where}: hosts must list at least one host")
    parsed = check_locations(None if locations is None else sorted(locations), f"{where}: ")
    return SecretBinding(name=name, sealed=sealed, value=value, hosts=patterns, locations=parsed)


def _check_sealed_and_value(where: str, sealed: object, value: object) -> tuple[str, str]:
    """The token and value checks every entry gets, whoever builds it."""
    if not isinstance(sealed, str) or not is_sealed_token(sealed):
        raise SessionError(f"{where}: sealed must look like SEALED_ followed by 22-128 URL-safe characters")
    if not isinstance(value, str) or not value:
        raise SessionError(f"{where}: value must be a non-empty string")
    if not MIN_VALUE_LENGTH <= len(value) <= MAX_VALUE_LENGTH:
        raise SessionError(
            f"{where}: value must be {MIN_VALUE_LENGTH}-{MAX_VALUE_LENGTH} characters long"
            " (shorter values cannot be scrubbed from responses safely)"
        )
    if not _VALUE_RE.match(value):
        raise SessionError(f"{where}: value must be printable ASCII without line breaks or edge spaces")
    if SEALED_PREFIX in value:
        raise SessionError(f"{where}: value must not contain a sealed token")
    return sealed, value


def _parse_secret(raw: object, index: int) -> SecretBinding:
    entry, name = check_entry(raw, f"secrets[{index}]")
    where = f"secret {name}"
    sealed, value = _check_sealed_and_value(where, entry.get("sealed"), entry.get("value"))
    hosts = check_hosts(entry.get("hosts"), f"{where}: hosts")
    locations = check_locations(entry.get("locations"), f"{where}: ")
    return SecretBinding(name=name, sealed=sealed, value=value, hosts=hosts, locations=locations)


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
    """A session document from checked entries (`new_binding`), with the checks across entries the
    reader makes: names unique, no sealed token inside another."""
    bindings = tuple(secrets)
    names = [b.name for b in bindings]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        raise SessionError(f"secret name {dup} appears more than once")
    tokens = [b.sealed for b in bindings]
    for i, a in enumerate(tokens):
        for j, b in enumerate(tokens):
            if i != j and a in b:
                raise SessionError(f"sealed tokens of {names[i]} and {names[j]} overlap")
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
    """Secret name -> sealed token recorded in a previous session file, for keeping tokens stable.

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
            if isinstance(name, str) and ENV_NAME_RE.match(name) and is_sealed_token(sealed):
                out[name] = sealed  # type: ignore[assignment]
    return out
