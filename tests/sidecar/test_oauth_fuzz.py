"""Generated input for the OAuth2/Google parsers: each answers a result or a ProxyError, never
another exception (which would drop the agent's connection without a JSON error), and no odd
value slips through the JWT checks."""

from __future__ import annotations

import contextlib
import json
import math
import time
from urllib.parse import urlencode

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oshu_contract.tokens import new_sealed_token
from oshu_sidecar.errors import ProxyError
from oshu_sidecar.gcp import JWT_BEARER_GRANT, ServiceAccountSigner, b64url_encode, check_window, parse_jwt, resign
from oshu_sidecar.minted import MintedTokens
from oshu_sidecar.oauth2 import parse_token_response

EMAIL = "fuzz@p.iam.gserviceaccount.com"
SEALED = new_sealed_token()
_REAL = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_SESSION = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


SIGNER = ServiceAccountSigner(
    "SA",
    SEALED,
    {
        "privateKey": _pem(_REAL),
        "privateKeyId": "kid-real-0123456789",
        "clientEmail": EMAIL,
        "tokenUri": "https://oauth2.googleapis.com/token",
        "sessionPublicKey": _SESSION.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode(),
    },
)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _session_signed(header: dict[str, object], claims: dict[str, object]) -> bytes:
    """A JWT the agent could make: any header and claims, signed with the session's throwaway key."""
    from oshu_sidecar.gcp import Jwt

    raw = Jwt(
        header, claims, b64url_encode(json.dumps(header).encode()), b64url_encode(json.dumps(claims).encode()), b""
    )
    return resign(raw, _SESSION, SEALED)  # (resign keeps the header but kid; the key is the session's here)


@FUZZ
@given(st.binary(max_size=300))
def test_parse_jwt_answers_a_jwt_or_a_proxy_error(data: bytes) -> None:
    with contextlib.suppress(ProxyError):
        parse_jwt(data, "token")


@FUZZ
@given(st.lists(st.binary(max_size=60), min_size=3, max_size=3))
def test_parse_jwt_of_base64url_segments(parts: list[bytes]) -> None:
    token = b".".join(b64url_encode(p) for p in parts)
    try:
        jwt = parse_jwt(token, "token")
    except ProxyError:
        return
    assert isinstance(jwt.header, dict) and isinstance(jwt.claims, dict)


@pytest.mark.parametrize("depth", [10, 5000])
def test_deeply_nested_json_is_parsed_or_refused_never_a_crash(depth: int) -> None:
    doc = b'{"a":' + b"[" * depth + b"]" * depth + b"}"
    with contextlib.suppress(ProxyError):
        parse_jwt(b64url_encode(doc) + b".e30.AA", "token")
    assert MintedTokens().seal_token_response(doc, "B") is None
    with pytest.raises(ProxyError):
        parse_token_response("OA", 200, doc)


@pytest.mark.parametrize("expires_in", [rb'"\u00b2"', rb'"1\u0661"', b"1e999", b"NaN", b"-Infinity", b"10" * 400])
def test_odd_expires_in_values(expires_in: bytes) -> None:
    body = b'{"access_token":"real-token-123","expires_in":' + expires_in + b"}"
    assert math.isfinite(parse_token_response("OA", 200, body).lifetime)
    assert MintedTokens().seal_token_response(body, "B") is not None


@FUZZ
@given(st.dictionaries(st.sampled_from(["iat", "exp", "iss", "aud", "sub", "scope"]), JSONISH, max_size=6))
def test_claims_the_session_key_signed_are_checked_or_refused(claims: dict[str, object]) -> None:
    """Whatever the agent signs with the throwaway key: refused with a ProxyError, or every check held."""
    token = _session_signed({"alg": "RS256", "typ": "JWT"}, claims)
    now = time.time()
    try:
        out = SIGNER.bearer(token, now)
    except ProxyError:
        return
    assert out is not None
    iat, exp = claims["iat"], claims["exp"]
    assert isinstance(iat, int | float) and isinstance(exp, int | float)
    assert math.isfinite(iat) and math.isfinite(exp) and iat < exp <= iat + 3600 and exp > now - 300
    assert claims["iss"] == EMAIL and claims.get("sub", EMAIL) == EMAIL


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), 10**400])
def test_non_finite_times_are_refused(value: float) -> None:
    now = time.time()
    for claims in ({"iat": value, "exp": now + 60}, {"iat": now, "exp": value}, {"iat": value, "exp": value}):
        with pytest.raises(ProxyError):
            check_window(claims, now, "jwt")


@FUZZ
@given(st.binary(max_size=400))
def test_exchange_bodies(body: bytes) -> None:
    try:
        out = SIGNER.exchange_body(body, time.time())
    except ProxyError:
        return
    assert out is None or isinstance(out, bytes)


@FUZZ
@given(st.text(max_size=200))
def test_exchange_body_with_a_garbage_assertion(assertion: str) -> None:
    body = urlencode({"grant_type": JWT_BEARER_GRANT, "assertion": assertion}).encode()
    with contextlib.suppress(ProxyError):
        SIGNER.exchange_body(body, time.time())


@FUZZ
@given(st.binary(max_size=400), st.sampled_from(["", "application/json", "application/x-www-form-urlencoded"]))
def test_token_responses_are_sealed_or_left_alone(body: bytes, content_type: str) -> None:
    out = MintedTokens().seal_token_response(body, "B", content_type)
    assert out is None or isinstance(out, bytes)


@FUZZ
@given(st.dictionaries(st.sampled_from(["access_token", "refresh_token", "id_token", "expires_in", "x"]), JSONISH))
def test_json_token_responses(doc: dict[str, object]) -> None:
    minted = MintedTokens()
    out = minted.seal_token_response(json.dumps(doc).encode(), "B")
    if out is not None:
        sealed = json.loads(out)
        for name in ("access_token", "refresh_token", "id_token"):
            if isinstance(doc.get(name), str) and len(str(doc[name])) >= 8 and not str(doc[name]).startswith("SEALED_"):
                assert sealed[name].startswith("SEALED_") and minted.lookup(sealed[name], {"B"}) == doc[name]


@FUZZ
@given(st.integers(100, 599), st.binary(max_size=300))
def test_parse_token_response_answers_a_grant_or_token_unavailable(status: int, body: bytes) -> None:
    try:
        grant = parse_token_response("OA", status, body)
    except ProxyError as e:
        assert e.code == "token_unavailable"
        return
    assert 200 <= status < 300 and grant.access_token and grant.lifetime > 0 and math.isfinite(grant.lifetime)


def test_a_non_finite_expires_in_gets_the_default_lifetime() -> None:
    for raw in (b"NaN", b"Infinity", b"1e999"):
        grant = parse_token_response("OA", 200, b'{"access_token":"a","expires_in":' + raw + b"}")
        assert math.isfinite(grant.lifetime)
