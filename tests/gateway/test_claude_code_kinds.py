"""The real Claude Code CLI (npm, pinned) on Amazon Bedrock and on Google Vertex AI through a real
gateway, holding only what the SDK's `sandbox_env()` / `sandbox_files()` give a sandbox:

- Bedrock (`CLAUDE_CODE_USE_BEDROCK=1`): sealed AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
  AWS_SESSION_TOKEN; every request (its model probes and the streamed conversation) reaches the
  test kit's AWS stand-in signed with the REAL key, which that stand-in checks with botocore. The
  stand-in is extended here only to answer InvokeModelWithResponseStream in Bedrock's binary
  event-stream framing (the CLI refuses anything else).
- Vertex (`CLAUDE_CODE_USE_VERTEX=1`): the agent key file with the gateway's throwaway key; the
  CLI's Google client exchanges its JWT at oauth2.googleapis.com (re-signed, verified by the
  stand-in with the REAL public key) and calls Vertex with the sealed access token.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
import subprocess
from pathlib import Path

from aiohttp import web
from oshu_vault_sdk import SecretsProxyClient, aws_secret, gcp_service_account_secret

from oshu_testkit.aws_standin import AwsStandIn
from oshu_testkit.credential_material import AwsKey, GoogleServiceAccount
from oshu_testkit.gateway_process import GatewayProcess
from oshu_testkit.leaks import assert_no_secret
from oshu_testkit.oauth_standins import GOOGLE_TOKEN_HOST, VERTEX_HOST, TokenServer

BEDROCK_HOSTS = ["bedrock-runtime.us-east-1.amazonaws.com", "bedrock.us-east-1.amazonaws.com"]
BEDROCK_REPLY = "hello from the Bedrock stand-in"
QUIET = {
    "DISABLE_TELEMETRY": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_ERROR_REPORTING": "1",
}


def _event_message(payload: bytes) -> bytes:
    """One message of `application/vnd.amazon.eventstream` (prelude, headers, payload, two CRC32s)."""
    headers = b""
    for name, value in ((":event-type", "chunk"), (":content-type", "application/json"), (":message-type", "event")):
        headers += bytes([len(name)]) + name.encode() + b"\x07" + struct.pack(">H", len(value)) + value.encode()
    total = 12 + len(headers) + len(payload) + 4
    prelude = struct.pack(">II", total, len(headers))
    head = prelude + struct.pack(">I", binascii.crc32(prelude)) + headers + payload
    return head + struct.pack(">I", binascii.crc32(head))


def _stream(model: str) -> bytes:
    """A Messages stream as Bedrock wraps it: each event JSON base64'd in a `chunk`."""
    events: list[dict[str, object]] = [
        {
            "type": "message_start",
            "message": {
                "id": "msg_bedrock_standin",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 3, "output_tokens": 1},
            },
        },
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": BEDROCK_REPLY}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 6},
        },
        {"type": "message_stop"},
    ]
    return b"".join(
        _event_message(json.dumps({"bytes": base64.b64encode(json.dumps(e).encode()).decode()}).encode())
        for e in events
    )


class StreamingBedrock(AwsStandIn):
    """The test kit's AWS stand-in (every signature checked with the real key), answering the
    streaming invocation in event-stream framing once the signature has verified."""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        answer = await super()._handle(request)
        if answer.status == 200 and request.path.endswith("/invoke-with-response-stream"):
            model = request.path.split("/")[2]
            return web.Response(body=_stream(model), content_type="application/vnd.amazon.eventstream")
        return answer


def _run_claude(claude: Path, env: dict[str, str], home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(claude), "-p", "say hi"],
        env=env | QUIET | {"PATH": "/usr/bin:/bin", "HOME": str(home)},
        cwd=home,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def _home_texts(home: Path) -> dict[str, str | bytes]:
    return {str(f): f.read_bytes() for f in home.rglob("*") if f.is_file()}


def test_claude_code_on_bedrock_through_the_gateway(claude: Path, tmp_path: Path) -> None:
    key = AwsKey()
    with StreamingBedrock(key) as aws:
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
                r = _run_claude(claude, env, home)
                assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
                assert BEDROCK_REPLY in r.stdout
                assert not aws.failures, aws.failures  # every request verified with the real key
                streamed = [q for q in aws.requests if q.target.endswith("/invoke-with-response-stream")]
                assert streamed and all(q.host == BEDROCK_HOSTS[0] for q in streamed)
                audit = [x for x in gw.log_records() if x.get("msg") == "request"]
                assert audit and all(x["session"] == s.session_id and x["status"] < 500 for x in audit)
                texts = {"cli": r.stdout + r.stderr, "gateway log": gw.log_text(), **_home_texts(home)}
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
                for path, content in s.sandbox_files(str(creds)).items():
                    Path(path).write_text(content)
                env = s.sandbox_env(ca_path=str(gw.ca_file), credentials_dir=str(creds))
                env |= {
                    "CLAUDE_CODE_USE_VERTEX": "1",
                    "CLOUD_ML_REGION": "us-east5",
                    "ANTHROPIC_VERTEX_PROJECT_ID": "oshu-test",
                }
                r = _run_claude(claude, env, home)
                assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
                assert "hello from the Vertex stand-in" in r.stdout
                assert ts.google_requests >= 1 and not ts.refused  # every assertion verified with the real key
                assert ts.api_tokens and set(ts.api_tokens) <= set(ts.issued) and ts.api_refused == 0
                texts = {"cli": r.stdout + r.stderr, "gateway log": gw.log_text(), **_home_texts(home)}
                assert_no_secret(texts, [*sa.values(), *ts.issued])
