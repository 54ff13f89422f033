"""sigv4.py against botocore's own signers: every generated request that botocore signs with the
sealed credentials verifies, and re-signing it gives exactly what botocore signs with the real ones."""

from __future__ import annotations

import datetime
import hashlib
import random
from unittest import mock
from urllib.parse import quote, urlsplit

import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth, SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials
from botocore.utils import percent_encode_sequence

from oshu_sidecar import sigv4
from oshu_sidecar.errors import ProxyError
from oshu_sidecar.sigv4 import Credentials, Wire

SEALED = Credentials("SEALED_AKIDsealed0001", "SEALED_secretsealedsecretsealed", "SEALED_tokensealed")
REAL = Credentials("AKIAREALREALREAL0001", "rEaLsEcReT/kEy+with/slashes0123456789abc", "FwoGZXIvYXdzEREALTOKEN//+=")
WHEN = datetime.datetime(2026, 11, 30, 2, 30, 5)
NOW = WHEN.replace(tzinfo=datetime.UTC).timestamp()
SEGMENT_CHARS = "abcXYZ019-_.~ :@!$'()*+,;=%é/"


def _boto(c: Credentials) -> BotoCredentials:
    return BotoCredentials(c.access_key_id, c.secret, c.token)


def _sign(
    signer: type[SigV4Auth], creds: Credentials, service: str, region: str, req: AWSRequest, **kw: int
) -> AWSRequest:
    with mock.patch("botocore.auth.get_current_datetime", return_value=WHEN):
        signer(_boto(creds), service, region, **kw).add_auth(req)
    return req


def _wire(req: AWSRequest) -> tuple[Wire, bytes]:
    prepared = req.prepare()
    url = urlsplit(prepared.url)
    headers = [(k, v) for k, v in prepared.headers.items()]
    if not any(k.lower() == "host" for k, _ in headers):
        headers.insert(0, ("Host", url.netloc))
    body = prepared.body or b""
    return Wire(prepared.method, url.path, url.query, headers), body if isinstance(body, bytes) else body.encode()


def _request(rng: random.Random, service: str, region: str, token: bool) -> AWSRequest:
    host = "bucket.s3.us-east-1.amazonaws.com" if service == "s3" else f"{service}.{region}.amazonaws.com"
    segs = ["".join(rng.choice(SEGMENT_CHARS) for _ in range(rng.randint(0, 8))) for _ in range(rng.randint(0, 4))]
    path = "/" + "/".join(quote(s, safe="/~:@!$'()*+,;=") for s in segs)
    params = {
        f"p{rng.randint(0, 9)}{c}": "".join(rng.choice(SEGMENT_CHARS) for _ in range(rng.randint(0, 6)))
        for c in "ab"[: rng.randint(0, 2)]
    }
    url = f"https://{host}{path}" + ("?" + percent_encode_sequence(params) if params else "")
    method = rng.choice(["GET", "PUT", "POST", "DELETE", "HEAD"])
    body = b"" if method in ("GET", "HEAD") else rng.randbytes(rng.randint(0, 300))
    headers = {"Content-Type": rng.choice(["application/json", "text/plain;  charset=utf-8"])}
    if rng.random() < 0.5:
        headers["X-Amz-Meta-Note"] = "  spaced   out\tvalue  "
    if rng.random() < 0.3:
        headers["Accept-Encoding"] = "identity"
    req = AWSRequest(method=method, url=url, data=body, headers=headers)
    if not token:
        req.context["no_token"] = True
    return req


def _cases(n: int) -> list[tuple[str, str, bool, int]]:
    rng = random.Random(11)
    return [
        (
            rng.choice(["s3", "bedrock", "execute-api", "dynamodb"]),
            rng.choice(["us-east-1", "eu-west-3"]),
            rng.random() < 0.6,
            i,
        )
        for i in range(n)
    ]


@pytest.mark.parametrize(("service", "region", "token", "seed"), _cases(160))
def test_header_signatures_verify_and_resign_like_botocore(service: str, region: str, token: bool, seed: int) -> None:
    rng = random.Random(seed)
    signer = S3SigV4Auth if service == "s3" else SigV4Auth
    sealed = SEALED if token else Credentials(SEALED.access_key_id, SEALED.secret)
    real = REAL if token else Credentials(REAL.access_key_id, REAL.secret)
    wire, body = _wire(_sign(signer, sealed, service, region, _request(rng, service, region, token)))
    sig = sigv4.parse_signature(wire.headers, wire.query)
    assert sig is not None and not sig.presigned and sig.service == service and sig.region == region
    sigv4.check_date(sig, NOW + 60)
    payload = sigv4.declared_payload(wire, sig) or hashlib.sha256(body).hexdigest()
    sigv4.verify(wire, sig, sealed, payload)
    # the reference: botocore signing the same request with the real key at the same moment
    expected, _ = _wire(_sign(signer, real, service, region, _request(random.Random(seed), service, region, token)))
    forwarded = [(n, real.token if n.lower() == "x-amz-security-token" and real.token else v) for n, v in wire.headers]
    new_sig, auth = sigv4.resign_headers(Wire(wire.method, wire.path, wire.query, forwarded), sig, real, payload)
    assert auth == sigv4.header(expected.headers, "authorization")
    assert new_sig.access_key_id == real.access_key_id
    # another secret, an altered path, query or header: refused
    for bad in (Credentials(sealed.access_key_id, sealed.secret + "x", sealed.token),):
        with pytest.raises(ProxyError) as e:
            sigv4.verify(wire, sig, bad, payload)
        assert e.value.code == "signature_invalid"
    altered = [
        Wire(wire.method, wire.path + "x", wire.query, wire.headers),
        Wire(wire.method, wire.path, wire.query + "&z=1", wire.headers),
        Wire(
            wire.method,
            wire.path,
            wire.query,
            [(n, v + "x" if n.lower() == "x-amz-date" else v) for n, v in wire.headers],
        ),
    ]
    for w in altered:
        with pytest.raises(ProxyError):
            sigv4.verify(w, sig, sealed, payload)


@pytest.mark.parametrize(("service", "region", "token", "seed"), _cases(60))
def test_presigned_urls_verify_and_resign_like_botocore(service: str, region: str, token: bool, seed: int) -> None:
    signer = S3SigV4QueryAuth if service == "s3" else SigV4QueryAuth
    sealed = SEALED if token else Credentials(SEALED.access_key_id, SEALED.secret)
    real = REAL if token else Credentials(REAL.access_key_id, REAL.secret)

    def make() -> AWSRequest:
        req = _request(random.Random(seed), service, region, token)
        req.method, req.data = "GET", b""
        return req

    wire, body = _wire(_sign(signer, sealed, service, region, make(), expires=900))
    sig = sigv4.parse_signature(wire.headers, wire.query)
    assert sig is not None and sig.presigned and sig.expires == 900
    payload = sigv4.declared_payload(wire, sig) or hashlib.sha256(body).hexdigest()
    sigv4.verify(wire, sig, sealed, payload)
    sigv4.check_date(sig, NOW + 899)
    with pytest.raises(ProxyError) as e:
        sigv4.check_date(sig, NOW + 901)
    assert e.value.code == "signature_expired"
    expected, _ = _wire(_sign(signer, real, service, region, make(), expires=900))
    assert sigv4.resign_query(wire, sig, real, payload) == expected.query


def test_dates_outside_fifteen_minutes_are_expired() -> None:
    req = _sign(
        SigV4Auth,
        SEALED,
        "bedrock",
        "us-east-1",
        AWSRequest(method="GET", url="https://bedrock.us-east-1.amazonaws.com/"),
    )
    wire, _ = _wire(req)
    sig = sigv4.parse_signature(wire.headers, wire.query)
    assert sig is not None
    for ok in (NOW - 900, NOW + 900):
        sigv4.check_date(sig, ok)
    for late in (NOW - 901, NOW + 901):
        with pytest.raises(ProxyError) as e:
            sigv4.check_date(sig, late)
        assert e.value.code == "signature_expired" and e.value.status == 403


@pytest.mark.parametrize(
    "auth",
    [
        "AWS4-HMAC-SHA256 Credential=A/20261130/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=zz",
        "AWS4-HMAC-SHA256 Credential=A/20261130/us-east-1/s3, SignedHeaders=host, Signature=" + "a" * 64,
        "AWS4-HMAC-SHA256 Credential=A/20261130/us-east-1/s3/aws4_request, SignedHeaders=x-amz-date, Signature="
        + "a" * 64,
        "AWS4-HMAC-SHA256 Credential=A/20261130/us-east-1/s3/aws4_request, SignedHeaders=x-amz-date;host, Signature="
        + "a" * 64,
        "AWS4-HMAC-SHA256 Credential=A/20261129/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=" + "a" * 64,
        "AWS AKIA:abc",
        "AWS4-HMAC-SHA1 Credential=x",
    ],
)
def test_malformed_signatures_are_invalid(auth: str) -> None:
    headers = [("Host", "h"), ("Authorization", auth), ("X-Amz-Date", "20261130T023005Z")]
    with pytest.raises(ProxyError) as e:
        sigv4.parse_signature(headers, "")
    assert e.value.code == "signature_invalid"


def test_requests_without_sigv4_are_not_claimed() -> None:
    assert sigv4.parse_signature([("Host", "h")], "a=1") is None
    assert sigv4.parse_signature([("Host", "h"), ("Authorization", "Bearer x")], "") is None


def test_secret_never_in_repr() -> None:
    assert REAL.secret not in repr(REAL) and (REAL.token or "") not in repr(REAL)


@pytest.mark.parametrize(
    "stamp", ["20261330T000000Z", "20261130T250000Z", "20261130T236000Z", "2026-11-30T00:00:00Z", ""]
)
def test_bad_dates_are_invalid(stamp: str) -> None:
    with pytest.raises(ProxyError) as e:
        sigv4.parse_amz_date(stamp)
    assert e.value.code == "signature_invalid"


def test_dates_parse_to_epoch_seconds() -> None:
    assert sigv4.parse_amz_date("20261130T023005Z") == NOW
