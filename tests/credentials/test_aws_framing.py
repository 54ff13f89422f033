"""Body framings on the way through the AWS handler, over a raw socket: a chunked body the handler
must hash (buffered, then forwarded), a body over the buffer limit (refused before it is read),
and a request with no signature at all (not the handler's: forwarded untouched)."""

from __future__ import annotations

import datetime
import json
from unittest import mock

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from oshu_contract.session import SecretBinding
from oshu_sidecar.credentials import BODY_LIMIT
from oshu_testkit.aws_standin import AwsStandIn
from oshu_testkit.rawclient import RawClient, RawResponse
from oshu_testkit.sidecar_process import SidecarProcess

from .conftest import BEDROCK

PATH = "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/invoke"


def _signed_headers(binding: SecretBinding, body: bytes, extra: dict[str, str]) -> list[tuple[str, str]]:
    f = binding.sealed_fields
    req = AWSRequest(
        method="POST", url=f"https://{BEDROCK}{PATH}", data=body, headers={"Content-Type": "application/json", **extra}
    )
    with mock.patch(
        "botocore.auth.get_current_datetime", return_value=datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    ):
        SigV4Auth(
            Credentials(binding.sealed, f["secretAccessKey"], f.get("sessionToken")), "bedrock", "us-east-1"
        ).add_auth(req)
    return [("Host", BEDROCK), *req.headers.items()]


def _raw(sc: SidecarProcess, saw: dict[str, bytes], headers: list[tuple[str, str]], body: bytes) -> RawResponse:
    with RawClient(sc.listen) as c:
        assert c.connect(f"{BEDROCK}:443").status == 200
        c.start_tls(BEDROCK, sc.ca_cert_file)
        head = f"POST {PATH} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
        c.send(head.encode() + body)
        r = c.response("POST")
    saw[f"raw #{len(saw)}"] = r.raw_head + r.body
    return r


def test_chunked_body_hashed_and_forwarded(
    sidecar: SidecarProcess, aws: AwsStandIn, binding: SecretBinding, agent_saw: dict[str, bytes]
) -> None:
    payload = json.dumps(
        {"anthropic_version": "bedrock-2023-05-31", "messages": [{"role": "user", "content": "x" * 5000}]}
    ).encode()
    headers = [(k, v) for k, v in _signed_headers(binding, payload, {}) if k.lower() != "content-length"]
    chunked = (
        b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (payload[:100], payload[100:4000], payload[4000:]))
        + b"0\r\n\r\n"
    )
    r = _raw(sidecar, agent_saw, [*headers, ("Transfer-Encoding", "chunked")], chunked)
    assert r.status == 200, r.body
    assert aws.requests[-1].body == payload
    assert "1 message(s)" in r.body.decode()


def test_body_over_the_buffer_limit_refused_unread(
    sidecar: SidecarProcess, aws: AwsStandIn, binding: SecretBinding, agent_saw: dict[str, bytes]
) -> None:
    before = len(aws.requests)
    headers = [(k, v) for k, v in _signed_headers(binding, b"{}", {}) if k.lower() != "content-length"]
    r = _raw(sidecar, agent_saw, [*headers, ("Content-Length", str(BODY_LIMIT + 1))], b"")
    assert r.status == 413 and r.json()["error"]["code"] == "payload_too_large"
    assert len(aws.requests) == before


def test_unsigned_request_passes_untouched(
    sidecar: SidecarProcess, aws: AwsStandIn, agent_saw: dict[str, bytes]
) -> None:
    """No SigV4 signature: no credential of the session is used, the request goes as it is (the
    stand-in, like AWS, then refuses it: that failure is the expected one here)."""
    r = _raw(sidecar, agent_saw, [("Host", BEDROCK), ("Content-Length", "2")], b"{}")
    assert r.status == 403 and b"SignatureDoesNotMatch" in r.body
    assert aws.failures == [f"POST {BEDROCK}{PATH}: no SigV4 Authorization header"]
    aws.failures.clear()
