"""The Python SDK end to end, run in a venv holding nothing but the standard library and the SDK."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from oshu_testkit.gateway_process import GatewayProcess
from oshu_testkit.upstreams import Upstream

SDK = Path(__file__).resolve().parents[2] / "sdk" / "python"
VALUE = "sk-sdk-python-00112233445566"

SCRIPT = r"""
import asyncio, json, os, subprocess, sys
from oshu_vault_sdk import AsyncSecretsProxyClient, SecretsProxyClient, SecretsProxyError

ca_file, value = sys.argv[1], sys.argv[2]
client = SecretsProxyClient(ca_file=ca_file)  # base URL and key from PROXY_BASE_URL / SECRETS_PROXY_API_KEY
out = {}
with client.create_session(secrets={"K": {"value": value, "hosts": ["api.oshu.test"]}}) as s:
    bundle = os.path.join(os.environ["WORK"], "ca.pem")
    open(bundle, "w").write(client.ca_bundle_pem())
    env = s.sandbox_env(ca_path=bundle)
    out["env_keys"] = sorted(env)
    env["PATH"] = "/usr/bin:/bin"
    # curl has no environment variable for the CA of an https:// proxy: --proxy-cacert (docs/gateway.md)
    r = subprocess.run(["curl", "-s", "--proxy-cacert", bundle, "-H", "x-api-key: " + env["K"], "https://api.oshu.test/reflect?header=x-api-key"],
                       env=env, capture_output=True, text=True, timeout=30)
    out["curl"] = r.stdout
    out["meta"] = client.get_session(s.session_id)
    out["sid"] = s.session_id
try:
    client.get_session(out["sid"])
except SecretsProxyError as e:
    out["after_exit"] = [e.status, e.code]
try:
    client.create_session(secrets={"NOT_KNOWN": value})
except SecretsProxyError as e:
    out["bad"] = [e.status, e.code, e.message]

async def main():
    a = AsyncSecretsProxyClient(ca_file=ca_file)
    async with await a.create_session({"OPENAI_API_KEY": value}) as s:
        meta = await a.get_session(s.session_id)
        sid = s.session_id
    try:
        await a.get_session(sid)
    except SecretsProxyError as e:
        return [meta["secrets"]["OPENAI_API_KEY"]["hosts"], e.status]
out["async"] = asyncio.run(main())
try:
    import cryptography  # noqa: F401
    out["has_proxy_deps"] = True
except ImportError:
    out["has_proxy_deps"] = False
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    venv = tmp_path_factory.mktemp("sdk-venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    return str(venv / "bin" / "python")


def test_python_sdk_end_to_end(gateway: GatewayProcess, upstream: Upstream, bare_python: str, tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(SDK),
        "PROXY_BASE_URL": gateway.base_url,
        "SECRETS_PROXY_API_KEY": gateway.api_key,
        "WORK": str(tmp_path),
    }
    r = subprocess.run(
        [bare_python, "-c", SCRIPT, str(gateway.ca_file), VALUE], env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["has_proxy_deps"] is False  # the SDK ran with the standard library alone
    assert upstream.last.header("x-api-key") == VALUE
    assert VALUE not in out["curl"] and "SEALED_" in out["curl"]
    for name in (
        "K",
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "NO_PROXY",
        "no_proxy",
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "GIT_SSL_CAINFO",
        "AWS_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
    ):
        assert name in out["env_keys"]
    assert out["meta"]["secrets"]["K"]["hosts"] == ["api.oshu.test"]
    assert out["after_exit"] == [404, "not_found"]  # the context manager deleted it
    assert out["bad"][:2] == [400, "invalid_request"] and "NOT_KNOWN" in out["bad"][2]
    assert out["async"] == [["api.openai.com"], 404]
    assert VALUE not in r.stdout


def test_sdk_distribution_declares_no_dependencies() -> None:
    """Its own small distribution; with the end-to-end test above (a venv without them) it needs none."""
    meta = tomllib.loads((SDK / "pyproject.toml").read_text())["project"]
    assert meta["name"] == "oshu-vault-sdk" and meta["dependencies"] == []
    assert (SDK / "oshu_vault_sdk" / "py.typed").exists()
