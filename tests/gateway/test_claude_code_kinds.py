"""The real Claude Code CLI (npm, pinned) on Amazon Bedrock and on Google Vertex AI through a real
gateway, holding only what the SDK's `sandbox_env()` / `sandbox_files()` give a sandbox:

- Bedrock (`CLAUDE_CODE_USE_BEDROCK=1`): sealed AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
  AWS_SESSION_TOKEN; every request (its model probes and the streamed conversation) reaches the
  test kit's AWS stand-in signed with the REAL key, which that stand-in checks with botocore (it
  answers InvokeModelWithResponseStream in Bedrock's binary event-stream framing, the only one the
  CLI accepts).
- Vertex (`CLAUDE_CODE_USE_VERTEX=1`): the agent key file with the gateway's throwaway key; the
  CLI's Google client exchanges its JWT at oauth2.googleapis.com (re-signed, verified by the
  stand-in with the REAL public key) and calls Vertex with the sealed access token.
"""

from __future__ import annotations

from pathlib import Path

from oshu_vault_sdk import SecretsProxyClient, aws_secret, gcp_service_account_secret

from oshu_testkit.aws_standin import BEDROCK_REPLY, AwsStandIn
from oshu_testkit.claude_code import home_files, run_claude
from oshu_testkit.credential_material import AwsKey, GoogleServiceAccount
from oshu_testkit.gateway_process import GatewayProcess
from oshu_testkit.leaks import assert_no_secret
from oshu_testkit.oauth_standins import GOOGLE_TOKEN_HOST, VERTEX_HOST, TokenServer

from .conftest import write_sandbox_files

BEDROCK_HOSTS = ["bedrock-runtime.us-east-1.amazonaws.com", "bedrock.us-east-1.amazonaws.com"]


def test_claude_code_on_bedrock_through_the_gateway(claude: Path, tmp_path: Path) -> None:
    key = AwsKey()
    with AwsStandIn(key) as aws:
        pins = [a for h in BEDROCK_HOSTS for a in ("--connect-to", f"{h}:443:127.0.0.1:{aws.port}")]
        with GatewayProcess(None, extra_args=["--upstream-ca-file", str(aws.ca_file), *pins]) as gw:
            client = SecretsProxyClient(gw.base_url, gw.api_key, ca_file=str(gw.ca_file))
            secret = aws_secret(key.access_key_id, key.secret_access_key, BEDROCK_HOSTS, key.session_token)
            with client.create_session({"AWS": secret}) as s:
                home = tmp_path / "home"
                home.mkdir()
                env = s.sandbox_env(ca_path=str(gw.ca_file)) | {
                    "CLAUDE_CODE_USE_BEDROCK": "1",
                    "AWS_REGION": "us-east-1",
                }
                r = run_claude(claude, env, home)
                assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
                assert r.stdout.strip() == BEDROCK_REPLY  # the streamed answer, not the plain invoke's
                assert not aws.failures, aws.failures  # every request verified with the real key
                streamed = [q for q in aws.requests if q.target.endswith("/invoke-with-response-stream")]
                assert streamed and all(q.host == BEDROCK_HOSTS[0] for q in streamed)
                audit = [x for x in gw.log_records() if x.get("msg") == "request"]
                assert audit and all(x["session"] == s.session_id and x["status"] < 500 for x in audit)
                texts: dict[str, str | bytes] = {"cli": r.stdout + r.stderr, "gateway log": gw.log_text()}
                texts |= home_files(home)
                assert_no_secret(texts, key.values())


def test_claude_code_on_vertex_through_the_gateway(claude: Path, tmp_path: Path) -> None:
    sa = GoogleServiceAccount()
    with TokenServer(names=(GOOGLE_TOKEN_HOST, VERTEX_HOST)) as ts:
        ts.google_public_pem, ts.google_kid, ts.google_email = sa.public_pem(), sa.private_key_id, sa.client_email
        pins = [a for rule in ts.connect_to() for a in ("--connect-to", rule)]
        with GatewayProcess(None, extra_args=["--upstream-ca-file", str(ts.ca_file), *pins]) as gw:
            client = SecretsProxyClient(gw.base_url, gw.api_key, ca_file=str(gw.ca_file))
            with client.create_session({"GOOGLE_SA": gcp_service_account_secret(sa.key_file(), [VERTEX_HOST])}) as s:
                home = tmp_path / "home"
                creds = home / "creds"
                creds.mkdir(parents=True)
                write_sandbox_files(s, creds)
                env = s.sandbox_env(ca_path=str(gw.ca_file), credentials_dir=str(creds))
                env |= {
                    "CLAUDE_CODE_USE_VERTEX": "1",
                    "CLOUD_ML_REGION": "us-east5",
                    "ANTHROPIC_VERTEX_PROJECT_ID": "oshu-test",
                }
                r = run_claude(claude, env, home)
                assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
                assert "hello from the Vertex stand-in" in r.stdout
                assert ts.google_requests >= 1 and not ts.refused  # every assertion verified with the real key
                assert ts.api_tokens and set(ts.api_tokens) <= set(ts.issued) and ts.api_refused == 0
                texts: dict[str, str | bytes] = {"cli": r.stdout + r.stderr, "gateway log": gw.log_text()}
                texts |= home_files(home)
                assert_no_secret(texts, [*sa.values(), *ts.issued])
