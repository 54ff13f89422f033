"""Claude Code on Amazon Bedrock through a self-hosted oshu-gateway (no Kubernetes).

The "sandbox" here is a local `claude` process; hand the same `env` (and the CA file) to an E2B,
Modal or CI sandbox instead. It holds sealed AWS credentials only: its AWS SDK signs with them,
the gateway verifies that signature and re-signs with the real key for Bedrock's hosts only.

    PROXY_BASE_URL=https://127.0.0.1:8443 SECRETS_PROXY_API_KEY=... GATEWAY_CA=gw-state/ca.crt \\
    REAL_AWS_ACCESS_KEY_ID=AKIA... REAL_AWS_SECRET_ACCESS_KEY=... [REAL_AWS_SESSION_TOKEN=...] \\
    AWS_REGION=us-east-1 python examples/claude-code-bedrock/gateway.py "Say hello from Bedrock"
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from oshu_vault_sdk import SecretsProxyClient, aws_secret


def main(prompt: str) -> int:
    region = os.environ.get("AWS_REGION", "us-east-1")
    client = SecretsProxyClient(ca_file=os.environ.get("GATEWAY_CA"))  # PROXY_BASE_URL, SECRETS_PROXY_API_KEY
    aws = aws_secret(
        os.environ["REAL_AWS_ACCESS_KEY_ID"],
        os.environ["REAL_AWS_SECRET_ACCESS_KEY"],
        hosts=[f"bedrock-runtime.{region}.amazonaws.com", f"bedrock.{region}.amazonaws.com"],
        session_token=os.environ.get("REAL_AWS_SESSION_TOKEN"),
    )
    with client.create_session({"AWS": aws}, ttl_seconds=3600) as session, tempfile.TemporaryDirectory() as home:
        ca = Path(home, "ca.pem")
        ca.write_text(client.ca_bundle_pem())  # the gateway CA (+ this machine's roots)
        env = session.sandbox_env(ca_path=str(ca))  # AWS_ACCESS_KEY_ID=SEALED_..., HTTPS_PROXY, CA variables
        env |= {
            "CLAUDE_CODE_USE_BEDROCK": "1",
            "AWS_REGION": region,  # Claude Code reads the region from here, not from ~/.aws/config
            "HOME": home,
            "PATH": os.environ["PATH"],
            "DISABLE_TELEMETRY": "1",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        }
        return subprocess.run(["claude", "-p", prompt], env=env, cwd=home, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(" ".join(sys.argv[1:]) or "Say hello from Bedrock"))
