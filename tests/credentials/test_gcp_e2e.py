"""Google service accounts end to end: google-auth (and the Anthropic SDK's AnthropicVertex) in an
agent process that holds only the agent JSON (a throwaway key made the way the operator makes it,
the sealed key id), through a real sidecar, to a token endpoint stand-in pinned to
oauth2.googleapis.com that verifies assertions with the REAL public key, and a Vertex stand-in."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from oshu_contract.hosts import HostPattern
from oshu_contract.kinds import Kind, agent_service_account, service_account_fields
from oshu_contract.pki import new_rsa_key_pem, rsa_public_pem
from oshu_contract.session import SecretBinding, new_kind_binding, new_sealed_token
from oshu_testkit.leaks import assert_no_secret, scan_sidecar
from oshu_testkit.oauth_standins import GOOGLE_TOKEN_HOST, VERTEX_HOST, TokenServer
from oshu_testkit.sessions import new_session
from oshu_testkit.sidecar_process import SidecarProcess

EMAIL = "agent@oshu-test.iam.gserviceaccount.com"
REAL_KID = "9f8e7d6c5b4a39281706f5e4d3c2b1a098765432"
PREDICT = (
    f"https://{VERTEX_HOST}/v1/projects/oshu-test/locations/us-east5/publishers/anthropic/models/claude:rawPredict"
)

#: The agent: google-auth with the agent JSON (GOOGLE_APPLICATION_CREDENTIALS), through the sidecar.
AGENT = r"""
import json, os, sys
import google.auth.transport.requests as tr
from google.auth import exceptions
from google.oauth2 import service_account

mode, url = sys.argv[1], sys.argv[2]
path = os.environ["GOOGLE_APPLICATION_CREDENTIALS"]
out = {}
if mode == "exchange":
    creds = service_account.Credentials.from_service_account_file(
        path, scopes=["https://www.googleapis.com/auth/cloud-platform"])
    try:
        creds.refresh(tr.Request())
    except exceptions.RefreshError as e:
        print(json.dumps({"refresh_error": str(e)}))
        sys.exit(0)
    out["token"] = creds.token
    r = tr.AuthorizedSession(creds).post(url, json={"anthropic_version": "vertex-2023-10-16", "max_tokens": 8,
                                                    "messages": [{"role": "user", "content": "hi"}]})
    out["status"], out["body"] = r.status_code, r.text
    out["vertex_with_token_elsewhere"] = None
elif mode == "echo":
    creds = service_account.Credentials.from_service_account_file(
        path, scopes=["https://www.googleapis.com/auth/cloud-platform"])
    r = tr.AuthorizedSession(creds).get(url)
    out["status"], out["body"], out["token"] = r.status_code, r.text, creds.token
elif mode == "self-signed":
    creds = service_account.Credentials.from_service_account_file(
        path, scopes=["https://www.googleapis.com/auth/cloud-platform"], always_use_jwt_access=True)
    r = tr.AuthorizedSession(creds).post(url, json={})
    out["status"], out["body"] = r.status_code, r.text
    out["token"] = creds.token
elif mode == "anthropic-vertex":
    from anthropic import AnthropicVertex
    client = AnthropicVertex(region="us-east5", project_id="oshu-test", max_retries=0)
    msg = client.messages.create(model="claude", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    out["text"] = msg.content[0].text
    out["token"] = client.credentials.token
print(json.dumps(out))
"""


@dataclass
class Account:
    real_pem: bytes
    throwaway_pem: bytes
    binding: SecretBinding
    agent_json: bytes

    @property
    def secret_forms(self) -> list[str]:
        """The real private key as PEM, as its DER base64 (one line and as wrapped), and its key id."""
        body = b"".join(line for line in self.real_pem.splitlines() if not line.startswith(b"-----"))
        der = base64.b64decode(body)
        lines = [line.decode() for line in self.real_pem.splitlines() if not line.startswith(b"-----")]
        return [self.real_pem.decode(), base64.b64encode(der).decode(), *lines[1:-1], REAL_KID]


def make_account(hosts: list[str]) -> Account:
    """The way the operator does it: the real JSON from a Secret, a throwaway key per session."""
    real_pem, throwaway = new_rsa_key_pem(), new_rsa_key_pem()
    real_doc = {
        "type": "service_account",
        "project_id": "oshu-test",
        "private_key_id": REAL_KID,
        "private_key": real_pem.decode(),
        "client_email": EMAIL,
        "client_id": "123456789",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    sealed = new_sealed_token()
    fields = service_account_fields(real_doc, rsa_public_pem(throwaway).decode())
    binding = new_kind_binding("GOOGLE_SA", Kind.GCP, sealed, tuple(HostPattern.parse(h) for h in hosts), fields)
    return Account(real_pem, throwaway, binding, agent_service_account(real_doc, sealed, throwaway.decode()))


#: Debug-level logs: every line the sidecar can write is scanned.
DEBUG = ["--log-level", "debug"]


@pytest.fixture
def server() -> Iterator[TokenServer]:
    with TokenServer(names=(GOOGLE_TOKEN_HOST, VERTEX_HOST, "other.oshu.test")) as ts:
        yield ts


def _run_agent(
    sc: SidecarProcess, agent_json: bytes, mode: str, tmp_path: Path, url: str = PREDICT
) -> dict[str, object]:
    key_file = tmp_path / f"agent-{mode}.json"
    key_file.write_bytes(agent_json)
    env = sc.client_env()
    env["GOOGLE_APPLICATION_CREDENTIALS"] = str(key_file)
    env["GOOGLE_CLOUD_PROJECT"] = "oshu-test"
    script = tmp_path / "agent.py"
    script.write_text(AGENT)
    proc = subprocess.run(
        [sys.executable, str(script), mode, url], env=env, capture_output=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    out: dict[str, object] = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    out["_stdout"], out["_stderr"] = proc.stdout.decode(), proc.stderr.decode()
    return out


def _sidecar(ts: TokenServer, account: Account, tmp_path: Path) -> SidecarProcess:
    ts.google_public_pem = rsa_public_pem(account.real_pem)
    ts.google_kid, ts.google_email = REAL_KID, EMAIL
    return SidecarProcess(
        new_session(account.binding),
        directory=tmp_path / "sc",
        connect_to=ts.connect_to(),
        upstream_ca_files=[ts.ca_file],
        extra_args=DEBUG,
    )


def _scan(sc: SidecarProcess, ts: TokenServer, account: Account, outputs: list[dict[str, object]]) -> None:
    values = [*account.secret_forms, *ts.issued]
    scan_sidecar(sc, values)
    assert_no_secret({f"agent output {i}": json.dumps(o) for i, o in enumerate(outputs)}, values)


def test_google_auth_exchange_gets_a_sealed_token_that_works_on_vertex(server: TokenServer, tmp_path: Path) -> None:
    account = make_account([VERTEX_HOST])
    assert account.real_pem not in account.agent_json and REAL_KID.encode() not in account.agent_json
    with _sidecar(server, account, tmp_path) as sc:
        out = _run_agent(sc, account.agent_json, "exchange", tmp_path)
        assert "refresh_error" not in out, out
        token = out["token"]
        assert isinstance(token, str) and token.startswith("SEALED_")
        assert server.google_requests == 1 and server.refused == []
        assert out["status"] == 200 and "Vertex stand-in" in str(out["body"])
        assert server.api_tokens == [server.issued[-1]] and server.issued[-1].startswith("ya29.")
        _scan(sc, server, account, [out])


def test_a_self_signed_jwt_bearer_is_resigned_with_the_real_key(server: TokenServer, tmp_path: Path) -> None:
    account = make_account([VERTEX_HOST])
    with _sidecar(server, account, tmp_path) as sc:
        out = _run_agent(sc, account.agent_json, "self-signed", tmp_path)
        assert out["status"] == 200, out
        assert server.google_requests == 0  # no token exchange: the JWT itself is the bearer
        assert len(server.api_tokens) == 1 and server.api_tokens[0] != out["token"]  # re-signed on the way
        _scan(sc, server, account, [out])


def test_anthropic_vertex_end_to_end(server: TokenServer, tmp_path: Path) -> None:
    account = make_account([VERTEX_HOST])
    with _sidecar(server, account, tmp_path) as sc:
        out = _run_agent(sc, account.agent_json, "anthropic-vertex", tmp_path)
        assert out["text"] == "hello from the Vertex stand-in", out
        assert str(out["token"]).startswith("SEALED_")
        assert server.google_requests == 1 and server.api_tokens == [server.issued[-1]]
        _scan(sc, server, account, [out])


def test_a_jwt_signed_by_another_key_is_refused(server: TokenServer, tmp_path: Path) -> None:
    account = make_account([VERTEX_HOST])
    forged = json.loads(account.agent_json)
    forged["private_key"] = new_rsa_key_pem().decode()  # same sealed key id, another key
    with _sidecar(server, account, tmp_path) as sc:
        out = _run_agent(sc, json.dumps(forged).encode(), "exchange", tmp_path)
        assert "assertion_invalid" in str(out.get("refresh_error")), out
        assert server.google_requests == 0  # refused by the proxy, nothing forwarded
        self_signed = _run_agent(sc, json.dumps(forged).encode(), "self-signed", tmp_path)
        assert self_signed["status"] == 403 and "assertion_invalid" in str(self_signed["body"])
        assert server.api_tokens == []
        _scan(sc, server, account, [out, self_signed])


def test_the_real_key_signing_directly_is_refused_too(server: TokenServer, tmp_path: Path) -> None:
    """Even an assertion signed with the real key is refused: the proxy only honours the session's key."""
    account = make_account([VERTEX_HOST])
    leaked = json.loads(account.agent_json)
    leaked["private_key"] = account.real_pem.decode()
    with _sidecar(server, account, tmp_path) as sc:
        out = _run_agent(sc, json.dumps(leaked).encode(), "exchange", tmp_path)
        assert "assertion_invalid" in str(out.get("refresh_error")), out
        assert server.google_requests == 0


def test_an_api_that_echoes_the_real_token_shows_the_agent_only_the_sealed_one(
    server: TokenServer, tmp_path: Path
) -> None:
    account = make_account([VERTEX_HOST])
    with _sidecar(server, account, tmp_path) as sc:
        out = _run_agent(sc, account.agent_json, "echo", tmp_path, f"https://{VERTEX_HOST}/v1/echo-token")
        assert out["status"] == 200 and server.api_tokens == server.issued[-1:]
        assert json.loads(str(out["body"]))["you_sent"] == out["token"]
        _scan(sc, server, account, [out])


def test_an_api_that_echoes_the_resigned_jwt_shows_the_agent_its_own(server: TokenServer, tmp_path: Path) -> None:
    """A JWT the real key signed is a credential too (for up to an hour): never shown to the agent."""
    account = make_account([VERTEX_HOST])
    with _sidecar(server, account, tmp_path) as sc:
        out = _run_agent(sc, account.agent_json, "self-signed", tmp_path, f"https://{VERTEX_HOST}/v1/echo-token")
        assert out["status"] == 200
        real_jwt = server.api_tokens[-1]
        assert real_jwt != out["token"] and json.loads(str(out["body"]))["you_sent"] == out["token"]
        assert_no_secret({"agent output": json.dumps(out)}, [real_jwt])
        _scan(sc, server, account, [out])
