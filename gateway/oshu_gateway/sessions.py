"""The session API's request body -> a contract `Session`, as a pure function (no I/O, no clock).

Every refusal is an `ApiError` naming the field and the rule, never a value. Hosts for a
secret come from, in order: its own `hosts`, the request's `secret_hosts` (plain-string
secrets only, as in the seed), the catalog of well-known names (oshu_contract.catalog).
A secret with none of these is refused: a secret is never sent to a host nobody named.
"""

from __future__ import annotations

import secrets as _random
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from oshu_contract.catalog import hosts_for
from oshu_contract.hosts import HostPattern, HostPatternError, parse_patterns
from oshu_contract.session import Session, SessionError, new_binding, new_sealed_token, new_session

MAX_SECRETS = 64
ALLOWED_FIELDS = frozenset({"secrets", "secret_hosts", "allowed_egress", "ttl_seconds", "idle_ttl_seconds"})


class ApiError(Exception):
    """An API refusal: HTTP status, stable code, message (never a secret value)."""

    def __init__(self, status: int, code: str, message: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def invalid(message: str) -> ApiError:
    return ApiError(400, "invalid_request", message)


@dataclass(frozen=True, slots=True)
class NewSession:
    """A validated creation request, with its fresh credentials."""

    session: Session
    token: str
    ttl: float
    idle_ttl: float


def new_session_id() -> str:
    return "sess_" + _random.token_hex(16)


def new_client_token() -> str:
    return "tok_" + _random.token_urlsafe(32)


def _patterns(raw: object, what: str) -> tuple[HostPattern, ...]:
    if not isinstance(raw, list) or not all(isinstance(h, str) for h in raw):
        raise invalid(f"{what} must be a list of host strings")
    try:
        return parse_patterns(raw, what)
    except HostPatternError as e:
        raise invalid(str(e)) from None


def _seconds(body: dict[str, Any], name: str, default: float, cap: float) -> float:
    raw = body.get(name)
    if raw is None:
        return min(default, cap)
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not raw >= 1:
        raise invalid(f"{name} must be a positive number of seconds")
    if raw > cap:
        raise invalid(f"{name} must not exceed {cap:g} (the gateway's --max-ttl)")
    return float(raw)


def build_session(
    body: object, session_id: str, token: str, now: datetime, max_ttl: float, default_idle_ttl: float
) -> NewSession:
    """Validate a POST /v1/sessions body and build the session document (fresh sealed tokens)."""
    if not isinstance(body, dict):
        raise invalid("the body must be a JSON object")
    unknown = sorted(set(body) - ALLOWED_FIELDS)
    if unknown:
        raise invalid(f"unknown field {unknown[0]!r}; allowed: {', '.join(sorted(ALLOWED_FIELDS))}")
    raw_secrets = body.get("secrets")
    if not isinstance(raw_secrets, dict) or not raw_secrets:
        raise invalid("secrets must be a non-empty object of NAME -> value or {value, hosts, locations}")
    if len(raw_secrets) > MAX_SECRETS:
        raise invalid(f"secrets: at most {MAX_SECRETS} per session")
    shared = _patterns(body["secret_hosts"], "secret_hosts") if body.get("secret_hosts") is not None else None
    egress = _patterns(body["allowed_egress"], "allowed_egress") if body.get("allowed_egress") is not None else None
    ttl = _seconds(body, "ttl_seconds", max_ttl, max_ttl)
    idle = _seconds(body, "idle_ttl_seconds", default_idle_ttl, max_ttl)
    bindings = []
    for name, spec in raw_secrets.items():
        where = f"secrets.{name}"
        hosts: tuple[HostPattern, ...] | None = None
        locations = None
        if isinstance(spec, str):
            value: object = spec
            hosts = shared
        elif isinstance(spec, dict):
            extra = sorted(set(spec) - {"value", "hosts", "locations"})
            if extra:
                raise invalid(f"{where}: unknown field {extra[0]!r}; allowed: value, hosts, locations")
            value = spec.get("value")
            if spec.get("hosts") is not None:
                hosts = _patterns(spec["hosts"], f"{where}.hosts")
            if spec.get("locations") is not None:
                locations = spec["locations"]
                if not isinstance(locations, list) or not all(isinstance(x, str) for x in locations):
                    raise invalid(f"{where}.locations must be a list of strings (headers, query, body)")
        else:
            raise invalid(f"{where} must be a string or an object with value, hosts, locations")
        if not isinstance(value, str):
            raise invalid(f"{where}: value must be a string")
        if not hosts:
            known = hosts_for(name)
            if known is None:
                raise invalid(
                    f"{where}: no hosts given and {name} is not in the catalog of well-known names; "
                    "give hosts or secret_hosts"
                )
            hosts = parse_patterns(list(known), f"catalog entry {name}")
        try:
            bindings.append(new_binding(name, new_sealed_token(), value, hosts, locations))
        except SessionError as e:
            raise invalid(str(e)) from None
    try:
        session = new_session(
            session_id, bindings, expires_at=datetime.fromtimestamp(now.timestamp() + ttl, UTC), egress=egress
        )
    except SessionError as e:
        raise invalid(str(e)) from None
    return NewSession(session, token, ttl, idle)
