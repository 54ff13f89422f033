"""CPU the sidecar spends per re-signed AWS request, against a plain static header swap.

Not a test; prints a table and one JSON object.

    .venv/bin/python bench/credentials_bench.py [--n 2000] [--n-large 200]

One real sidecar (`python -m oshu_sidecar`) with a session holding a static secret and an aws
binding; both hosts are pinned to one local stand-in that answers without checking (so the
upstream side is the same for every case). Requests are signed in advance by botocore with
the SEALED credentials (each one unique: the replay cache must let them through), then sent
sequentially on one keep-alive TLS connection through the proxy. The number is the sidecar
process's CPU time (utime + stime from /proc, 10 ms ticks) divided by the request count, so
it includes TLS, parsing, relaying -- everything a request costs the proxy, not only signing;
the median of `--rounds` rounds (every case once per round, interleaved).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import hmac
import http.client
import json
import os
import ssl
import statistics
from collections.abc import Callable
from pathlib import Path
from unittest import mock

from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from oshu_contract.hosts import HostPattern
from oshu_contract.kinds import Kind
from oshu_contract.session import SecretBinding, new_kind_binding, new_sealed_token
from oshu_testkit.aws_standin import AwsStandIn
from oshu_testkit.credential_material import AwsKey
from oshu_testkit.sessions import new_secret, new_session
from oshu_testkit.sidecar_process import SidecarProcess

S3 = "bucket.s3.us-east-1.amazonaws.com"
BEDROCK = "bedrock-runtime.us-east-1.amazonaws.com"
STATIC = "static.us-east-1.amazonaws.com"
Request = tuple[str, str, str, list[tuple[str, str]], bytes]  # method, host, target, headers, body


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _aws(binding: SecretBinding) -> Credentials:
    f = binding.sealed_fields
    return Credentials(binding.sealed, f["secretAccessKey"], f["sessionToken"])


def _sign(signer: SigV4Auth, req: AWSRequest) -> AWSRequest:
    with mock.patch(
        "botocore.auth.get_current_datetime", return_value=datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    ):
        signer.add_auth(req)
    return req


def _request(host: str, req: AWSRequest, body: bytes) -> Request:
    url = req.url.split(host, 1)[1]
    headers = [("Host", host), *((k, v) for k, v in req.headers.items()), ("Content-Length", str(len(body)))]
    return (req.method, host, url, headers, body)


def cases(binding: SecretBinding, static: SecretBinding, n: int, n_large: int) -> dict[str, Callable[[int], Request]]:
    creds = _aws(binding)
    small, large = b"x" * 1024, b"y" * (1 << 20)

    def static_swap(body: bytes) -> Callable[[int], Request]:
        return lambda i: (
            "PUT",
            STATIC,
            f"/k{i}",
            [("Host", STATIC), ("Authorization", f"Bearer {static.sealed}"), ("Content-Length", str(len(body)))],
            body,
        )

    def s3_put(body: bytes, unsigned: bool = False) -> Callable[[int], Request]:
        def make(i: int) -> Request:
            req = AWSRequest(method="PUT", url=f"https://{S3}/k{i}", data=body)
            if unsigned:
                req.context["payload_signing_enabled"] = False
            signer = SigV4Auth(creds, "s3", "us-east-1") if unsigned else S3SigV4Auth(creds, "s3", "us-east-1")
            return _request(S3, _sign(signer, req), body)

        return make

    def bedrock(i: int) -> Request:
        body = json.dumps({"anthropic_version": "bedrock-2023-05-31", "n": i, "pad": "p" * 1000}).encode()
        req = AWSRequest(
            method="POST",
            url=f"https://{BEDROCK}/model/m/invoke",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        return _request(BEDROCK, _sign(SigV4Auth(creds, "bedrock", "us-east-1"), req), body)

    def presigned(i: int) -> Request:
        req = _sign(
            S3SigV4QueryAuth(creds, "s3", "us-east-1", expires=900), AWSRequest(method="GET", url=f"https://{S3}/k{i}")
        )
        return ("GET", S3, req.url.split(S3, 1)[1], [("Host", S3)], b"")

    def chunked(i: int) -> Request:
        return _signed_chunks(creds, f"/c{i}", large, 65536)

    return {
        "static header swap, PUT 1 KiB": static_swap(small),
        "sigv4 S3 PUT 1 KiB (payload hashed)": s3_put(small),
        "sigv4 S3 PUT 1 KiB UNSIGNED-PAYLOAD": s3_put(small, unsigned=True),
        "sigv4 Bedrock POST 1 KiB": bedrock,
        "sigv4 presigned GET": presigned,
        "static header swap, PUT 1 MiB": static_swap(large),
        "sigv4 S3 PUT 1 MiB (payload hashed)": s3_put(large),
        "sigv4 aws-chunked 1 MiB (16 signed chunks)": chunked,
    }


def _signed_chunks(creds: Credentials, path: str, data: bytes, size: int) -> Request:
    empty = hashlib.sha256(b"").hexdigest()
    pieces = [data[i : i + size] for i in range(0, len(data), size)] + [b""]
    length = sum(len(f"{len(p):x};chunk-signature=") + 68 + len(p) for p in pieces)
    headers = {
        "Content-Encoding": "aws-chunked",
        "X-Amz-Content-SHA256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "X-Amz-Decoded-Content-Length": str(len(data)),
    }
    req = _sign(
        SigV4Auth(creds, "s3", "us-east-1"), AWSRequest(method="PUT", url=f"https://{S3}{path}", headers=headers)
    )
    stamp, prev = req.headers["X-Amz-Date"], req.headers["Authorization"].rsplit("Signature=", 1)[1]
    k = hmac.new(("AWS4" + creds.secret_key).encode(), stamp[:8].encode(), hashlib.sha256).digest()
    for part in ("us-east-1", "s3", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    body = b""
    for p in pieces:
        sts = f"AWS4-HMAC-SHA256-PAYLOAD\n{stamp}\n{stamp[:8]}/us-east-1/s3/aws4_request\n{prev}\n{empty}\n{hashlib.sha256(p).hexdigest()}"
        prev = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
        body += f"{len(p):x};chunk-signature={prev}\r\n".encode() + p + b"\r\n"
    assert len(body) == length
    return _request(S3, req, body)


def run_case(sc: SidecarProcess, host: str, reqs: list[Request]) -> float:
    """Send `reqs` on one keep-alive connection; the sidecar's CPU seconds per request."""
    assert sc.proc is not None and sc.listen is not None
    ctx = ssl.create_default_context(cafile=str(sc.ca_cert_file))
    conn = http.client.HTTPSConnection(sc.listen[0], sc.listen[1], context=ctx, timeout=60)
    conn.set_tunnel(host, 443)
    conn.request("GET", "/warmup", headers={"Host": host})
    conn.getresponse().read()
    t0 = _cpu(sc.proc.pid)
    for method, _, target, headers, body in reqs:
        conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        for k, v in headers:
            conn.putheader(k, v)
        conn.endheaders(body)
        r = conn.getresponse()
        r.read()
        if r.status != 200:
            raise SystemExit(f"{method} {host}{target}: {r.status}")
    used = _cpu(sc.proc.pid) - t0
    conn.close()
    return used / len(reqs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000, help="requests per small case")
    ap.add_argument("--n-large", type=int, default=200, help="requests per 1 MiB case")
    ap.add_argument("--rounds", type=int, default=3, help="rounds over every case; the median is reported")
    args = ap.parse_args()
    key = AwsKey()
    binding = new_kind_binding(
        "AWS",
        Kind.AWS,
        new_sealed_token(),
        [HostPattern.parse(S3), HostPattern.parse(BEDROCK)],
        key.fields(),
        {"secretAccessKey": new_sealed_token(), "sessionToken": new_sealed_token()},
    )
    static = new_secret("API_KEY", [STATIC])
    samples: dict[str, list[float]] = {}
    with AwsStandIn(key, verify=False) as aws:
        hosts = (S3, BEDROCK, STATIC)
        sc = SidecarProcess(
            new_session(binding, static),
            connect_to=[f"{h}:443:127.0.0.1:{aws.port}" for h in hosts],
            upstream_ca_files=[aws.ca_file],
        )
        with sc:
            for r in range(args.rounds):
                for name, make in cases(binding, static, args.n, args.n_large).items():
                    n = args.n_large if "1 MiB" in name else args.n
                    reqs = [make(r * n + i) for i in range(n)]  # unique per round: no replays
                    samples.setdefault(name, []).append(run_case(sc, reqs[0][1], reqs))
    results = {name: statistics.median(v) for name, v in samples.items()}
    base_small = results["static header swap, PUT 1 KiB"]
    base_large = results["static header swap, PUT 1 MiB"]
    print(f"{'case':48} {'CPU/request':>12} {'vs swap':>8}")
    for name, cpu in results.items():
        base = base_large if "1 MiB" in name else base_small
        print(f"{name:48} {cpu * 1e6:9.0f} us {cpu / base:7.2f}x")
    print(
        json.dumps(
            {
                "cpu_us_per_request_median": {k: round(v * 1e6, 1) for k, v in results.items()},
                "rounds_us": {k: [round(x * 1e6) for x in v] for k, v in samples.items()},
                "n": args.n,
                "n_large": args.n_large,
            }
        )
    )


if __name__ == "__main__":
    main()
