"""Real AWS clients (boto3, the AWS CLI, the Anthropic SDK's Bedrock client) through a real sidecar
holding only SEALED AWS credentials; the stand-in checks every signature with the real key."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from oshu_contract.session import SecretBinding
from oshu_testkit.aws_standin import AwsStandIn
from oshu_testkit.sidecar_process import SidecarProcess

from .conftest import agent_env

CLIENT = Path(__file__).with_name("aws_client.py")
AWS_CLI = str(Path(sys.executable).with_name("aws"))

RunClient = Callable[..., dict[str, Any]]


@pytest.fixture
def env(sidecar: SidecarProcess, binding: SecretBinding, tmp_path: Path) -> dict[str, str]:
    """The agent's environment for one test: the sidecar as proxy, sealed AWS material only."""
    return agent_env(sidecar, binding, tmp_path)


@pytest.fixture
def run_client(agent_saw: dict[str, bytes], env: dict[str, str]) -> RunClient:
    """Run aws_client.py as the agent would (in `env`); what it printed joins the leak scan."""

    def run(*args: str) -> dict[str, Any]:
        p = subprocess.run([sys.executable, str(CLIENT), *args], env=env, capture_output=True, timeout=120)
        agent_saw[f"client {' '.join(args)} #{len(agent_saw)}"] = p.stdout + p.stderr
        assert p.returncode == 0, p.stderr[-3000:]
        out: dict[str, Any] = json.loads(p.stdout)
        return out

    return run


def aws_cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The AWS CLI (installed next to this Python) as the agent runs it."""
    return subprocess.run([AWS_CLI, *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_boto3_put_small_and_get(run_client: RunClient, aws: AwsStandIn) -> None:
    put = run_client("put", "small.txt", "hello ", "100", "bytes")
    assert aws.requests and aws.requests[-1].method == "PUT"
    got = run_client("get", "small.txt")
    assert got["sha256"] == put["sha256"] and got["len"] == 100


def test_boto3_large_streaming_upload(run_client: RunClient, aws: AwsStandIn) -> None:
    size = 6 << 20
    put = run_client("put", "large.bin", "0123456789abcdef", str(size), "stream")
    seen = aws.requests[-1]
    assert seen.method == "PUT" and len(seen.decoded) == size
    assert next(v for k, v in seen.headers if k.lower() == "x-amz-content-sha256").startswith("STREAMING-")
    got = run_client("get", "large.bin")
    assert got["sha256"] == put["sha256"]


def test_boto3_signed_payload_file_upload_with_expect_continue(run_client: RunClient, aws: AwsStandIn) -> None:
    """Payload signing on: the body is hashed (the proxy buffers and checks it); a file body also
    brings Expect: 100-continue, which the proxy answers itself before reading the body."""
    put = run_client("put", "signed.bin", "signed payload ", str(3 << 20), "signed-stream")
    seen = aws.requests[-1]
    declared = next(v for k, v in seen.headers if k.lower() == "x-amz-content-sha256")
    assert len(declared) == 64 and declared == put["sha256"]
    assert any(k.lower() == "expect" for k, _ in seen.headers)
    assert run_client("get", "signed.bin")["sha256"] == put["sha256"]


def test_boto3_presigned_url_fetched_by_requests(
    run_client: RunClient, agent_saw: dict[str, bytes], sidecar: SidecarProcess, aws: AwsStandIn, binding: SecretBinding
) -> None:
    run_client("put", "shared.txt", "shared ", "50", "bytes")
    url = run_client("presign", "shared.txt")["url"]
    assert binding.sealed in url and "X-Amz-Signature=" in url
    for _ in range(2):  # a presigned URL may be fetched again until it expires
        r = requests.get(url, proxies={"https": sidecar.proxy_url}, verify=str(sidecar.ca_cert_file), timeout=30)
        agent_saw[f"presigned GET #{len(agent_saw)}"] = repr(r.headers).encode() + r.content
        assert r.status_code == 200 and r.content == (b"shared " * 8)[:50]
        assert aws.requests[-1].kind == "presigned"
    v2 = run_client("presign-v2", "shared.txt")["url"]
    r = requests.get(v2, proxies={"https": sidecar.proxy_url}, verify=str(sidecar.ca_cert_file), timeout=30)
    agent_saw["presigned v2"] = repr(r.headers).encode() + r.content
    assert r.status_code == 403 and r.json()["error"]["code"] == "signature_invalid"
    assert aws.requests[-1].kind == "presigned"  # (the refused one never arrived)
    p = subprocess.run(
        ["curl", "-sS", "--proxy", sidecar.proxy_url, "--cacert", str(sidecar.ca_cert_file), url],
        capture_output=True,
        timeout=60,
    )
    agent_saw["curl presigned"] = p.stdout + p.stderr
    assert p.stdout == (b"shared " * 8)[:50], p.stderr


def test_boto3_bedrock_invoke_model(run_client: RunClient, aws: AwsStandIn) -> None:
    out = run_client("bedrock")
    assert out["content"][0]["text"].startswith("stand-in reply")
    assert aws.requests[-1].host == "bedrock-runtime.us-east-1.amazonaws.com"


def test_anthropic_bedrock_messages(run_client: RunClient, aws: AwsStandIn) -> None:
    out = run_client("anthropic")
    assert out["text"] == "stand-in reply to 1 message(s)"
    assert aws.requests[-1].target.startswith("/model/")


def test_aws_cli_cp_and_list(agent_saw: dict[str, bytes], aws: AwsStandIn, env: dict[str, str], tmp_path: Path) -> None:
    src = tmp_path / "cli.txt"
    src.write_bytes(b"from the AWS CLI\n" * 10)
    p = aws_cli(env, "s3", "cp", str(src), "s3://bucket/cli.txt")
    assert p.returncode == 0, p.stderr
    assert aws.objects["cli.txt"] == src.read_bytes()
    p = aws_cli(env, "s3api", "list-objects-v2", "--bucket", "bucket")
    agent_saw["aws s3api list-objects-v2"] = (p.stdout + p.stderr).encode()
    assert p.returncode == 0, p.stderr
    assert "cli.txt" in [c["Key"] for c in json.loads(p.stdout)["Contents"]]


def test_boto3_sts_get_caller_identity(run_client: RunClient, aws: AwsStandIn) -> None:
    """The read-only identity check is signed with the real key (other STS calls are refused)."""
    out = run_client("whoami")
    assert out["Account"] == "123456789012"
    assert aws.requests[-1].host.startswith("sts.")


def test_aws_cli_multipart_upload_in_parallel(
    agent_saw: dict[str, bytes], aws: AwsStandIn, env: dict[str, str], tmp_path: Path
) -> None:
    """20 MiB: the CLI's multipart upload, its parts signed and sent on parallel connections."""
    src = tmp_path / "big.bin"
    src.write_bytes(bytes(range(256)) * (20 * 4096))
    p = aws_cli(env, "s3", "cp", str(src), "s3://bucket/big.bin", timeout=300)
    agent_saw["aws s3 cp multipart"] = (p.stdout + p.stderr).encode()
    assert p.returncode == 0, p.stderr
    assert aws.objects["big.bin"] == src.read_bytes()
    parts = [r for r in aws.requests if "partNumber=" in r.target]
    assert len(parts) >= 3
