"""A revocation reaches an aws-chunked upload in flight: every chunk is signed anew with the real
key, so once the session is revoked the rest of the upload is not signed (nor forwarded)."""

from __future__ import annotations

from pathlib import Path

from oshu_contract.session import SecretBinding
from oshu_testkit.aws_standin import AwsStandIn
from oshu_testkit.credential_material import AwsKey
from oshu_testkit.rawclient import RawClient
from oshu_testkit.sessions import new_session
from oshu_testkit.sidecar_process import SidecarProcess

from .conftest import AWS_HOSTS
from .test_aws_refusals import _chunked, sealed

S3_HOST = "bucket.s3.us-east-1.amazonaws.com"


def test_revoking_the_session_stops_a_signed_chunk_upload(
    aws: AwsStandIn, binding: SecretBinding, aws_key: AwsKey, tmp_path: Path
) -> None:
    sc = SidecarProcess(
        new_session(binding),
        directory=tmp_path / "sidecar",
        connect_to=[f"{h}:443:127.0.0.1:{aws.port}" for h in AWS_HOSTS],
        upstream_ca_files=[aws.ca_file],
    )
    req, body = _chunked(sealed(binding), "revoked.bin", b"r" * (3 * 65536), 65536)
    head = f"PUT /revoked.bin HTTP/1.1\r\nHost: {S3_HOST}\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in req.headers.items()
    )
    first = body.index(b"\r\n", 65536 + 90) + 2  # the first chunk, whole
    with sc, RawClient(sc.listen) as c:
        assert c.connect(f"{S3_HOST}:443").status == 200
        c.start_tls(S3_HOST, sc.ca_cert_file)
        c.send(head.encode() + b"\r\n" + body[:first])
        sc.write_session(new_session(binding, revoked=True))
        sc.wait_for_log(lambda r: r.get("msg") == "session revoked", timeout=10)
        c.send(body[first:])
        resp = c.response("PUT")
        log = sc.log_text()
    assert resp.status == 403 and resp.json()["error"]["code"] == "session_revoked", resp.body
    assert "revoked.bin" not in aws.objects
    for value in aws_key.values():
        assert value not in log
