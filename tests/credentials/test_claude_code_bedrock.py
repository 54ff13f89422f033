"""The real Claude Code CLI on Amazon Bedrock (`CLAUDE_CODE_USE_BEDROCK=1`) through a real sidecar,
holding only the sealed AWS material the webhook injects: every request it makes (model probes,
the streamed conversation) reaches the stand-in signed with the REAL key, checked with botocore."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from oshu_contract.hosts import HostPattern
from oshu_contract.kinds import Kind
from oshu_contract.session import new_kind_binding, new_sealed_token
from oshu_testkit.aws_leaks import assert_no_aws_leak
from oshu_testkit.aws_standin import BEDROCK_REPLY, AwsStandIn
from oshu_testkit.credential_material import AwsKey
from oshu_testkit.sessions import new_session
from oshu_testkit.sidecar_process import SidecarProcess

from .conftest import agent_env

#: The CLI version tests/gateway pins too (installed once into ~/.cache/oshu-vault).
CLAUDE_CODE_VERSION = "2.1.332"
HOSTS = ("bedrock-runtime.us-east-1.amazonaws.com", "bedrock.us-east-1.amazonaws.com")
QUIET = {
    "DISABLE_TELEMETRY": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_ERROR_REPORTING": "1",
}


@pytest.fixture(scope="module")
def claude() -> Path:
    home = (
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        / "oshu-vault"
        / f"claude-code-{CLAUDE_CODE_VERSION}"
    )
    binary = home / "node_modules" / ".bin" / "claude"
    if not binary.exists():
        home.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", f"@anthropic-ai/claude-code@{CLAUDE_CODE_VERSION}"],
            cwd=home,
            check=True,
            capture_output=True,
            timeout=600,
        )
    return binary


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
            env = agent_env(sc, binding, home) | QUIET | {"CLAUDE_CODE_USE_BEDROCK": "1", "AWS_REGION": "us-east-1"}
            env["PATH"] = "/usr/bin:/bin"
            r = subprocess.run(
                [str(claude), "-p", "say hi"],
                env=env,
                cwd=home,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=180,
                check=False,
            )
            metrics = sc.metrics_text()
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
        assert BEDROCK_REPLY in r.stdout
        assert not aws.failures, aws.failures  # every request it made verified with the real key
        streamed = [q for q in aws.requests if q.target.endswith("/invoke-with-response-stream")]
        assert streamed and all(q.host == HOSTS[0] for q in streamed)
        texts = {"cli": (r.stdout + r.stderr).encode(), "log": sc.log_text().encode(), "metrics": metrics.encode()}
        texts |= {str(f): f.read_bytes() for f in home.rglob("*") if f.is_file()}
        assert_no_aws_leak(texts, key)
