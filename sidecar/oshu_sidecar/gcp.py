"""Google service accounts: the agent's RS256 JWTs are verified with the session's throwaway key
and re-signed with the real one.

The agent's service-account JSON carries a throwaway private key made for the session and the
sealed token as `private_key_id`. Its client (google-auth) signs a JWT with that key: either
an assertion it exchanges at the token endpoint (`grant_type=...jwt-bearer`), or a
self-signed JWT it sends as `Authorization: Bearer`. The proxy checks the signature with the
throwaway public key (only a holder of the session's agent JSON can use it), checks the claims
(issuer, audience, a short validity window), and signs the same claims again with the real
key and its real key id. Everything here is pure (no I/O, the clock passed in); errors are
`ProxyError`s that name the secret, never a value.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .errors import ProxyError

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: The audience google-auth writes into every assertion, whatever the JSON's token_uri says.
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
#: Google accepts assertions valid for at most an hour.
MAX_LIFETIME = 3600
#: Clock difference tolerated between the agent and the proxy (seconds).
CLOCK_SKEW = 300
#: Longest JWT (bytes) looked at; google-auth's are well under 2 KiB.
MAX_JWT = 16384
#: Re-signed self-signed JWTs remembered per service account (a client reuses one for an hour).
RESIGNED_CACHE = 256


@dataclass(frozen=True, slots=True)
class Jwt:
    """A compact JWS split into its parts; `header`/`claims` decoded, the segments kept as sent."""

    header: dict[str, Any]
    claims: dict[str, Any]
    header_b64: bytes
    payload_b64: bytes
    signature: bytes

    @property
    def signing_input(self) -> bytes:
        return self.header_b64 + b"." + self.payload_b64


def b64url_encode(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def b64url_decode(data: bytes) -> bytes:
    """Unpadded base64url as JWS uses it; raises ValueError on anything else."""
    if not data or any(c not in _B64URL for c in data) or len(data) % 4 == 1:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))


_B64URL = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def looks_like_jwt(token: bytes) -> bool:
    """Three base64url segments: worth parsing (cheap test before any decoding)."""
    return len(token) <= MAX_JWT and token.count(b".") == 2 and token[:2] == b"ey"


def parse_jwt(token: bytes, what: str) -> Jwt:
    """Split and decode a compact JWS; `what` names it in the error (no part of it is quoted)."""
    parts = token.split(b".")
    if len(token) > MAX_JWT or len(parts) != 3:
        raise _invalid(f"{what} is not a compact JWT")
    try:
        header = json.loads(b64url_decode(parts[0]))
        claims = json.loads(b64url_decode(parts[1]))
        signature = b64url_decode(parts[2])
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
        raise _invalid(f"{what} is not a well-formed JWT") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise _invalid(f"{what} is not a well-formed JWT")
    return Jwt(header, claims, parts[0], parts[1], signature)


def verify_rs256(jwt: Jwt, key: rsa.RSAPublicKey, what: str) -> None:
    """The signature is RS256 by `key`; anything else (another alg, another key) is refused."""
    if jwt.header.get("alg") != "RS256":
        raise _invalid(f"{what} must be signed with RS256")
    try:
        key.verify(jwt.signature, jwt.signing_input, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise _invalid(f"{what} is not signed by this session's service-account key") from None


def check_window(claims: Mapping[str, Any], now: float, what: str) -> None:
    """iat/exp present, consistent, at most an hour apart, and `now` inside them (with skew)."""
    iat, exp = claims.get("iat"), claims.get("exp")
    if not _is_number(iat) or not _is_number(exp):
        raise _invalid(f"{what} must carry numeric iat and exp claims")
    assert isinstance(iat, int | float) and isinstance(exp, int | float)
    if exp <= iat or exp - iat > MAX_LIFETIME:
        raise _invalid(f"{what}: exp must follow iat by at most {MAX_LIFETIME} s")
    if iat > now + CLOCK_SKEW or exp <= now - CLOCK_SKEW:
        raise ProxyError("assertion_expired", f"{what} is not valid now (iat/exp outside the allowed window)")


def check_claims(
    claims: Mapping[str, Any], issuer: str, audiences: frozenset[str] | None, now: float, what: str
) -> None:
    """iss is the service account; aud is one of `audiences` when given (the token endpoint), else
    any audience or scope (a self-signed JWT names the API it is for); the validity window holds."""
    if claims.get("iss") != issuer:
        raise _invalid(f"{what}: iss is not this session's service account")
    sub = claims.get("sub")
    if sub is not None and sub != issuer:
        raise _invalid(f"{what}: sub is not this session's service account")
    aud = claims.get("aud")
    if audiences is not None:
        if not isinstance(aud, str) or aud not in audiences:
            raise _invalid(f"{what}: aud is not the service account's token endpoint")
    elif not isinstance(aud, str) and not isinstance(claims.get("scope"), str):
        raise _invalid(f"{what} must name an audience or a scope")
    check_window(claims, now, what)


def resign(jwt: Jwt, key: rsa.RSAPrivateKey, kid: str) -> bytes:
    """The same claims (payload segment byte for byte) under a header naming `kid`, signed by `key`."""
    header = dict(jwt.header)
    header["kid"] = kid
    header_b64 = b64url_encode(json.dumps(header, separators=(",", ":")).encode())
    signing_input = header_b64 + b"." + jwt.payload_b64
    signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return signing_input + b"." + b64url_encode(signature)


def load_private_key(pem: str, name: str) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError):
        raise ValueError(f"secret {name}: privateKey is not an unencrypted PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"secret {name}: privateKey is not an RSA key")
    return key


def load_public_key(pem: str, name: str) -> rsa.RSAPublicKey:
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError):
        raise ValueError(f"secret {name}: sessionPublicKey is not a PEM public key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError(f"secret {name}: sessionPublicKey is not an RSA key")
    return key


class ServiceAccountSigner:
    """One gcpServiceAccount binding's keys and the re-signing it allows.

    `sealed_kid` is the binding's sealed token (the agent's private_key_id). Built once per
    session load; the keys are parsed here so a bad session fails then, not per request.
    """

    __slots__ = ("_private", "_public", "_resigned", "client_email", "name", "real_kid", "sealed_kid", "token_uri")

    def __init__(self, name: str, sealed_kid: str, fields: Mapping[str, str]) -> None:
        self.name = name
        self.sealed_kid = sealed_kid
        self.client_email = fields["clientEmail"]
        self.token_uri = fields["tokenUri"]
        self.real_kid = fields["privateKeyId"]
        self._private = load_private_key(fields["privateKey"], name)
        self._public = load_public_key(fields["sessionPublicKey"], name)
        #: Self-signed JWT -> (its re-signed form, its claims): a client reuses one JWT for up to an
        #: hour, and an RSA signature per request would cost ~1 ms of CPU each time.
        self._resigned: dict[bytes, tuple[bytes, dict[str, Any]]] = {}

    def concerns(self, jwt: Jwt) -> bool:
        """Whether a JWT claims to come from this service account (then it must verify)."""
        return jwt.header.get("kid") == self.sealed_kid or jwt.claims.get("iss") == self.client_email

    def reissue(self, jwt: Jwt, now: float, audiences: frozenset[str] | None, what: str) -> bytes:
        """Verify with the session key and check the claims, then re-sign with the real key."""
        verify_rs256(jwt, self._public, what)
        check_claims(jwt.claims, self.client_email, audiences, now, what)
        return resign(jwt, self._private, self.real_kid)

    def exchange_body(self, body: bytes, now: float) -> bytes | None:
        """A token-endpoint form body with its jwt-bearer assertion re-signed; None if it is not a
        jwt-bearer request (nothing to do). Refuses an assertion of this account that does not verify."""
        try:
            form = parse_qsl(body.decode("ascii"), keep_blank_values=True, strict_parsing=True)
        except (UnicodeDecodeError, ValueError):
            return None
        if dict(form).get("grant_type") != JWT_BEARER_GRANT:
            return None
        what = f"the assertion of secret {self.name}"
        assertions = [v for k, v in form if k == "assertion"]
        if len(assertions) != 1:
            raise _invalid(f"{what}: expected exactly one assertion")
        if not assertions[0].isascii():
            raise _invalid(f"{what} is not a compact JWT")
        jwt = parse_jwt(assertions[0].encode("ascii"), what)
        if not self.concerns(jwt):
            return None  # another account's assertion: not ours to re-sign (it is worthless here)
        audiences = frozenset({self.token_uri, GOOGLE_TOKEN_AUDIENCE})
        real = self.reissue(jwt, now, audiences, what).decode("ascii")
        return urlencode([(k, real if k == "assertion" else v) for k, v in form]).encode("ascii")

    def bearer(self, token: bytes, now: float) -> bytes | None:
        """A self-signed JWT bearer re-signed, or None if `token` is not one of this account's JWTs."""
        if not looks_like_jwt(token):
            return None
        what = f"the self-signed JWT of secret {self.name}"
        hit = self._resigned.get(token)
        if hit is not None:  # these exact bytes verified before: only the time window can have changed
            check_window(hit[1], now, what)
            return hit[0]
        try:
            jwt = parse_jwt(token, what)
        except ProxyError:
            return None  # not a JWT after all: some other bearer token, left alone
        if not self.concerns(jwt):
            return None
        real = self.reissue(jwt, now, None, what)
        if len(self._resigned) >= RESIGNED_CACHE:
            self._resigned.clear()
        self._resigned[token] = (real, jwt.claims)
        return real


def _is_number(v: object) -> bool:
    """A JSON number usable as a time: not a bool, NaN (it passes every comparison) or an infinity."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return False
    return math.isfinite(v) if isinstance(v, float) else abs(v) < 1 << 53  # (a larger int overflows float)


def _invalid(message: str) -> ProxyError:
    return ProxyError("assertion_invalid", message)
