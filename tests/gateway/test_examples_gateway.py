"""examples/claude-code-{bedrock,vertex}/gateway.py run as written against a real gateway and the test
kit's stand-ins (AWS checking SigV4 with the real key; Google's token endpoint checking the real key).

`claude` on their PATH is a stand-in for the CLI (which would need a streaming Bedrock/Vertex
stand-in): a script that checks the variables Claude Code reads (CLAUDE_CODE_USE_BEDROCK,
AWS_REGION / CLAUDE_CODE_USE_VERTEX, ANTHROPIC_VERTEX_PROJECT_ID, CLOUD_ML_REGION) and makes the
same kind of call with the Anthropic SDK's AnthropicBedrock / AnthropicVertex client, holding only
what the example's sandbox gets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from oshu_testkit.aws_standin import AwsStandIn
from oshu_testkit.credential_material import AwsKey, GoogleServiceAccount
from oshu_testkit.gateway_process import GatewayProcess
from oshu_testkit.leaks import assert_no_secret
from oshu_testkit.oauth_standins import GOOGLE_TOKEN_HOST, VERTEX_HOST, TokenServer

ROOT = Path(__file__).resolve().parents[2]
SDK = ROOT / "sdk" / "python"

FAKE_CLAUDE = r"""#!{python}
import json, os, sys
report = {{"argv": sys.argv[1:], "env": {{k: v for k, v in os.environ.items()}}}}
if os.environ.get("CLAUDE_CODE_USE_BEDROCK") == "1":
    from anthropic import AnthropicBedrock
    c = AnthropicBedrock(aws_region=os.environ["AWS_REGION"], max_retries=0)
    model = "anthropic.claude-3-5-sonnet-20240620-v1:0"
elif os.environ.get("CLAUDE_CODE_USE_VERTEX") == "1":
    from anthropic import AnthropicVertex
    c = AnthropicVertex(region=os.environ["CLOUD_ML_REGION"], project_id=os.environ["ANTHROPIC_VERTEX_PROJECT_ID"], max_retries=0)
    model = "claude"
else:
    sys.exit("neither CLAUDE_CODE_USE_BEDROCK nor CLAUDE_CODE_USE_VERTEX")
msg = c.messages.create(model=model, max_tokens=8, messages=[{{"role": "user", "content": sys.argv[-1]}}])
report["reply"] = msg.content[0].text
open({report!r}, "w").write(json.dumps(report))
"""


@pytest.fixture
def fake_claude(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    claude = bin_dir / "claude"
    claude.write_text(FAKE_CLAUDE.format(python=sys.executable, report=str(tmp_path / "report.json")))
    claude.chmod(0o755)
    return bin_dir


def _run_example(
    example: str, gw: GatewayProcess, bin_dir: Path, tmp_path: Path, extra: dict[str, str]
) -> tuple[dict[str, object], subprocess.CompletedProcess[str]]:
    report = tmp_path / "report.json"
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "PYTHONPATH": str(SDK),
        "PROXY_BASE_URL": gw.base_url,
        "SECRETS_PROXY_API_KEY": gw.api_key,
        "GATEWAY_CA": str(gw.ca_file),
        **extra,
    }
    r = subprocess.run(
        [sys.executable, str(ROOT / "examples" / example / "gateway.py"), "say hi"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    out: dict[str, object] = json.loads(report.read_text())
    return out, r


@pytest.fixture
def aws() -> Iterator[AwsStandIn]:
    with AwsStandIn(AwsKey()) as standin:
        yield standin


def test_bedrock_example_through_the_gateway(aws: AwsStandIn, fake_claude: Path, tmp_path: Path) -> None:
    host = "bedrock-runtime.us-east-1.amazonaws.com"
    args = ["--upstream-ca-file", str(aws.ca_file), "--connect-to", f"{host}:443:127.0.0.1:{aws.port}"]
    with GatewayProcess(None, extra_args=args) as gw:
        key = aws.key
        out, _ = _run_example(
            "claude-code-bedrock",
            gw,
            fake_claude,
            tmp_path,
            {
                "REAL_AWS_ACCESS_KEY_ID": key.access_key_id,
                "REAL_AWS_SECRET_ACCESS_KEY": key.secret_access_key,
                "REAL_AWS_SESSION_TOKEN": key.session_token,
                "AWS_REGION": "us-east-1",
            },
        )
        env = out["env"]
        assert isinstance(env, dict)
        assert out["reply"] == "stand-in reply to 1 message(s)"
        assert env["CLAUDE_CODE_USE_BEDROCK"] == "1" and env["AWS_ACCESS_KEY_ID"].startswith("SEALED_")
        assert not [k for k in env if k.startswith("REAL_")]  # the example hands the sandbox nothing real
        assert not aws.failures and any(s.host == host for s in aws.requests)
        assert_no_secret({"sandbox env": json.dumps(env), "gateway log": gw.log_text()}, key.values())


def test_vertex_example_through_the_gateway(fake_claude: Path, tmp_path: Path) -> None:
    sa = GoogleServiceAccount()
    key_file = tmp_path / "sa.json"
    key_file.write_text(json.dumps(sa.key_file()))
    with TokenServer(names=(GOOGLE_TOKEN_HOST, VERTEX_HOST)) as ts:
        ts.google_public_pem, ts.google_kid, ts.google_email = sa.public_pem(), sa.private_key_id, sa.client_email
        pins = [a for rule in ts.connect_to() for a in ("--connect-to", rule)]
        with GatewayProcess(None, extra_args=["--upstream-ca-file", str(ts.ca_file), *pins]) as gw:
            out, r = _run_example(
                "claude-code-vertex",
                gw,
                fake_claude,
                tmp_path,
                {
                    "GOOGLE_SA_KEY_FILE": str(key_file),
                    "ANTHROPIC_VERTEX_PROJECT_ID": "oshu-test",
                    "CLOUD_ML_REGION": "us-east5",
                },
            )
            env = out["env"]
            assert isinstance(env, dict)
            assert out["reply"] == "hello from the Vertex stand-in"
            assert env["CLAUDE_CODE_USE_VERTEX"] == "1" and "GOOGLE_SA_KEY_FILE" not in env
            assert ts.google_requests >= 1 and not ts.refused and ts.api_tokens[-1].startswith("ya29.")
            assert not os.path.exists(env["GOOGLE_APPLICATION_CREDENTIALS"])  # removed with the example's temp dir
            texts: dict[str, str | bytes] = {"sandbox env": json.dumps(env), "gateway log": gw.log_text()}
            assert_no_secret(texts | {"example output": r.stdout + r.stderr}, [*sa.values(), *ts.issued])
