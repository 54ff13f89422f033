"""Requests the sidecar must refuse with a JSON error and forward nothing: another secret, a stale
date, a replay, a tampered body, a tampered signed chunk; and the signed aws-chunked upload
(STREAMING-AWS4-HMAC-SHA256-PAYLOAD) re-signed chunk by chunk. Signed here with botocore."""

from __future__ import annotations

import datetime
import hashlib
import hmac
from unittest import mock

import pytest
import requests
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from oshu_contract.session import SecretBinding
from oshu_testkit.aws_standin import AwsStandIn
from oshu_testkit.sidecar_process import SidecarProcess

S3 = "https://bucket.s3.us-east-1.amazonaws.com"
EMPTY = hashlib.sha256(b"").hexdigest()


def sealed(binding: SecretBinding, secret: str | None = None) -> Credentials:
    f = binding.sealed_fields
    return Credentials(binding.sealed, secret or f["secretAccessKey"], f.get("sessionToken"))


def signed_put(creds: Credentials, key: str, body: bytes, when: datetime.datetime | None = None) -> AWSRequest:
    req = AWSRequest(method="PUT", url=f"{S3}/{key}", data=body, headers={"Content-Type": "text/plain"})
    with mock.patch(
        "botocore.auth.get_current_datetime",
        return_value=when or datetime.datetime.now(datetime.UTC).replace(tzinfo=None),
    ):
        S3SigV4Auth(creds, "s3", "us-east-1").add_auth(req)
    return req


def send(sc: SidecarProcess, saw: dict[str, bytes], req: AWSRequest, body: bytes | None = None) -> requests.Response:
    r = requests.request(
        req.method,
        req.url,
        headers=dict(req.headers.items()),
        data=req.body if body is None else body,
        proxies={"https": sc.proxy_url},
        verify=str(sc.ca_cert_file),
        timeout=60,
    )
    saw[f"{req.method} {req.url} #{len(saw)}"] = repr(r.headers).encode() + r.content
    return r


def refused(r: requests.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"] == "application/json" and r.json()["error"]["code"] == code


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_the_stand_in_rejects_the_sealed_key_itself(aws: AwsStandIn, binding: SecretBinding) -> None:
    """The check can fail: a request signed with the sealed key, sent straight to the stand-in
    (by address, so its certificate's names cannot match: not verified here)."""
    req = signed_put(sealed(binding), "direct.txt", b"x").prepare()
    r = requests.put(
        f"https://127.0.0.1:{aws.port}/direct.txt",
        headers={**dict(req.headers.items()), "Host": "bucket.s3.us-east-1.amazonaws.com"},
        data=b"x",
        verify=False,
        timeout=30,
    )
    assert r.status_code == 403 and aws.failures
    aws.failures.clear()


def test_a_verified_request_goes_through(
    sidecar: SidecarProcess, aws: AwsStandIn, binding: SecretBinding, agent_saw: dict[str, bytes]
) -> None:
    assert send(sidecar, agent_saw, signed_put(sealed(binding), "ok.txt", b"fine")).status_code == 200
    assert aws.objects["ok.txt"] == b"fine"


@pytest.mark.parametrize(
    ("make", "status", "code"),
    [
        (lambda b: signed_put(sealed(b, "SEALED_not-the-session-secret"), "k", b"x"), 403, "signature_invalid"),
        (lambda b: signed_put(Credentials("AKIAFOREIGNKEY000000", "foreign"), "k", b"x"), 403, "signature_invalid"),
        (
            lambda b: signed_put(
                sealed(b),
                "k",
                b"x",
                datetime.datetime.now(datetime.UTC).replace(tzinfo=None) - datetime.timedelta(minutes=16),
            ),
            403,
            "signature_expired",
        ),
        (
            lambda b: signed_put(
                sealed(b),
                "k",
                b"x",
                datetime.datetime.now(datetime.UTC).replace(tzinfo=None) + datetime.timedelta(minutes=16),
            ),
            403,
            "signature_expired",
        ),
    ],
    ids=["wrong-sealed-secret", "foreign-access-key", "stale-date", "future-date"],
)
def test_refused_and_nothing_forwarded(
    make: object,
    status: int,
    code: str,
    sidecar: SidecarProcess,
    aws: AwsStandIn,
    binding: SecretBinding,
    agent_saw: dict[str, bytes],
) -> None:
    assert callable(make)
    before = len(aws.requests)
    refused(send(sidecar, agent_saw, make(binding)), status, code)
    assert len(aws.requests) == before


def test_replay_refused(
    sidecar: SidecarProcess, aws: AwsStandIn, binding: SecretBinding, agent_saw: dict[str, bytes]
) -> None:
    req = signed_put(sealed(binding), "replay.txt", b"once")
    assert send(sidecar, agent_saw, req).status_code == 200
    before = len(aws.requests)
    refused(send(sidecar, agent_saw, req), 403, "signature_replayed")
    assert len(aws.requests) == before


def test_an_identical_retry_after_a_retryable_failure_is_not_a_replay(
    sidecar: SidecarProcess, aws: AwsStandIn, binding: SecretBinding, agent_saw: dict[str, bytes]
) -> None:
    """An SDK retrying a throttled request within the same second signs the very same request:
    it goes through once more; once served, the same signature is a replay again."""
    aws.fail_once.add("throttled.txt")
    req = signed_put(sealed(binding), "throttled.txt", b"again")
    assert send(sidecar, agent_saw, req).status_code == 503
    assert send(sidecar, agent_saw, req).status_code == 200
    assert aws.objects["throttled.txt"] == b"again"
    refused(send(sidecar, agent_saw, req), 403, "signature_replayed")


def test_tampered_body_refused(
    sidecar: SidecarProcess, aws: AwsStandIn, binding: SecretBinding, agent_saw: dict[str, bytes]
) -> None:
    req = signed_put(sealed(binding), "tamper.txt", b"pay 10 EUR")
    before = len(aws.requests)
    refused(send(sidecar, agent_saw, req, body=b"pay 99 EUR"), 400, "payload_hash_mismatch")
    assert len(aws.requests) == before and "tamper.txt" not in aws.objects


def _chain(creds: Credentials, stamp: str, seed: str, pieces: list[bytes], trailer: bytes | None) -> list[str]:
    """The chunk signatures (and the trailer's, last) of an aws-chunked body, chained from `seed`."""
    k = hmac.new(("AWS4" + creds.secret_key).encode(), stamp[:8].encode(), hashlib.sha256).digest()
    for part in ("us-east-1", "s3", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    scope, prev, out = f"{stamp[:8]}/us-east-1/s3/aws4_request", seed, []
    for p in pieces:
        sts = "\n".join(("AWS4-HMAC-SHA256-PAYLOAD", stamp, scope, prev, EMPTY, hashlib.sha256(p).hexdigest()))
        prev = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
        out.append(prev)
    if trailer is not None:
        name, value = trailer.split(b":", 1)
        canonical = hashlib.sha256(name.lower() + b":" + value.strip() + b"\n").hexdigest()
        sts = "\n".join(("AWS4-HMAC-SHA256-TRAILER", stamp, scope, prev, canonical))
        out.append(hmac.new(k, sts.encode(), hashlib.sha256).hexdigest())
    return out


def _frame(pieces: list[bytes], sigs: list[str], trailer: bytes | None, tamper: bool) -> bytes:
    body = b""
    for i, p in enumerate(pieces):
        sent = p if not (tamper and i == len(pieces) - 2) else bytes([p[0] ^ 1]) + p[1:]
        body += f"{len(p):x};chunk-signature={sigs[i]}\r\n".encode() + sent
        body += b"\r\n" if (p or trailer is None) else b""
    if trailer is not None:
        body += trailer + b"\r\nx-amz-trailer-signature:" + sigs[-1].encode() + b"\r\n\r\n"
    return body


def _chunked(
    creds: Credentials, key: str, data: bytes, size: int, tamper: bool = False, trailer: bytes | None = None
) -> tuple[AWSRequest, bytes]:
    """A STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER] upload: head signed by botocore, chunks chained here."""
    pieces = [data[i : i + size] for i in range(0, len(data), size)] + [b""]
    length = len(_frame(pieces, ["0" * 64] * (len(pieces) + 1), trailer, False))
    headers = {
        "Content-Encoding": "aws-chunked",
        "X-Amz-Content-SHA256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD" + ("-TRAILER" if trailer else ""),
        "X-Amz-Decoded-Content-Length": str(len(data)),
        "Content-Length": str(length),
    }
    if trailer is not None:
        headers["X-Amz-Trailer"] = trailer.split(b":", 1)[0].decode()
    req = AWSRequest(method="PUT", url=f"{S3}/{key}", headers=headers)
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    with mock.patch("botocore.auth.get_current_datetime", return_value=now):
        SigV4Auth(creds, "s3", "us-east-1").add_auth(req)
    seed = req.headers["Authorization"].rsplit("Signature=", 1)[1]
    body = _frame(pieces, _chain(creds, req.headers["X-Amz-Date"], seed, pieces, trailer), trailer, tamper)
    assert len(body) == length
    return req, body


@pytest.mark.parametrize(
    ("size", "chunk", "trailer"),
    [
        (1 << 20, 65536, None),
        (300, 128, None),
        (1 << 20, 65536, b"x-amz-checksum-crc32:AAAAAA=="),
        (300, 128, b"x-amz-checksum-crc32:BBBBBB=="),
    ],
    ids=["streamed-1MiB", "whole-300B", "streamed-1MiB-trailer", "whole-300B-trailer"],
)
def test_signed_chunked_upload_resigned_per_chunk(
    size: int,
    chunk: int,
    trailer: bytes | None,
    sidecar: SidecarProcess,
    aws: AwsStandIn,
    binding: SecretBinding,
    agent_saw: dict[str, bytes],
) -> None:
    """Streamed as it arrives (1 MiB) or arrived whole with its head (300 bytes): re-signed either way."""
    data = (bytes(range(256)) * (size // 256 + 1))[:size]
    req, body = _chunked(sealed(binding), f"signed-{size}.bin", data, chunk, trailer=trailer)
    r = send(sidecar, agent_saw, req, body=body)
    assert r.status_code == 200, r.text
    assert aws.objects[f"signed-{size}.bin"] == data


@pytest.mark.parametrize(("size", "chunk"), [(300_000, 65536), (300, 128)], ids=["streamed", "whole"])
def test_tampered_chunk_stops_the_upload(
    size: int, chunk: int, sidecar: SidecarProcess, aws: AwsStandIn, binding: SecretBinding, agent_saw: dict[str, bytes]
) -> None:
    # the last data chunk is altered: the client has sent its whole body when the proxy answers
    req, body = _chunked(sealed(binding), "bad-chunks.bin", b"z" * size, chunk, tamper=True)
    refused(send(sidecar, agent_saw, req, body=body), 403, "signature_invalid")
    assert "bad-chunks.bin" not in aws.objects


@pytest.mark.parametrize("action", ["GetSessionToken", "AssumeRole", "GetFederationToken"], ids=lambda a: a)
def test_sts_calls_that_mint_credentials_are_refused(
    action: str, sidecar: SidecarProcess, aws: AwsStandIn, binding: SecretBinding, agent_saw: dict[str, bytes]
) -> None:
    body = f"Action={action}&Version=2011-06-15&RoleArn=arn%3Aaws%3Aiam%3A%3A1%3Arole%2Fx&RoleSessionName=s".encode()
    req = AWSRequest(
        method="POST",
        url="https://sts.us-east-1.amazonaws.com/",
        data=body,
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
    )
    with mock.patch(
        "botocore.auth.get_current_datetime", return_value=datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    ):
        SigV4Auth(sealed(binding), "sts", "us-east-1").add_auth(req)
    before = len(aws.requests)
    refused(send(sidecar, agent_saw, req), 403, "credential_denied")
    assert len(aws.requests) == before


def test_metrics_count_resigned_requests_and_refusals_by_code(
    sidecar: SidecarProcess, aws: AwsStandIn, binding: SecretBinding, agent_saw: dict[str, bytes]
) -> None:
    """Each re-signed request counts as a use of the secret on its host pattern; refusals by code."""
    host = "*.s3.us-east-1.amazonaws.com"
    before = sidecar.metric("oshu_substitutions_total", secret="AWS", host=host) or 0
    refused_before = sidecar.metric("oshu_refusals_total", reason="signature_invalid") or 0
    assert send(sidecar, agent_saw, signed_put(sealed(binding), "counted.txt", b"1")).status_code == 200
    send(sidecar, agent_saw, signed_put(sealed(binding, "SEALED_wrong"), "counted.txt", b"1"))
    assert sidecar.metric("oshu_substitutions_total", secret="AWS", host=host) == before + 1
    assert sidecar.metric("oshu_refusals_total", reason="signature_invalid") == refused_before + 1
