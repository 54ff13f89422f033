"""The running-pod API stand-in's own credential checks (hack/oshu_e2e/standin_cred.py), held
against botocore's signers and cryptography's RSA: tests/pods/test_credential_pods.py trusts
its verdicts, so they must accept what real signers make with the real key and nothing else."""

from __future__ import annotations

import base64
import email.message
import json
import time
from typing import Any

import pytest
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from oshu_e2e import standin_cred as sc
from oshu_testkit.credential_material import AwsKey

HOST = "bedrock-runtime.api.svc.cluster.local"
REQUESTS = [
    ("bedrock", SigV4Auth, "POST", "/model/anthropic.claude-v2/invoke", b'{"prompt": "hi"}'),
    ("bedrock", SigV4Auth, "POST", "/model/anthropic.claude-3%3A0/invoke?b=2&a=1%3A&a=0", b"{}"),
    ("s3", S3SigV4Auth, "PUT", "/bucket/a%20b~c.txt?x-id=PutObject", b"hello" * 1000),
    ("s3", S3SigV4Auth, "GET", "/bucket/?list-type=2&prefix=x%2Fy", b""),
]


def _signed(
    key: AwsKey, service: str, signer: Any, method: str, target: str, body: bytes, token: bool = True
) -> tuple[email.message.Message, str]:
    req = AWSRequest(method, f"https://{HOST}{target}", data=body, headers={"content-type": "application/json"})
    creds = Credentials(key.access_key_id, key.secret_access_key, key.session_token if token else None)
    signer(creds, service, "us-east-1").add_auth(req)
    prepared = req.prepare()
    headers = email.message.Message()
    for name, value in prepared.headers.items():
        headers[name] = value
    headers["host"] = HOST
    return headers, prepared.url.split(HOST, 1)[1]


def _config(key: AwsKey) -> dict[str, str]:
    return {
        "access_key_id": key.access_key_id,
        "secret_access_key": key.secret_access_key,
        "session_token": key.session_token,
    }


@pytest.mark.parametrize(("service", "signer", "method", "target", "body"), REQUESTS)
def test_sigv4_check_accepts_botocore_with_the_real_key_only(
    service: str, signer: Any, method: str, target: str, body: bytes
) -> None:
    key, other = AwsKey(), AwsKey()
    headers, sent = _signed(key, service, signer, method, target, body)
    assert sc.sigv4_problem(_config(key), method, sent, headers, body) is None
    assert sc.sigv4_problem({**_config(key), "secret_access_key": other.secret_access_key}, method, sent, headers, body)
    assert sc.sigv4_problem(_config(other), method, sent, headers, body) == "access key id is not the real one"
    assert sc.sigv4_problem(_config(key), method, sent, headers, body + b"x") is not None
    assert sc.sigv4_problem(_config(key), "DELETE", sent, headers, body) == "signature mismatch"
    no_token, sent = _signed(key, service, signer, method, target, body, token=False)
    assert (
        sc.sigv4_problem(_config(key), method, sent, no_token, body) == "the real session token is not there (signed)"
    )
    answer = sc.answer({"aws": [_config(other), _config(key)]}, method, sent, headers, body)
    assert answer is not None and answer[0] == 200 and answer[2]["sigv4"]["verified"] is True


def _jwt(key: rsa.RSAPrivateKey, head: dict[str, Any], claims: dict[str, Any]) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = f"{b64(json.dumps(head).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256()))}"


def test_assertion_check_verifies_rs256_with_the_real_public_key_only() -> None:
    real, other = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2))
    numbers = real.public_key().public_numbers()
    google = {
        "n": str(numbers.n),
        "e": str(numbers.e),
        "kid": "kid-real",
        "client_email": "a@b",
        "token_uri": "https://t/token",
    }
    now = int(time.time())
    head, claims = (
        {"alg": "RS256", "kid": "kid-real"},
        {"iss": "a@b", "aud": "https://t/token", "iat": now, "exp": now + 3600},
    )
    assert sc.assertion_problem(google, _jwt(real, head, claims)) is None
    assert (
        sc.assertion_problem(google, _jwt(other, head, claims)) == "signature does not verify with the real public key"
    )
    assert sc.assertion_problem(google, _jwt(real, {**head, "kid": "SEALED_x"}, claims)) is not None
    assert sc.assertion_problem(google, _jwt(real, {**head, "alg": "none"}, claims)) is not None
    assert sc.assertion_problem(google, _jwt(real, head, {**claims, "aud": "https://other/token"})) is not None
    assert sc.assertion_problem(google, _jwt(real, head, {**claims, "iat": now - 7200, "exp": now - 3600})) is not None
    assert sc.assertion_problem(google, "a.b") == "not a JWT"


def test_token_endpoint_checks_client_credentials() -> None:
    cfg = {"oauth2": {"client_id": "id", "client_secret": "s3cr:et"}}
    good, bad = email.message.Message(), email.message.Message()
    good["authorization"] = "Basic " + base64.b64encode(b"id:s3cr%3Aet").decode()
    bad["authorization"] = "Basic " + base64.b64encode(b"id:wrong").decode()
    status, body, log = sc.token_endpoint(cfg, good, b"grant_type=client_credentials")
    assert status == 200 and log["issued"] == body["access_token"] in sc.ISSUED
    bearer = email.message.Message()
    bearer["authorization"] = f"Bearer {body['access_token']}"
    assert sc.bearer_note(bearer) == {"bearer_issued": True}
    assert sc.token_endpoint(cfg, bad, b"grant_type=client_credentials")[0] == 400
    assert sc.token_endpoint(cfg, good, b"grant_type=password")[0] == 400


def test_bearer_note_checks_a_self_signed_jwt_with_the_real_key() -> None:
    real, other = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2))
    numbers = real.public_key().public_numbers()
    cfg = {"google": {"n": str(numbers.n), "e": str(numbers.e), "kid": "k", "client_email": "a@b", "token_uri": "t"}}
    now = int(time.time())
    head, claims = (
        {"alg": "RS256", "kid": "k"},
        {"iss": "a@b", "aud": "https://api.example/", "iat": now, "exp": now + 60},
    )
    for key, verdict in ((real, None), (other, "signature does not verify with the real public key")):
        headers = email.message.Message()
        headers["authorization"] = f"Bearer {_jwt(key, head, claims)}"
        assert sc.bearer_note(headers, cfg) == {"bearer_issued": False, "jwt_problem": verdict}
