"""Where in a request a secret's sealed token may be substituted.

The VaultSession CRD's `locations` field lists exactly these values (a test ties the CRD's
enum to this one), the session file carries them, and the sidecar maps each member to the
substitution code that serves it (`oshu_sidecar.policy.SUBSTITUTES`, also tied by a test).
"""

from __future__ import annotations

from enum import StrEnum


class Location(StrEnum):
    """A place in a request; a str, so it compares, hashes and serializes as its value."""

    HEADERS = "headers"
    QUERY = "query"
    BODY = "body"


#: Every location; a secret names a non-empty subset.
LOCATIONS: frozenset[Location] = frozenset(Location)
#: Without `locations`, a secret is substituted in header values only.
DEFAULT_LOCATIONS: frozenset[Location] = frozenset({Location.HEADERS})


class LocationError(ValueError):
    """A `locations` value that is not a non-empty list of known locations."""


def parse_locations(raw: object) -> frozenset[Location]:
    """Where a secret may be substituted; absent (None) means headers only."""
    if raw is None:
        return DEFAULT_LOCATIONS
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise LocationError("locations must be a list of strings")
    known = {loc.value: loc for loc in Location}
    if not raw or any(x not in known for x in raw):
        raise LocationError(f"locations must be a non-empty subset of {sorted(known)}")
    return frozenset(known[x] for x in raw)
