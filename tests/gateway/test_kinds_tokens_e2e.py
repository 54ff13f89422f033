"""OAuth2 and Google service accounts end to end through a real gateway process, sessions created with
the Python SDK, clients holding only `sandbox_env()` and `sandbox_files()`, against the test kit's
token stand-ins (an OAuth2 endpoint that counts requests; Google's token endpoint verifying the
assertion with the REAL public key; APIs that accept only live access tokens)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from oshu_vault_sdk import SecretsProxyClient, Session, gcp_service_account_secret, oauth2_secret

from oshu_testkit.credential_material import GoogleServiceAccount
from oshu_testkit.gateway_process import GatewayProcess
from oshu_testkit.leaks import assert_no_secret
from oshu_testkit.oauth_standins import API_HOST, AUTH_HOST, GOOGLE_TOKEN_HOST, VERTEX_HOST, TokenServer

from .conftest import run_sandboxed, write_sandbox_files

PREDICT = "/v1/projects/oshu-test/locations/us-east5/publishers/anthropic/models/claude:rawPredict"

#: The sandbox's program: google-auth with GOOGLE_APPLICATION_CREDENTIALS, then the Anthropic SDK's Vertex client.
GOOGLE_AGENT = r"""
import json, sys
import google.auth, google.auth.transport.requests as tr
from anthropic import AnthropicVertex

creds, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
creds.refresh(tr.Request())
r = tr.AuthorizedSession(creds).post(sys.argv[1], json={"anthropic_version": "vertex-2023-10-16", "max_tokens": 8,
                                                        "messages": [{"role": "user", "content": "hi"}]})
client = AnthropicVertex(region="us-east5", project_id="oshu-test", max_retries=0)
msg = client.messages.create(model="claude", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
print(json.dumps({"token": creds.token, "status": r.status_code, "body": r.text, "sdk": msg.content[0].text}))
"""


@pytest.fixture(scope="module")
def tokens() -> Iterator[TokenServer]:
    with TokenServer(names=(AUTH_HOST, API_HOST, GOOGLE_TOKEN_HOST, VERTEX_HOST)) as ts:
        yield ts


@pytest.fixture(scope="module")
def gw(tokens: TokenServer) -> Iterator[GatewayProcess]:
    pins = [a for rule in tokens.connect_to() for a in ("--connect-to", rule)]
    with GatewayProcess(None, extra_args=["--upstream-ca-file", str(tokens.ca_file), *pins]) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def client(gw: GatewayProcess) -> SecretsProxyClient:
    return SecretsProxyClient(gw.base_url, gw.api_key, ca_file=str(gw.ca_file))


def _http(gw: GatewayProcess, s: Session) -> requests.Session:
    env = s.sandbox_env(ca_path=str(gw.ca_file))
    h = requests.Session()
    h.trust_env = False
    h.proxies = {"https": env["HTTPS_PROXY"]}
    h.verify = env["REQUESTS_CA_BUNDLE"]
    return h


def test_oauth2_client_credentials_through_the_gateway(
    gw: GatewayProcess, tokens: TokenServer, client: SecretsProxyClient
) -> None:
    secret = oauth2_secret(
        f"https://{AUTH_HOST}/oauth/token", tokens.client_id, [API_HOST], client_secret=tokens.client_secret
    )
    before = tokens.token_requests
    with client.create_session({"API_TOKEN": secret}) as s, _http(gw, s) as h:
        sealed = s.sandbox_env()["API_TOKEN"]
        answers = [
            h.get(f"https://{API_HOST}/v1/whoami", headers={"Authorization": f"Bearer {sealed}"}, timeout=30)
            for _ in range(3)
        ]
        assert [r.status_code for r in answers] == [200, 200, 200], answers[-1].text
        assert tokens.token_requests - before == 1  # fetched once, then cached
        assert tokens.api_tokens[-1] == tokens.issued[-1]  # the real access token reached the API
        texts: dict[str, str | bytes] = {"gateway log": gw.log_text(), "answers": b"".join(r.content for r in answers)}
        assert_no_secret(texts, [tokens.client_secret, *tokens.issued])


def _google_session(client: SecretsProxyClient, tokens: TokenServer, sa: GoogleServiceAccount) -> Session:
    tokens.google_public_pem = sa.public_pem()
    tokens.google_kid, tokens.google_email = sa.private_key_id, sa.client_email
    return client.create_session({"GOOGLE_SA": gcp_service_account_secret(sa.key_file(), [VERTEX_HOST])})


def _google_sandbox(gw: GatewayProcess, s: Session, creds: Path, home: Path) -> tuple[dict[str, str], dict[str, str]]:
    """The files (written under `creds`) and the environment a sandbox of `s` gets."""
    files = write_sandbox_files(s, creds)
    env = s.sandbox_env(ca_path=str(gw.ca_file), credentials_dir=str(creds))
    return files, env | {"PATH": "/usr/bin:/bin", "HOME": str(home), "GOOGLE_CLOUD_PROJECT": "oshu-test"}


def _google_agent(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_sandboxed([sys.executable, "-c", GOOGLE_AGENT, f"https://{VERTEX_HOST}{PREDICT}"], env)


def test_google_service_account_through_the_gateway(
    gw: GatewayProcess, tokens: TokenServer, client: SecretsProxyClient, tmp_path: Path
) -> None:
    sa = GoogleServiceAccount()
    with _google_session(client, tokens, sa) as s:
        files, env = _google_sandbox(gw, s, tmp_path / "creds", tmp_path)
        google_before, refused_before = tokens.google_requests, len(tokens.refused)
        r = _google_agent(env)
        assert r.returncode == 0, r.stderr[-3000:]
        out: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
        assert out["token"].startswith("SEALED_")  # the access token the sandbox got is sealed
        assert out["status"] == 200 and "Vertex stand-in" in out["body"]
        assert out["sdk"] == "hello from the Vertex stand-in"
        assert tokens.google_requests - google_before >= 1 and len(tokens.refused) == refused_before
        assert tokens.api_tokens[-1].startswith("ya29.") and tokens.api_tokens[-1] in tokens.issued
        agent_key = json.loads(next(iter(files.values())))["private_key"]
        throwaway = serialization.load_pem_private_key(agent_key.encode(), None)
        assert (
            throwaway.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            != sa.public_pem()
        )
        texts: dict[str, str | bytes] = {"gateway log": gw.log_text(), "agent": r.stdout + r.stderr}
        texts |= {p: c for p, c in files.items()}
        assert_no_secret(texts, [*sa.values(), *tokens.issued])


def test_a_google_key_file_signed_by_another_key_gets_no_token(
    gw: GatewayProcess, tokens: TokenServer, client: SecretsProxyClient, tmp_path: Path
) -> None:
    sa = GoogleServiceAccount()
    with _google_session(client, tokens, sa) as s:
        forged = json.loads(next(iter(s.sandbox_files(str(tmp_path)).values())))
        forged["private_key"] = GoogleServiceAccount().private_key_pem  # the sealed key id, another key
        key_file = tmp_path / "forged.json"
        key_file.write_text(json.dumps(forged))
        env = s.sandbox_env(ca_path=str(gw.ca_file)) | {"GOOGLE_APPLICATION_CREDENTIALS": str(key_file)}
        env |= {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
        before = tokens.google_requests
        r = _google_agent(env)
        assert r.returncode != 0 and "assertion_invalid" in r.stderr, r.stderr[-2000:]
        assert tokens.google_requests == before  # refused by the gateway: nothing forwarded


def test_a_sealed_access_token_of_one_session_is_worthless_in_another(
    gw: GatewayProcess, tokens: TokenServer, client: SecretsProxyClient, tmp_path: Path
) -> None:
    """One real key behind two sessions (two sandboxes): the access token A's exchange minted is
    sealed for A only; B's proxy credentials with it get nothing swapped in."""
    sa = GoogleServiceAccount()
    with _google_session(client, tokens, sa) as a, _google_session(client, tokens, sa) as b:
        _, env = _google_sandbox(gw, a, tmp_path / "a", tmp_path)
        r = _google_agent(env)
        assert r.returncode == 0, r.stderr[-3000:]
        sealed_a = json.loads(r.stdout.strip().splitlines()[-1])["token"]
        accepted, refused = len(tokens.api_tokens), tokens.api_refused
        with _http(gw, a) as ha, _http(gw, b) as hb:
            url = f"https://{VERTEX_HOST}{PREDICT}"
            assert ha.post(url, json={}, headers={"Authorization": f"Bearer {sealed_a}"}, timeout=30).status_code == 200
            crossed = hb.post(url, json={}, headers={"Authorization": f"Bearer {sealed_a}"}, timeout=30)
        assert crossed.status_code in (401, 403), crossed.text
        assert len(tokens.api_tokens) == accepted + 1  # only A's own request reached the API with a real token
        assert tokens.api_refused == refused + (crossed.status_code == 401)


def test_an_upstream_echoing_the_access_token_hands_the_sandbox_no_real_token(
    gw: GatewayProcess, tokens: TokenServer, client: SecretsProxyClient
) -> None:
    secret = oauth2_secret(
        f"https://{AUTH_HOST}/oauth/token", tokens.client_id, [API_HOST], client_secret=tokens.client_secret
    )
    with client.create_session({"API_TOKEN": secret}) as s, _http(gw, s) as h:
        sealed = s.sandbox_env()["API_TOKEN"]
        echoed = h.get(f"https://{API_HOST}/v1/echo-token", headers={"Authorization": f"Bearer {sealed}"}, timeout=30)
        assert echoed.status_code == 200 and tokens.api_tokens[-1] in tokens.issued
        assert tokens.api_tokens[-1] not in echoed.text  # scrubbed on the way back
