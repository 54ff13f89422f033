"""The per-entry checks of the session file, shared by its reader, its writer and the operator's
VaultSession spec parser (which passes its own field paths, so messages name the user's field).

Error messages never contain a secret value: they name the field instead.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from .hosts import HostPattern, HostPatternError, parse_patterns
from .kinds import FieldError, Kind, check_fields, check_sealed_fields, parse_kind
from .locations import Location, LocationError
from .locations import parse_locations as _parse_locations
from .tokens import SEALED_PREFIX, is_sealed_token

#: Shorter values cannot be scrubbed from responses without mangling ordinary text.
MIN_VALUE_LENGTH = 8
MAX_VALUE_LENGTH = 8192

#: Secret names become environment variables in the agent container.
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_VALUE_RE = re.compile(r"^[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?$")  # printable ASCII, no edge spaces


class SessionError(ValueError):
    """The session document is unusable; the message says which field and why."""


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


def _check_sealed(where: str, sealed: object) -> str:
    if not isinstance(sealed, str) or not is_sealed_token(sealed):
        raise SessionError(f"{where}: sealed must look like SEALED_ followed by 22-128 URL-safe characters")
    return sealed


def check_kind_parts(
    where: str, kind: Kind, sealed: object, fields: object, sealed_fields: object
) -> tuple[str, dict[str, str], dict[str, str]]:
    """The primary token, the fields and the sealed fields of a non-static entry."""
    token = _check_sealed(where, sealed)
    try:
        checked = check_fields(kind, fields, f"{where}: ")
        return token, checked, check_sealed_fields(kind, checked, sealed_fields, f"{where}: ")
    except FieldError as e:
        raise SessionError(str(e)) from None


def check_sealed_and_value(where: str, sealed: object, value: object) -> tuple[str, str]:
    """The token and value checks every static entry gets, whoever builds it."""
    _check_sealed(where, sealed)
    assert isinstance(sealed, str)
    if not isinstance(value, str) or not value:
        raise SessionError(f"{where}: value must be a non-empty string")
    if not MIN_VALUE_LENGTH <= len(value) <= MAX_VALUE_LENGTH:
        raise SessionError(
            f"{where}: value must be {MIN_VALUE_LENGTH}-{MAX_VALUE_LENGTH} characters long"
            " (shorter values cannot be scrubbed from responses safely)"
        )
    if not _VALUE_RE.fullmatch(value):
        raise SessionError(f"{where}: value must be printable ASCII without line breaks or edge spaces")
    if SEALED_PREFIX in value:
        raise SessionError(f"{where}: value must not contain a sealed token")
    return sealed, value


def check_kind(raw: object, what: str) -> Kind:
    """A secret's `kind` (absent: static); `what` names the field in messages."""
    try:
        return parse_kind(raw, what)
    except FieldError as e:
        raise SessionError(str(e)) from None
