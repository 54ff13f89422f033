"""gcp.py without sockets: google-auth's own signer makes the agent's JWTs; the re-signed ones
verify with google-auth's verifier and the REAL public key only."""

from __future__ import annotations

import json
import time
from urllib.parse import parse_qsl, urlencode

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import crypt
from google.auth import jwt as gjwt

from oshu_contract.tokens import new_sealed_token
from oshu_sidecar.errors import ProxyError
from oshu_sidecar.gcp import (
    JWT_BEARER_GRANT,
    MAX_LIFETIME,
    ServiceAccountSigner,
    b64url_decode,
    b64url_encode,
    looks_like_jwt,
    parse_jwt,
)

EMAIL = "agent@project.iam.gserviceaccount.com"
TOKEN_URI = "https://oauth2.googleapis.com/token"


def _pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _public_pem(key: rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.fixture(scope="module")
def keys() -> dict[str, rsa.RSAPrivateKey]:
    return {n: rsa.generate_private_key(public_exponent=65537, key_size=2048) for n in ("real", "session", "other")}


@pytest.fixture(scope="module")
def signer(keys: dict[str, rsa.RSAPrivateKey]) -> ServiceAccountSigner:
    return ServiceAccountSigner("GCP", SEALED_KID, _fields(keys))


SEALED_KID = new_sealed_token()
REAL_KID = "0123456789abcdef0123456789abcdef01234567"


def _fields(keys: dict[str, rsa.RSAPrivateKey]) -> dict[str, str]:
    return {
        "privateKey": _pem(keys["real"]),
        "privateKeyId": REAL_KID,
        "clientEmail": EMAIL,
        "tokenUri": TOKEN_URI,
        "sessionPublicKey": _public_pem(keys["session"]),
    }


def _agent_jwt(key: rsa.RSAPrivateKey, kid: str = SEALED_KID, **claims: object) -> bytes:
    """A JWT the way google-auth's service_account.Credentials makes its assertion."""
    now = int(time.time())
    payload: dict[str, object] = {"iat": now, "exp": now + 3600, "iss": EMAIL, "aud": TOKEN_URI, "scope": "x"}
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    return gjwt.encode(crypt.RSASigner.from_string(_pem(key), key_id=kid), payload)


def _verify_real(
    token: bytes, keys: dict[str, rsa.RSAPrivateKey], audience: str | None = TOKEN_URI
) -> dict[str, object]:
    claims: dict[str, object] = gjwt.decode(token, certs=_public_pem(keys["real"]), audience=audience)
    return claims


def test_the_exchange_body_gets_an_assertion_signed_by_the_real_key(
    keys: dict[str, rsa.RSAPrivateKey], signer: ServiceAccountSigner
) -> None:
    agent = _agent_jwt(keys["session"])
    body = urlencode({"grant_type": JWT_BEARER_GRANT, "assertion": agent.decode()}).encode()
    out = signer.exchange_body(body, time.time())
    assert out is not None
    form = dict(parse_qsl(out.decode()))
    assert form["grant_type"] == JWT_BEARER_GRANT
    real = form["assertion"].encode()
    assert _verify_real(real, keys)["iss"] == EMAIL
    assert json.loads(b64url_decode(real.split(b".")[0]))["kid"] == REAL_KID
    assert real.split(b".")[1] == agent.split(b".")[1]  # the claims pass byte for byte
    with pytest.raises(ValueError):  # and the throwaway key no longer verifies it
        gjwt.decode(real, certs=_public_pem(keys["session"]), audience=TOKEN_URI)


@pytest.mark.parametrize(
    ("key", "kid", "claims", "code"),
    [
        ("other", SEALED_KID, {}, "assertion_invalid"),  # signed by another key
        ("real", SEALED_KID, {}, "assertion_invalid"),  # even the real key: the agent never has it
        ("other", "some-kid", {}, "assertion_invalid"),  # our issuer, another kid: still ours to check
        ("session", SEALED_KID, {"iss": "someone@else.iam.gserviceaccount.com"}, "assertion_invalid"),
        ("session", SEALED_KID, {"aud": "https://evil.example/token"}, "assertion_invalid"),
        ("session", SEALED_KID, {"sub": "admin@corp.example"}, "assertion_invalid"),
        ("session", SEALED_KID, {"iat": None}, "assertion_invalid"),
        ("session", SEALED_KID, {"exp": int(time.time()) + MAX_LIFETIME * 5}, "assertion_invalid"),
        ("session", SEALED_KID, {"iat": int(time.time()) - 7200, "exp": int(time.time()) - 3700}, "assertion_expired"),
        ("session", SEALED_KID, {"iat": int(time.time()) + 3000, "exp": int(time.time()) + 3600}, "assertion_expired"),
    ],
)
def test_an_assertion_that_is_not_the_sessions_is_refused(
    keys: dict[str, rsa.RSAPrivateKey],
    signer: ServiceAccountSigner,
    key: str,
    kid: str,
    claims: dict[str, object],
    code: str,
) -> None:
    agent = _agent_jwt(keys[key], kid, **claims)
    body = urlencode({"grant_type": JWT_BEARER_GRANT, "assertion": agent.decode()}).encode()
    with pytest.raises(ProxyError) as e:
        signer.exchange_body(body, time.time())
    assert e.value.code == code and e.value.status == 403
    assert agent.decode() not in e.value.message


def test_alg_none_and_hs256_are_refused(keys: dict[str, rsa.RSAPrivateKey], signer: ServiceAccountSigner) -> None:
    good = _agent_jwt(keys["session"])
    for alg in ("none", "HS256"):
        header = b64url_encode(json.dumps({"alg": alg, "typ": "JWT", "kid": SEALED_KID}).encode())
        forged = header + b"." + good.split(b".")[1] + b"." + good.split(b".")[2]
        body = urlencode({"grant_type": JWT_BEARER_GRANT, "assertion": forged.decode()}).encode()
        with pytest.raises(ProxyError, match="RS256"):
            signer.exchange_body(body, time.time())


def test_bodies_that_are_not_ours_pass_untouched(
    keys: dict[str, rsa.RSAPrivateKey], signer: ServiceAccountSigner
) -> None:
    now = time.time()
    assert signer.exchange_body(b"grant_type=refresh_token&refresh_token=abc", now) is None
    assert signer.exchange_body(b"\xff\xfe", now) is None
    other_account = _agent_jwt(keys["other"], "kid-2", iss="other@p.iam.gserviceaccount.com")
    body = urlencode({"grant_type": JWT_BEARER_GRANT, "assertion": other_account.decode()}).encode()
    assert signer.exchange_body(body, now) is None
    two = urlencode([("grant_type", JWT_BEARER_GRANT), ("assertion", "a"), ("assertion", "b")]).encode()
    with pytest.raises(ProxyError, match="exactly one"):
        signer.exchange_body(two, now)
    garbage = urlencode({"grant_type": JWT_BEARER_GRANT, "assertion": "eyJ.x.y"}).encode()
    with pytest.raises(ProxyError, match="well-formed"):
        signer.exchange_body(garbage, now)


def test_a_self_signed_jwt_bearer_is_resigned(keys: dict[str, rsa.RSAPrivateKey], signer: ServiceAccountSigner) -> None:
    aud = "https://aiplatform.googleapis.com/"
    agent = _agent_jwt(keys["session"], aud=aud, scope=None, sub=EMAIL)
    real = signer.bearer(agent, time.time())
    assert real is not None and _verify_real(real, keys, audience=aud)["sub"] == EMAIL
    assert signer.bearer(b"ya29.not-a-jwt", time.time()) is None
    assert signer.bearer(b"eyJhbGciOi.broken.x", time.time()) is None
    foreign = _agent_jwt(keys["other"], "kid-2", iss="other@p.iam.gserviceaccount.com", aud=aud)
    assert signer.bearer(foreign, time.time()) is None
    with pytest.raises(ProxyError):
        signer.bearer(_agent_jwt(keys["other"], aud=aud), time.time())
    with pytest.raises(ProxyError, match="audience or a scope"):
        signer.bearer(_agent_jwt(keys["session"], aud=None, scope=None), time.time())


def test_parsing_rejects_what_is_not_a_compact_jws() -> None:
    for bad in (b"a.b", b"a.b.c.d", b"!!.e30.e30", b"W10.e30.e30", b"e30.W10.e30", b"e30.e30.A"):
        with pytest.raises(ProxyError):
            parse_jwt(bad, "token")
    assert not looks_like_jwt(b"ey" + b"a" * 20000 + b".b.c")
    with pytest.raises(ProxyError):
        parse_jwt(b"e30.e30.", "token")


def test_bad_key_material_fails_at_load(keys: dict[str, rsa.RSAPrivateKey]) -> None:
    fields = _fields(keys)
    with pytest.raises(ValueError, match="privateKey"):
        ServiceAccountSigner("GCP", SEALED_KID, {**fields, "privateKey": "not a key"})
    with pytest.raises(ValueError, match="sessionPublicKey"):
        ServiceAccountSigner("GCP", SEALED_KID, {**fields, "sessionPublicKey": "not a key"})


def test_a_reused_self_signed_jwt_is_resigned_once_and_still_expires(
    keys: dict[str, rsa.RSAPrivateKey], signer: ServiceAccountSigner
) -> None:
    agent = _agent_jwt(keys["session"], aud="https://aiplatform.googleapis.com/", scope=None)
    now = time.time()
    first = signer.bearer(agent, now)
    assert first is not None and signer.bearer(agent, now + 60) is first  # the cached re-signature
    with pytest.raises(ProxyError) as e:
        signer.bearer(agent, now + MAX_LIFETIME + 600)
    assert e.value.code == "assertion_expired"
