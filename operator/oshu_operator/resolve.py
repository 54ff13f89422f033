"""Referenced Secrets -> session-file entries, one reader per credential kind (pure, no API calls).

static: one key is the value. aws: the keys AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
optionally AWS_SESSION_TOKEN of one Secret. oauth2: client_id and optionally client_secret and
refresh_token of one Secret, plus the entry's `oauth2` block. gcpServiceAccount: one key holding
the real service-account JSON; the agent gets a copy with a throwaway key (kept across
reconciles in the session Secret, like the tokens) and the sealed key id instead of the real ones.

Every entry goes through the contract's constructors, so what is written is what the sidecar
reads. Problems name Secrets, keys and JSON fields, never values.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from oshu_contract.kinds import FieldError, Kind, agent_service_account, service_account_fields
from oshu_contract.locations import Location
from oshu_contract.pki import new_rsa_key_pem, rsa_public_pem
from oshu_contract.session import SecretBinding, SessionError, new_binding, new_kind_binding

from . import names as n
from .credspec import AWS_KEYS, AWS_REQUIRED, OAUTH2_KEYS, OAUTH2_REQUIRED, field_token_names
from .spec import SecretSpec, SessionSpec

Obj = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Resolved:
    """The referenced values that made session-file entries, why the others did not, and the
    files for the agent (session Secret key -> content: gcp service-account JSONs)."""

    bindings: list[SecretBinding]
    problems: list[tuple[str, str]]  # (reason, message)
    files: dict[str, bytes] = field(default_factory=dict)


class _Problem(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def token_names(spec: SessionSpec, secrets: Mapping[str, Obj | None], known: Mapping[str, object] | None) -> list[str]:
    """Every status token the session needs: one per entry, plus `NAME.field` for aws's sealed
    fields (the session token's when the referenced Secret has one, or, when the Secret was not
    read or is missing, when the status `known` already has it)."""
    out = list(spec.names)
    for s in spec.secrets:
        if s.kind is Kind.AWS:
            secret = secrets.get(s.secret_name)
            data = (secret or {}).get("data") or {}
            present = [f for f, key in AWS_KEYS.items() if f in AWS_REQUIRED or key in data]
            if secret is None and f"{s.name}.sessionToken" in (known or {}):
                present.append("sessionToken")
            out += field_token_names(s.name, s.kind, present)
    return out


def _text(secret: Obj, s: SecretSpec, key: str, required: bool = True) -> str | None:
    """One key of a referenced Secret as text (a file's final newline dropped), or None if absent
    and optional."""
    raw = (secret.get("data") or {}).get(key)
    if raw is None:
        if not required:
            return None
        raise _Problem("SecretKeyNotFound", f"Secret {s.secret_name} has no key {key} (for {s.name})")
    try:
        value = base64.b64decode(raw, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise _Problem(
            "SecretValueInvalid", f"Secret {s.secret_name} key {key} (for {s.name}) is not UTF-8 text"
        ) from None
    # `kubectl create secret --from-file` keeps the file's final newline; it is never part of a key.
    return value.removesuffix("\n").removesuffix("\r")


def _fields(secret: Obj, s: SecretSpec, keys: Mapping[str, str], required: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, key in keys.items():
        value = _text(secret, s, key, required=name in required)
        if value is not None:
            out[name] = value
    return out


def _static(secret: Obj, s: SecretSpec, tokens: Mapping[str, str]) -> SecretBinding:
    value = _text(secret, s, s.key)
    assert value is not None
    return new_binding(s.name, tokens[s.name], value, s.hosts, s.locations)


def _aws(secret: Obj, s: SecretSpec, tokens: Mapping[str, str]) -> SecretBinding:
    fields = _fields(secret, s, AWS_KEYS, AWS_REQUIRED)
    sealed: dict[str, str] = {f: tokens[f"{s.name}.{f}"] for f in ("secretAccessKey", "sessionToken") if f in fields}
    return new_kind_binding(s.name, Kind.AWS, tokens[s.name], s.hosts, fields, sealed)


def _oauth2(secret: Obj, s: SecretSpec, tokens: Mapping[str, str]) -> SecretBinding:
    assert s.oauth2 is not None
    fields = _fields(secret, s, OAUTH2_KEYS, OAUTH2_REQUIRED)
    if "clientSecret" not in fields and "refreshToken" not in fields:
        raise _Problem(
            "SecretKeyNotFound",
            f"Secret {s.secret_name} has neither {n.OAUTH2_CLIENT_SECRET_KEY} nor {n.OAUTH2_REFRESH_TOKEN_KEY}"
            f" (for {s.name})",
        )
    binding = new_kind_binding(s.name, Kind.OAUTH2, tokens[s.name], s.hosts, {**fields, **s.oauth2.fields()})
    # `locations` was checked by the spec parser (the contract's own check)
    return replace(binding, locations=frozenset(Location(loc) for loc in s.locations))


def throwaway_key(previous: Mapping[str, str] | None, name: str) -> str:
    """The throwaway private key of a gcp entry: the one its agent file already holds, else a new one
    (a new key would break agents holding the old file until their pods restart)."""
    raw = (previous or {}).get(n.agent_file_key(name))
    try:
        pem = json.loads(base64.b64decode(raw or "", validate=True))["private_key"]
        rsa_public_pem(pem.encode())
        return str(pem)
    except (ValueError, TypeError, KeyError, AttributeError):
        return new_rsa_key_pem().decode()


def _gcp(secret: Obj, s: SecretSpec, tokens: Mapping[str, str], previous: Mapping[str, str] | None) -> Resolved:
    text = _text(secret, s, s.key)
    where = f"Secret {s.secret_name} key {s.key} (for {s.name})"
    try:
        doc = json.loads(text or "")
    except ValueError:
        raise _Problem("SecretValueInvalid", f"{where} is not a service-account JSON document") from None
    if not isinstance(doc, dict):
        raise _Problem("SecretValueInvalid", f"{where} is not a service-account JSON object")
    throwaway = throwaway_key(previous, s.name)
    try:
        fields = service_account_fields(doc, rsa_public_pem(throwaway.encode()).decode())
        rsa_public_pem(fields["privateKey"].encode())
    except FieldError as e:
        raise _Problem("SecretValueInvalid", f"{where}: {e}") from None
    except ValueError:
        raise _Problem("SecretValueInvalid", f"{where}: private_key is not an RSA private key in PEM") from None
    binding = new_kind_binding(s.name, Kind.GCP, tokens[s.name], s.hosts, fields)
    agent = agent_service_account(doc, tokens[s.name], throwaway)
    return Resolved([binding], [], {n.agent_file_key(s.name): agent})


def _one(s: SecretSpec, secret: Obj, tokens: Mapping[str, str], previous: Mapping[str, str] | None) -> Resolved:
    if s.kind is Kind.GCP:
        return _gcp(secret, s, tokens, previous)
    reader = {Kind.STATIC: _static, Kind.AWS: _aws, Kind.OAUTH2: _oauth2}[s.kind]
    return Resolved([reader(secret, s, tokens)], [])


def resolve(
    spec: SessionSpec,
    secrets: Mapping[str, Obj | None],
    tokens: Mapping[str, str],
    previous: Mapping[str, str] | None = None,
) -> Resolved:
    """Each entry's referenced keys as a session-file entry; missing or unusable ones become problems.

    `tokens` holds every name of `token_names()`; `previous` is the current session Secret's data
    (where a gcp entry's throwaway key is kept)."""
    out = Resolved([], [])
    for s in spec.secrets:
        secret = secrets.get(s.secret_name)
        if secret is None:
            out.problems.append(("SecretNotFound", f"Secret {s.secret_name} (for {s.name}) not found"))
            continue
        try:
            one = _one(s, secret, tokens, previous)
        except _Problem as p:
            out.problems.append((p.reason, p.message))
            continue
        except SessionError as e:  # the session file's own checks, through the contract's constructors
            key = f" key {s.key}" if s.key else ""
            out.problems.append(("SecretValueInvalid", f"Secret {s.secret_name}{key}: {e}"))
            continue
        out.bindings.extend(one.bindings)
        out.files.update(one.files)
    return out
