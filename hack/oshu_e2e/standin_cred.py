"""The API stand-in's side of the non-static credential kinds (stdlib only: it runs in the test
agent image next to standin_server.py, which imports it).

Independent of the product on purpose: SigV4 is checked by this file's own hmac/hashlib code
(not sidecar/oshu_sidecar/sigv4.py), RS256 by modular exponentiation with the REAL public key's
numbers. The config (``$STANDIN_CONFIG``, JSON) holds the real material the far side knows:

- ``aws``: ``{"access_key_id", "secret_access_key", "session_token"?}``, or a list of them (the
  one whose access key id the request names is checked: a rotation's keys)
- ``oauth2``: ``{"client_id", "client_secret"}`` (a client-credentials token endpoint)
- ``google``: ``{"n", "e" (decimal strings), "kid", "client_email", "token_uri"}`` (jwt-bearer)

:func:`answer` returns (status, JSON body, log fields) for the requests it serves, else None.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: DER prefix of a SHA-256 DigestInfo (PKCS#1 v1.5 signatures, RFC 8017 9.2 note 1).
_SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")
#: Access tokens this process issued (the test reads them back from the log: "issued").
ISSUED: set[str] = set()

Answer = tuple[int, dict[str, Any], dict[str, Any]]


def answer(cfg: Mapping[str, Any], method: str, target: str, headers: Any, body: bytes) -> Answer | None:
    auth = headers.get("authorization") or ""
    if "aws" in cfg and auth.startswith("AWS4-HMAC-SHA256 "):
        keys = cfg["aws"] if isinstance(cfg["aws"], list) else [cfg["aws"]]
        akid = _auth_fields(auth).get("Credential", "").split("/")[0]
        key = next((k for k in keys if k["access_key_id"] == akid), keys[0])
        problem = sigv4_problem(key, method, target, headers, body)
        verdict = {"verified": problem is None, "problem": problem}
        return (200 if problem is None else 403), verdict, {"sigv4": verdict}
    if method == "POST" and target.split("?")[0] == "/token" and ("oauth2" in cfg or "google" in cfg):
        return token_endpoint(cfg, headers, body)
    return None


def bearer_note(headers: Any, cfg: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Log fields for an API request: whether its bearer token is one this stand-in issued, and
    for a JWT (a Google self-signed JWT bearer) what its check with the real key says."""
    scheme, _, token = (headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer":
        return {}
    note: dict[str, Any] = {"bearer_issued": token.strip() in ISSUED}
    if cfg and "google" in cfg and token.count(".") == 2:
        note["jwt_problem"] = assertion_problem(cfg["google"], token.strip(), audience=None)
    return note


# -- SigV4 ---------------------------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def _auth_fields(auth: str) -> dict[str, str]:
    rest = auth.split(" ", 1)[1]
    return {k.strip(): v.strip() for k, _, v in (part.partition("=") for part in rest.split(","))}


def _canonical_uri(path: str, service: str) -> str:
    if service == "s3":  # S3: each segment encoded once
        return "/".join(quote(unquote(seg), safe="-_.~") for seg in path.split("/")) or "/"
    return "/".join(quote(seg, safe="-_.~") for seg in path.split("/")) or "/"  # others: the sent form again


def _canonical_query(query: str) -> str:
    pairs = [
        (quote(unquote(k), safe="-_.~"), quote(unquote(v), safe="-_.~"))
        for k, v in parse_qsl(query, keep_blank_values=True)
    ]
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def _header_value(headers: Any, name: str) -> str:
    values = headers.get_all(name) or []
    return ",".join(" ".join(v.strip().split()) for v in values)


def sigv4_problem(key: Mapping[str, str], method: str, target: str, headers: Any, body: bytes) -> str | None:
    """None when the request's SigV4 header signature verifies with the REAL key, else why not."""
    fields = _auth_fields(headers.get("authorization"))
    akid, day, region, service, terminal = (fields.get("Credential") or "////").split("/", 4)
    if akid != key["access_key_id"]:
        return "access key id is not the real one"
    if terminal != "aws4_request":
        return "bad credential scope"
    signed = (fields.get("SignedHeaders") or "").split(";")
    amz_date = headers.get("x-amz-date") or ""
    if not amz_date.startswith(day):
        return "x-amz-date does not match the credential scope"
    token = key.get("session_token")
    if token and (headers.get("x-amz-security-token") != token or "x-amz-security-token" not in signed):
        return "the real session token is not there (signed)"
    declared = headers.get("x-amz-content-sha256")
    payload = _sha256(body)
    if declared not in (None, "UNSIGNED-PAYLOAD", payload):
        return "x-amz-content-sha256 does not match the body"
    path, _, query = target.partition("?")
    canonical = "\n".join(
        [
            method,
            _canonical_uri(path, service),
            _canonical_query(query),
            "".join(f"{h}:{_header_value(headers, h)}\n" for h in signed),
            ";".join(signed),
            declared or payload,
        ]
    )
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, _sha256(canonical.encode())])
    k = _hmac(("AWS4" + key["secret_access_key"]).encode(), day)
    for part in (region, service, "aws4_request"):
        k = _hmac(k, part)
    expected = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    return None if hmac.compare_digest(expected, fields.get("Signature") or "") else "signature mismatch"


# -- token endpoint ------------------------------------------------------------------------------


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def rs256_valid(n: int, e: int, signing_input: bytes, signature: bytes) -> bool:
    """RSASSA-PKCS1-v1_5 with SHA-256, verified with the public numbers (RFC 8017 8.2.2)."""
    size = (n.bit_length() + 7) // 8
    if len(signature) != size:
        return False
    em = pow(int.from_bytes(signature, "big"), e, n).to_bytes(size, "big")
    t = _SHA256_DIGEST_INFO + hashlib.sha256(signing_input).digest()
    return hmac.compare_digest(em, b"\x00\x01" + b"\xff" * (size - len(t) - 3) + b"\x00" + t)


def assertion_problem(google: Mapping[str, str], assertion: str, audience: str | None = "") -> str | None:
    """None when ``assertion`` is RS256 under the real key id, verifies with the real public key,
    is the account's and current; its ``aud`` must be ``audience`` ("" = the token endpoint,
    None = any: a self-signed JWT names the API)."""
    try:
        head_b64, claims_b64, sig_b64 = assertion.split(".")
        head, claims = json.loads(_b64url(head_b64)), json.loads(_b64url(claims_b64))
        signature = _b64url(sig_b64)
    except ValueError:
        return "not a JWT"
    if head.get("alg") != "RS256" or head.get("kid") != google["kid"]:
        return "not RS256 under the real key id"
    if not rs256_valid(int(google["n"]), int(google["e"]), f"{head_b64}.{claims_b64}".encode(), signature):
        return "signature does not verify with the real public key"
    wanted = google["token_uri"] if audience == "" else audience
    if claims.get("iss") != google["client_email"] or (wanted is not None and claims.get("aud") != wanted):
        return "wrong issuer or audience"
    if not claims.get("iat", 0) - 300 <= time.time() <= claims.get("exp", 0) + 300:
        return "outside its time window"
    return None


def _client(headers: Any, form: Mapping[str, str]) -> tuple[str, str]:
    scheme, _, value = (headers.get("authorization") or "").partition(" ")
    if scheme.lower() == "basic":
        user, _, password = base64.b64decode(value.strip()).decode().partition(":")
        return unquote(user.replace("+", " ")), unquote(password.replace("+", " "))
    return form.get("client_id", ""), form.get("client_secret", "")


def token_endpoint(cfg: Mapping[str, Any], headers: Any, body: bytes) -> Answer:
    form = dict(parse_qsl(body.decode("latin-1"), keep_blank_values=True))
    grant = form.get("grant_type", "")
    if grant == "client_credentials" and "oauth2" in cfg:
        oauth2 = cfg["oauth2"]
        ok = _client(headers, form) == (oauth2["client_id"], oauth2["client_secret"])
        problem = None if ok else "wrong client credentials"
    elif grant == JWT_BEARER and "google" in cfg:
        problem = assertion_problem(cfg["google"], form.get("assertion", ""))
    else:
        problem = "unsupported grant"
    scope = form.get("scope")
    if problem is not None:
        return 400, {"error": "invalid_grant"}, {"grant": grant, "scope": scope, "refused": problem}
    token = "at-real-" + secrets.token_urlsafe(24)
    ISSUED.add(token)
    return (
        200,
        {"access_token": token, "token_type": "Bearer", "expires_in": 3600},
        {"grant": grant, "scope": scope, "issued": token},
    )
