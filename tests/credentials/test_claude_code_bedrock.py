"""The real Claude Code CLI on Amazon Bedrock (`CLAUDE_CODE_USE_BEDROCK=1`) through a real sidecar,
holding only the sealed AWS material the webhook injects: every request it makes (model probes,
the streamed conversation) reaches the stand-in signed with the REAL key, checked with botocore."""

from __future__ import annotations

from pathlib import Path

import pytest

from oshu_contract.hosts import HostPattern
from oshu_contract.kinds import Kind
from oshu_contract.session import new_kind_binding, new_sealed_token
from oshu_testkit.aws_leaks import assert_no_aws_leak
from oshu_testkit.aws_standin import BEDROCK_REPLY, AwsStandIn
from oshu_testkit.claude_code import claude_binary, home_files, run_claude
from oshu_testkit.credential_material import AwsKey
from oshu_testkit.sessions import new_session
from oshu_testkit.sidecar_process import SidecarProcess

from .conftest import agent_env

HOSTS = ("bedrock-runtime.us-east-1.amazonaws.com", "bedrock.us-east-1.amazonaws.com")


@pytest.fixture(scope="module")
def claude() -> Path:
    return claude_binary()


def test_claude_code_on_bedrock_through_the_sidecar(claude: Path, tmp_path: Path) -> None:
    key = AwsKey()
    binding = new_kind_binding(
        "AWS",
        Kind.AWS,
        new_sealed_token(),
        [HostPattern.parse(h) for h in HOSTS],
        key.fields(),
        {"secretAccessKey": new_sealed_token(), "sessionToken": new_sealed_token()},
    )
    home = tmp_path / "home"
    home.mkdir()
    with AwsStandIn(key) as aws:
        sc = SidecarProcess(
            new_session(binding),
            directory=tmp_path / "sidecar",
            connect_to=[f"{h}:443:127.0.0.1:{aws.port}" for h in HOSTS],
            upstream_ca_files=[aws.ca_file],
        )
        with sc:
            env = agent_env(sc, binding, home) | {"CLAUDE_CODE_USE_BEDROCK": "1", "AWS_REGION": "us-east-1"}
            r = run_claude(claude, env, home)
            metrics = sc.metrics_text()
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
        assert BEDROCK_REPLY in r.stdout
        assert not aws.failures, aws.failures  # every request it made verified with the real key
        streamed = [q for q in aws.requests if q.target.endswith("/invoke-with-response-stream")]
        assert streamed and all(q.host == HOSTS[0] for q in streamed)
        texts = {"cli": (r.stdout + r.stderr).encode(), "log": sc.log_text().encode(), "metrics": metrics.encode()}
        texts |= home_files(home)
        assert_no_aws_leak(texts, key)
