"""The JS SDK (`sdk/js`, @oshu/vault-sdk) with Node's test runner against a real gateway process."""

from __future__ import annotations

import subprocess
from pathlib import Path

from oshu_testkit.gateway_process import GatewayProcess
from oshu_testkit.upstreams import Upstream

ROOT = Path(__file__).resolve().parents[2]
VALUE = "sk-js-sdk-0123456789abcdef"


def test_js_sdk_node_test_runner(gateway: GatewayProcess, upstream: Upstream) -> None:
    upstream.clear()
    r = subprocess.run(
        ["node", "--test", "test/"],
        cwd=ROOT / "sdk" / "js",
        capture_output=True,
        text=True,
        timeout=180,
        env={
            "PATH": "/usr/bin:/bin",
            "GATEWAY_URL": gateway.base_url,
            "SECRETS_PROXY_API_KEY": gateway.api_key,
            "GATEWAY_CA": str(gateway.ca_file),
            "NODE_EXTRA_CA_CERTS": str(gateway.ca_file),
            "UNDICI": str(ROOT / "tests" / "node" / "node_modules" / "undici"),
        },
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "# pass 5" in r.stdout and "# fail 0" in r.stdout
    assert any(x.header("x-api-key") == VALUE for x in upstream.requests)  # the real key reached the upstream
