"""Claude Code on Google Vertex AI through a self-hosted oshu-gateway (no Kubernetes).

The "sandbox" here is a local `claude` process; hand the same `env` and files to an E2B, Modal
or CI sandbox instead. It gets a service-account key file whose private key is a throwaway made
for this session: the gateway re-signs its token requests with the real key and seals the
access token Google returns.

    PROXY_BASE_URL=https://127.0.0.1:8443 SECRETS_PROXY_API_KEY=... GATEWAY_CA=gw-state/ca.crt \\
    GOOGLE_SA_KEY_FILE=./my-sa-key.json ANTHROPIC_VERTEX_PROJECT_ID=my-gcp-project CLOUD_ML_REGION=us-east5 \\
    python examples/claude-code-vertex/gateway.py "Say hello from Vertex"
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from oshu_vault_sdk import SecretsProxyClient, gcp_service_account_secret


def main(prompt: str) -> int:
    region = os.environ.get("CLOUD_ML_REGION", "us-east5")
    host = "aiplatform.googleapis.com" if region == "global" else f"{region}-aiplatform.googleapis.com"
    client = SecretsProxyClient(ca_file=os.environ.get("GATEWAY_CA"))  # PROXY_BASE_URL, SECRETS_PROXY_API_KEY
    google = gcp_service_account_secret(os.environ["GOOGLE_SA_KEY_FILE"], hosts=[host])
    with (
        client.create_session({"GOOGLE_SA": google}, ttl_seconds=3600) as session,
        tempfile.TemporaryDirectory() as home,
    ):
        ca = Path(home, "ca.pem")
        ca.write_text(client.ca_bundle_pem())
        creds = Path(home, "creds")
        env = session.sandbox_env(ca_path=str(ca), credentials_dir=str(creds))  # GOOGLE_APPLICATION_CREDENTIALS=...
        for path, content in session.sandbox_files(str(creds)).items():  # the agent key file (throwaway key)
            Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            Path(path).write_text(content)
        env |= {
            "CLAUDE_CODE_USE_VERTEX": "1",
            "ANTHROPIC_VERTEX_PROJECT_ID": os.environ["ANTHROPIC_VERTEX_PROJECT_ID"],
            "CLOUD_ML_REGION": region,
            "HOME": home,
            "PATH": os.environ["PATH"],
            "DISABLE_TELEMETRY": "1",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        }
        return subprocess.run(["claude", "-p", prompt], env=env, cwd=home, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(" ".join(sys.argv[1:]) or "Say hello from Vertex"))
