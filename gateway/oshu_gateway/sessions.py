"""The session API's request body -> a contract `Session`, as a pure function (no I/O, no clock).

Every refusal is an `ApiError` naming the field and the rule, never a value. Hosts for a
secret come from, in order: its own `hosts`, the request's `secret_hosts` (plain-string
secrets only, as in the seed), the catalog of well-known names (oshu_contract.catalog).
A secret with none of these is refused: a secret is never sent to a host nobody named.
Secrets of the other kinds (aws, oauth2, gcpServiceAccount; kinds.py) name their own hosts.
"""

from __future__ import annotations

import json
import secrets as _random
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from oshu_contract.catalog import hosts_for
from oshu_contract.hosts import HostPattern, HostPatternError, parse_patterns
from oshu_contract.kinds import FieldError, Kind, parse_kind
from oshu_contract.session import Session, SessionError, new_binding, new_sealed_token, new_session

from .errors import ApiError, invalid
from .kinds import Issued, issue, static_issued

__all__ = ["ApiError", "NewSession", "build_session", "invalid", "new_client_token", "new_session_id"]

MAX_SECRETS = 64
ALLOWED_FIELDS = frozenset({"secrets", "secret_hosts", "allowed_egress", "ttl_seconds", "idle_ttl_seconds"})


#: Fields of one secret object, by kind (a plain string is a static value).
STATIC_SPEC_FIELDS = ("kind", "value", "hosts", "locations")
KIND_SPEC_FIELDS = ("kind", "fields", "hosts")
#: Top-level key of the stored document (beside the contract's) holding the Google agents' key files.
AGENT_FILES_KEY = "gatewayAgentFiles"


@dataclass(frozen=True, slots=True)
class NewSession:
    """A validated creation request, with its fresh credentials."""

    session: Session
    token: str
    ttl: float
    idle_ttl: float
    issued: tuple[Issued, ...] = ()

    def answer_secrets(self) -> dict[str, dict[str, Any]]:
        """Per secret, what the sandbox gets: kind, sealed, env (and a Google agent's key file)."""
        return {i.binding.name: i.answer() for i in self.issued}

    def document(self) -> bytes:
        """What the store keeps (encrypted): the session document, plus the agents' key files (their
        throwaway private keys are agent material, kept like the sealed tokens)."""
        doc = self.session.to_dict()
        agents = {i.binding.name: i.agent_json.decode() for i in self.issued if i.agent_json is not None}
        if agents:
            doc[AGENT_FILES_KEY] = agents
        return json.dumps(doc, indent=2).encode() + b"\n"


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
    issued = tuple(_secret(str(name), spec, shared) for name, spec in raw_secrets.items())
    try:
        session = new_session(
            session_id,
            [i.binding for i in issued],
            expires_at=datetime.fromtimestamp(now.timestamp() + ttl, UTC),
            egress=egress,
        )
    except SessionError as e:
        raise invalid(str(e)) from None
    _check_env(issued)
    return NewSession(session, token, ttl, idle, issued)


def _secret(name: str, spec: object, shared: tuple[HostPattern, ...] | None) -> Issued:
    """One entry of `secrets`: a plain string (static), or an object of any kind."""
    where = f"secrets.{name}"
    if isinstance(spec, str):
        return _static(name, spec, shared, None)
    if not isinstance(spec, dict):
        raise invalid(f"{where} must be a string or an object with kind, value/fields, hosts")
    try:
        kind = parse_kind(spec.get("kind"), f"{where}.kind")
    except FieldError as e:
        raise invalid(str(e)) from None
    allowed = STATIC_SPEC_FIELDS if kind is Kind.STATIC else KIND_SPEC_FIELDS
    extra = sorted(set(spec) - set(allowed))
    if extra:
        raise invalid(f"{where}: unknown field {extra[0]!r} for kind {kind.value}; allowed: {', '.join(allowed)}")
    hosts = _patterns(spec["hosts"], f"{where}.hosts") if spec.get("hosts") is not None else None
    if kind is Kind.STATIC:
        locations = spec.get("locations")
        if locations is not None and (
            not isinstance(locations, list) or not all(isinstance(x, str) for x in locations)
        ):
            raise invalid(f"{where}.locations must be a list of strings (headers, query, body)")
        return _static(name, spec.get("value"), hosts, locations)
    if not hosts:
        raise invalid(f"{where}.hosts: kind {kind.value} needs the hosts its requests go to")
    return issue(name, kind, spec.get("fields"), hosts)


def _static(name: str, value: object, hosts: tuple[HostPattern, ...] | None, locations: list[str] | None) -> Issued:
    where = f"secrets.{name}"
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
        return static_issued(new_binding(name, new_sealed_token(), value, hosts, locations))
    except SessionError as e:
        raise invalid(str(e)) from None


def _check_env(issued: tuple[Issued, ...]) -> None:
    """Refuse two secrets setting one sandbox variable (a static AWS_ACCESS_KEY_ID beside an aws secret, a
    static GOOGLE_APPLICATION_CREDENTIALS beside a gcpServiceAccount one), as the operator refuses them."""
    owner: dict[str, str] = {}
    for i in issued:
        for var in (*i.env, *i.agent_json_env):
            if var in owner:
                raise invalid(f"secrets.{owner[var]} and secrets.{i.binding.name} would both set {var} in the sandbox")
            owner[var] = i.binding.name
