"""Secrets of the other kinds in the session API (aws, oauth2, gcpServiceAccount), as pure functions.

A request names the kind and carries the real material inline in `fields` (the session file's
field names; for a Google service account, the key file Google gives you). The gateway mints
the sealed stand-ins (and, for Google, a throwaway RSA key whose private half only the sandbox
gets) and answers what the sandbox sets: `env`, and for Google the agent's key file. The
Kubernetes webhook injects the same variables (docs/operator.md), so a sandbox looks alike in
both modes. Every refusal is an `ApiError` naming the field, never a value.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from oshu_contract.hosts import HostPattern
from oshu_contract.kinds import SEALED_FIELDS, FieldError, Kind, agent_service_account, service_account_fields
from oshu_contract.pki import new_rsa_key_pem, rsa_public_pem
from oshu_contract.session import SecretBinding, SessionError, new_kind_binding, new_sealed_token

from .errors import invalid

#: The variables a Google client reads its key file's path from (and the secret's own name, as the webhook sets).
GOOGLE_CREDENTIALS_ENV = "GOOGLE_APPLICATION_CREDENTIALS"
#: AWS variables for each field that has a sealed stand-in (the primary one is the access key id).
AWS_ENV = {"secretAccessKey": "AWS_SECRET_ACCESS_KEY", "sessionToken": "AWS_SESSION_TOKEN"}


@dataclass(frozen=True, slots=True)
class Issued:
    """One secret as the session holds it, and what the sandbox gets for it (no real material)."""

    binding: SecretBinding
    env: Mapping[str, str]
    agent_json: bytes | None = field(default=None, repr=False)
    agent_json_env: tuple[str, ...] = ()

    def answer(self) -> dict[str, Any]:
        """The creation response's entry for this secret."""
        out: dict[str, Any] = {"kind": self.binding.kind.value, "sealed": self.binding.sealed, "env": dict(self.env)}
        if self.agent_json is not None:
            out["agent_json"] = json.loads(self.agent_json)
            out["agent_json_env"] = list(self.agent_json_env)
        return out


def static_issued(binding: SecretBinding) -> Issued:
    return Issued(binding, {binding.name: binding.sealed})


def issue(name: str, kind: Kind, raw_fields: object, hosts: tuple[HostPattern, ...]) -> Issued:
    """Mint the stand-ins for a secret of a non-static `kind` and build its binding (400 if unusable)."""
    where = f"secrets.{name}"
    if kind is Kind.GCP:
        return _issue_gcp(name, _key_file(raw_fields, where), hosts)
    if not isinstance(raw_fields, Mapping):
        raise invalid(f"{where}.fields must be an object of field name -> string")
    sealed = new_sealed_token()
    sealed_fields = {k: new_sealed_token() for k in SEALED_FIELDS[kind] if k in raw_fields}
    binding = _binding(name, kind, sealed, hosts, raw_fields, sealed_fields)
    if kind is Kind.AWS:
        env = {"AWS_ACCESS_KEY_ID": sealed} | {AWS_ENV[k]: v for k, v in sealed_fields.items()}
        return Issued(binding, env)
    return Issued(binding, {name: sealed})


def _binding(
    name: str,
    kind: Kind,
    sealed: str,
    hosts: tuple[HostPattern, ...],
    fields: Mapping[str, Any],
    sealed_fields: Mapping[str, str],
) -> SecretBinding:
    try:
        return new_kind_binding(name, kind, sealed, hosts, fields, sealed_fields)
    except SessionError as e:
        raise invalid(str(e)) from None


def _key_file(raw: object, where: str) -> Mapping[str, Any]:
    """The service-account key file: the JSON object itself, or its text."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise invalid(f"{where}.fields must be the service-account key file (a JSON object or its text)") from None
    if not isinstance(raw, Mapping):
        raise invalid(f"{where}.fields must be the service-account key file (a JSON object or its text)")
    return raw


def _issue_gcp(name: str, doc: Mapping[str, Any], hosts: tuple[HostPattern, ...]) -> Issued:
    private = new_rsa_key_pem()  # the throwaway: its private half goes to the sandbox only
    private_pem, public_pem = private.decode(), rsa_public_pem(private).decode()
    try:
        fields = service_account_fields(doc, public_pem)
    except FieldError as e:
        raise invalid(f"secrets.{name}.fields: {e}") from None
    sealed = new_sealed_token()
    binding = _binding(name, Kind.GCP, sealed, hosts, fields, {})
    agent = agent_service_account(doc, sealed, private_pem)
    return Issued(binding, {}, agent, tuple(dict.fromkeys((GOOGLE_CREDENTIALS_ENV, name))))
