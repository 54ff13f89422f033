"""Credential kinds: secrets that are not a static header, and the fields each kind carries.

A static secret is one real string swapped for its sealed stand-in. The other kinds carry
several strings (`fields`), some real material the proxy must never let out (`SECRET_FIELDS`,
what `SecretBinding.secret_values()` scrubs), and extra sealed stand-ins the agent holds
besides the primary one (`SEALED_FIELDS`, e.g. the sealed AWS secret access key).

The field checks here are the session file's own (the reader's and the writer's); messages
name fields, never values. Also here: the Google service-account JSON the agent gets, because
the operator and the gateway both build it and the sidecar must agree with its content.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from .hosts import HostPattern, HostPatternError
from .tokens import SEALED_PREFIX, is_sealed_token

__all__ = [
    "AGENT_SA_FIELDS",
    "CLIENT_AUTH",
    "FIELDS",
    "OPTIONAL_FIELDS",
    "REQUIRED_FIELDS",
    "SEALED_FIELDS",
    "SECRET_FIELDS",
    "SINGLETON_KINDS",
    "FieldError",
    "Kind",
    "agent_service_account",
    "check_fields",
    "check_sealed_fields",
    "parse_kind",
    "service_account_fields",
    "url_host_pattern",
]


class Kind(StrEnum):
    """How a secret is used; a str, so it compares, hashes and serializes as its value."""

    STATIC = "static"
    AWS = "aws"
    OAUTH2 = "oauth2"
    GCP = "gcpServiceAccount"


class FieldError(ValueError):
    """A kind or a field that cannot be used; the message names the field, never its value."""


#: Fields each kind must have.
REQUIRED_FIELDS: Mapping[Kind, tuple[str, ...]] = {
    Kind.STATIC: (),
    Kind.AWS: ("accessKeyId", "secretAccessKey"),
    Kind.OAUTH2: ("tokenUrl", "clientId"),
    Kind.GCP: ("privateKey", "privateKeyId", "clientEmail", "tokenUri", "sessionPublicKey"),
}
#: Fields each kind may have.
OPTIONAL_FIELDS: Mapping[Kind, tuple[str, ...]] = {
    Kind.STATIC: (),
    Kind.AWS: ("sessionToken",),
    Kind.OAUTH2: ("clientSecret", "refreshToken", "scope", "audience", "clientAuth"),
    Kind.GCP: (),
}
FIELDS: Mapping[Kind, frozenset[str]] = {k: frozenset(REQUIRED_FIELDS[k] + OPTIONAL_FIELDS[k]) for k in Kind}
#: Real material: scrubbed from responses, never logged, never shown to the agent.
SECRET_FIELDS: Mapping[Kind, tuple[str, ...]] = {
    Kind.STATIC: (),
    Kind.AWS: ("accessKeyId", "secretAccessKey", "sessionToken"),
    Kind.OAUTH2: ("clientSecret", "refreshToken"),
    Kind.GCP: ("privateKey", "privateKeyId"),
}
#: Fields with a sealed stand-in of their own (in `sealedFields`), present iff the field is.
SEALED_FIELDS: Mapping[Kind, tuple[str, ...]] = {
    Kind.STATIC: (),
    Kind.AWS: ("secretAccessKey", "sessionToken"),
    Kind.OAUTH2: (),
    Kind.GCP: (),
}
#: Kinds a session may hold at most once (the agent's SDK reads one set of variables/one file).
SINGLETON_KINDS: frozenset[Kind] = frozenset({Kind.AWS, Kind.GCP})
#: How an OAuth2 client authenticates at the token endpoint (RFC 6749 2.3.1): HTTP Basic or form fields.
CLIENT_AUTH = ("basic", "post")

_URL_FIELDS = frozenset({"tokenUrl", "tokenUri"})
_PEM_FIELDS = frozenset({"privateKey", "sessionPublicKey"})
_PRINTABLE_RE = re.compile(r"^[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?$")
_PEM_RE = re.compile(r"^-----BEGIN ([A-Z ]+)-----\r?\n[A-Za-z0-9+/=\r\n]+-----END \1-----\r?\n?$")
MIN_SECRET_LENGTH = 8  # as static values: shorter ones cannot be scrubbed from responses safely
MAX_FIELD_LENGTH = 16384


def parse_kind(raw: object, what: str) -> Kind:
    """A `kind` value; absent (None) means static. `what` names the field in messages."""
    if raw is None:
        return Kind.STATIC
    known = {k.value: k for k in Kind}
    if not isinstance(raw, str) or raw not in known:
        raise FieldError(f"{what} must be one of {', '.join(known)}")
    return known[raw]


def url_host_pattern(url: str) -> HostPattern:
    """The host pattern (host:port, 443 by default) of an https URL such as a token endpoint."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise FieldError("must be an https URL")
    try:
        port = parts.port or 443
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        return HostPattern.parse(f"{host}:{port}")
    except (ValueError, HostPatternError):
        raise FieldError("must be an https URL with a valid host and port") from None


def _check_field(kind: Kind, key: str, value: object, what: str) -> None:
    if not isinstance(value, str) or not value:
        raise FieldError(f"{what} must be a non-empty string")
    if len(value) > MAX_FIELD_LENGTH:
        raise FieldError(f"{what} must be at most {MAX_FIELD_LENGTH} characters")
    if SEALED_PREFIX in value:
        raise FieldError(f"{what} must not contain a sealed token")
    if key in _PEM_FIELDS:
        if not _PEM_RE.fullmatch(value):
            raise FieldError(f"{what} must be one PEM block")
        return
    if not _PRINTABLE_RE.fullmatch(value):
        raise FieldError(f"{what} must be printable ASCII without line breaks or edge spaces")
    if key in SECRET_FIELDS[kind] and len(value) < MIN_SECRET_LENGTH:
        raise FieldError(f"{what} must be at least {MIN_SECRET_LENGTH} characters long")
    if key in _URL_FIELDS:
        try:
            url_host_pattern(value)
        except FieldError as e:
            raise FieldError(f"{what} {e}") from None
    if key == "clientAuth" and value not in CLIENT_AUTH:
        raise FieldError(f"{what} must be one of {', '.join(CLIENT_AUTH)}")
    if key == "clientEmail" and "@" not in value:
        raise FieldError(f"{what} must be an e-mail address")


def check_fields(kind: Kind, raw: object, where: str) -> dict[str, str]:
    """A binding's `fields` for `kind` (static: none); `where` leads messages (`secret X: `)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise FieldError(f"{where}fields must be an object")
    unknown = sorted(str(k) for k in raw if k not in FIELDS[kind])
    if unknown:
        raise FieldError(f"{where}fields {', '.join(unknown)} do not belong to kind {kind.value}")
    missing = [k for k in REQUIRED_FIELDS[kind] if k not in raw]
    if missing:
        raise FieldError(f"{where}kind {kind.value} needs fields {', '.join(missing)}")
    for key, value in raw.items():
        _check_field(kind, str(key), value, f"{where}fields.{key}")
    if kind is Kind.OAUTH2 and "clientSecret" not in raw and "refreshToken" not in raw:
        raise FieldError(f"{where}kind oauth2 needs fields clientSecret or refreshToken (or both)")
    return {str(k): str(v) for k, v in raw.items()}


def check_sealed_fields(kind: Kind, fields: Mapping[str, str], raw: object, where: str) -> dict[str, str]:
    """The sealed stand-ins of a binding: exactly one per `SEALED_FIELDS` field present in `fields`."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise FieldError(f"{where}sealedFields must be an object")
    wanted = [k for k in SEALED_FIELDS[kind] if k in fields]
    if sorted(str(k) for k in raw) != sorted(wanted):
        listed = ", ".join(wanted) or "none"
        raise FieldError(f"{where}sealedFields must hold a sealed token for exactly these fields: {listed}")
    for key, token in raw.items():
        if not is_sealed_token(token):
            raise FieldError(f"{where}sealedFields.{key} must look like SEALED_ followed by 22-128 URL-safe characters")
    return {str(k): str(v) for k, v in raw.items()}


# --- Google service accounts -------------------------------------------------------------

#: Fields of a service-account JSON copied as they are into the agent's copy (none is secret).
AGENT_SA_FIELDS = (
    "type",
    "project_id",
    "client_email",
    "client_id",
    "auth_uri",
    "token_uri",
    "auth_provider_x509_cert_url",
    "client_x509_cert_url",
    "universe_domain",
)
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"


def service_account_fields(doc: Mapping[str, Any], session_public_pem: str) -> dict[str, str]:
    """The gcpServiceAccount `fields` from a real service-account JSON (as parsed) and the public
    half of the throwaway key. Raises FieldError naming the JSON key that is missing or wrong."""
    if doc.get("type", "service_account") != "service_account":
        raise FieldError("service-account JSON: type must be service_account")
    out: dict[str, str] = {}
    for key, field in (
        ("private_key", "privateKey"),
        ("private_key_id", "privateKeyId"),
        ("client_email", "clientEmail"),
    ):
        value = doc.get(key)
        if not isinstance(value, str) or not value:
            raise FieldError(f"service-account JSON: {key} must be a non-empty string")
        out[field] = value
    token_uri = doc.get("token_uri", GOOGLE_TOKEN_URI)
    if not isinstance(token_uri, str):
        raise FieldError("service-account JSON: token_uri must be a string")
    out["tokenUri"] = token_uri
    out["sessionPublicKey"] = session_public_pem
    return out


def agent_service_account(doc: Mapping[str, Any], sealed: str, throwaway_private_pem: str) -> bytes:
    """The service-account JSON the agent gets: the real one's public fields, the throwaway private
    key and the sealed key id. Nothing of the real key (nor its id) is in it."""
    out: dict[str, Any] = {k: doc[k] for k in AGENT_SA_FIELDS if isinstance(doc.get(k), str)}
    out.setdefault("type", "service_account")
    out.setdefault("token_uri", GOOGLE_TOKEN_URI)
    out["private_key_id"] = sealed
    out["private_key"] = throwaway_private_pem
    return json.dumps(out, indent=2, sort_keys=True).encode() + b"\n"
