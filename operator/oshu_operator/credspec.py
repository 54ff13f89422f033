"""Credential kinds on the operator's side: how a VaultSession entry names its real material, and
what the agent gets for each kind (environment variables, the Google service-account file).

Pure functions shared by the spec parser (spec.py), the reconciler (resolve.py) and admission
(session_view.SessionView, injection.py), so the env the webhook injects and the tokens the reconciler
mints are decided from one table. Messages name fields, never values.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from oshu_contract.kinds import CLIENT_AUTH, SINGLETON_KINDS, FieldError, Kind, url_host_pattern

from . import names as n

_DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_SECRET_KEY_RE = re.compile(r"^[-._a-zA-Z0-9]+$")
#: Kinds whose real material is a set of keys of one Secret (`secretRef`); the others name one key
#: (`secretKeyRef`; gcpServiceAccount: the key holds the real service-account JSON).
SECRET_REF_KINDS = frozenset({Kind.AWS, Kind.OAUTH2})
#: Kinds whose sealed token may be substituted elsewhere than in headers (`locations`).
LOCATION_KINDS = frozenset({Kind.STATIC, Kind.OAUTH2})
#: aws: the contract's field -> the key of the referenced Secret (== the variable the agent gets).
AWS_KEYS = {
    "accessKeyId": n.AWS_ACCESS_KEY_ID,
    "secretAccessKey": n.AWS_SECRET_ACCESS_KEY,
    "sessionToken": n.AWS_SESSION_TOKEN,
}
AWS_REQUIRED = ("accessKeyId", "secretAccessKey")
#: oauth2: the contract's field -> the key of the referenced Secret.
OAUTH2_KEYS = {
    "clientId": n.OAUTH2_CLIENT_ID_KEY,
    "clientSecret": n.OAUTH2_CLIENT_SECRET_KEY,
    "refreshToken": n.OAUTH2_REFRESH_TOKEN_KEY,
}
OAUTH2_REQUIRED = ("clientId",)
MAX_SCOPES = 32


class CredentialSpecError(ValueError):
    """An entry's kind-specific part is unusable; the message names the field."""


@dataclass(frozen=True, slots=True)
class OAuth2Spec:
    """`spec.secrets[].oauth2`: the token endpoint and what to ask it for."""

    token_url: str
    scopes: tuple[str, ...] = ()
    audience: str | None = None
    client_auth: str = CLIENT_AUTH[0]

    def fields(self) -> dict[str, str]:
        """The contract's non-secret oauth2 fields."""
        out = {"tokenUrl": self.token_url, "clientAuth": self.client_auth}
        if self.scopes:
            out["scope"] = " ".join(self.scopes)
        if self.audience:
            out["audience"] = self.audience
        return out


def parse_reference(entry: Mapping[str, Any], kind: Kind, where: str) -> tuple[str, str]:
    """(Secret name, key) of an entry: `secretRef {name}` (key "") for aws/oauth2, else `secretKeyRef`."""
    wanted, other = ("secretRef", "secretKeyRef") if kind in SECRET_REF_KINDS else ("secretKeyRef", "secretRef")
    if entry.get(other) is not None:
        raise CredentialSpecError(f"{where}.{other} does not apply to kind {kind.value}; use {wanted}")
    ref = entry.get(wanted)
    if not isinstance(ref, Mapping):
        what = "a Secret" if wanted == "secretRef" else "a Secret and a key"
        raise CredentialSpecError(f"{where}.{wanted} must name {what}")
    name = ref.get("name")
    if not isinstance(name, str) or len(name) > 253 or not _DNS_SUBDOMAIN_RE.match(name):
        raise CredentialSpecError(f"{where}.{wanted}.name must be a Secret name (DNS subdomain)")
    if wanted == "secretRef":
        return name, ""
    key = ref.get("key")
    if not isinstance(key, str) or len(key) > 253 or not _SECRET_KEY_RE.match(key):
        raise CredentialSpecError(f"{where}.secretKeyRef.key must be a Secret key ([-._a-zA-Z0-9]+)")
    return name, key


def parse_oauth2(entry: Mapping[str, Any], kind: Kind, where: str) -> OAuth2Spec | None:
    """`oauth2` of an entry: required for kind oauth2, refused on the others."""
    raw = entry.get("oauth2")
    if kind is not Kind.OAUTH2:
        if raw is not None:
            raise CredentialSpecError(f"{where}.oauth2 applies to kind oauth2 only")
        return None
    if not isinstance(raw, Mapping):
        raise CredentialSpecError(f"{where}.oauth2 must give at least tokenUrl for kind oauth2")
    url = raw.get("tokenUrl")
    try:
        url_host_pattern(url if isinstance(url, str) else "")
    except FieldError as e:
        raise CredentialSpecError(f"{where}.oauth2.tokenUrl {e}") from None
    scopes = raw.get("scopes") or []
    if not isinstance(scopes, list) or len(scopes) > MAX_SCOPES:
        raise CredentialSpecError(f"{where}.oauth2.scopes must be a list of at most {MAX_SCOPES} scopes")
    for i, scope in enumerate(scopes):
        if not isinstance(scope, str) or not scope or not scope.isprintable() or " " in scope:
            raise CredentialSpecError(f"{where}.oauth2.scopes[{i}] must be a scope without spaces")
    audience = raw.get("audience")
    if audience is not None and (not isinstance(audience, str) or not audience or not audience.isprintable()):
        raise CredentialSpecError(f"{where}.oauth2.audience must be a non-empty string")
    client_auth = raw.get("clientAuth", CLIENT_AUTH[0])
    if client_auth not in CLIENT_AUTH:
        raise CredentialSpecError(f"{where}.oauth2.clientAuth must be one of {', '.join(CLIENT_AUTH)}")
    assert isinstance(url, str)
    return OAuth2Spec(url, tuple(dict.fromkeys(scopes)), audience, client_auth)


def check_locations_apply(entry: Mapping[str, Any], kind: Kind, where: str) -> None:
    if entry.get("locations") is not None and kind not in LOCATION_KINDS:
        raise CredentialSpecError(f"{where}.locations applies to kinds static and oauth2 only")


# --- what the agent gets ---------------------------------------------------------------------


def injected_env_names(name: str, kind: Kind) -> tuple[str, ...]:
    """The variables an entry sets in app containers (aws: the SDK's three, whatever its name)."""
    if kind is Kind.AWS:
        return (n.AWS_ACCESS_KEY_ID, n.AWS_SECRET_ACCESS_KEY, n.AWS_SESSION_TOKEN)
    if kind is Kind.GCP:
        return tuple(dict.fromkeys((name, n.ENV_GOOGLE_CREDENTIALS)))
    return (name,)


def check_env_collisions(entries: Iterable[tuple[str, Kind]]) -> None:
    """Refuse two entries setting one variable, and a second aws or gcpServiceAccount entry."""
    owner: dict[str, str] = {}
    kinds: dict[Kind, str] = {}
    for name, kind in entries:
        if kind in SINGLETON_KINDS:
            if kind in kinds:
                raise CredentialSpecError(
                    f"spec.secrets: {kinds[kind]} and {name} are both of kind {kind.value}; a session holds one"
                )
            kinds[kind] = name
        for var in injected_env_names(name, kind):
            if var in owner:
                raise CredentialSpecError(f"spec.secrets: {owner[var]} and {name} would both set {var}")
            owner[var] = name


def field_token_names(name: str, kind: Kind, fields_present: Iterable[str]) -> tuple[str, ...]:
    """Token names (`NAME.field`, as status.tokens and `recorded_tokens` key them) of the sealed fields."""
    if kind is not Kind.AWS:
        return ()
    present = set(fields_present)
    return tuple(f"{name}.{f}" for f in ("secretAccessKey", "sessionToken") if f in present)


def required_tokens(name: str, kind: Kind) -> tuple[str, ...]:
    """The status tokens an entry's env cannot be injected without."""
    return (name, f"{name}.secretAccessKey") if kind is Kind.AWS else (name,)


def agent_env(name: str, kind: Kind, tokens: Mapping[str, str]) -> list[tuple[str, str]]:
    """(variable, value) pairs an entry injects, from the status tokens; a missing token is left out."""
    if kind is Kind.AWS:
        pairs = [
            (n.AWS_ACCESS_KEY_ID, name),
            (n.AWS_SECRET_ACCESS_KEY, f"{name}.secretAccessKey"),
            (n.AWS_SESSION_TOKEN, f"{name}.sessionToken"),
        ]
        return [(var, tokens[key]) for var, key in pairs if key in tokens]
    if kind is Kind.GCP:
        path = n.agent_file_path(name)
        return [(var, path) for var in injected_env_names(name, kind)]
    return [(name, tokens[name])] if name in tokens else []


def kind_of(entry: Mapping[str, Any]) -> Kind:
    """An entry's kind, tolerant (admission reads specs the reconciler may call Invalid): unknown -> static."""
    raw = entry.get("kind")
    return next((k for k in Kind if k.value == raw), Kind.STATIC)


def reference_of(entry: Mapping[str, Any]) -> str | None:
    """The Secret an entry reads, whichever reference it uses (tolerant, for admission)."""
    for key in ("secretKeyRef", "secretRef"):
        ref = entry.get(key)
        if isinstance(ref, Mapping) and isinstance(ref.get("name"), str):
            return str(ref["name"])
    return None
