"""The Python SDK with the other kinds against a real gateway: the helpers build what the API takes,
`sandbox_env()` holds each secret's env and the Google key file's path, `sandbox_files()` the
agent key file; nothing real in any of it. (The SDK's no-dependency install is proven by
test_sdk_python.py; this one imports it in-process.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from oshu_vault_sdk import (
    KIND_AWS,
    KIND_GCP,
    SecretsProxyClient,
    SecretsProxyError,
    aws_secret,
    gcp_service_account_secret,
    oauth2_secret,
)

from oshu_testkit.credential_material import AwsKey, GoogleServiceAccount, OAuth2Client
from oshu_testkit.gateway_process import GatewayProcess
from oshu_testkit.leaks import assert_no_secret


def test_python_sdk_kinds_env_and_files(gateway: GatewayProcess, tmp_path: Path) -> None:
    aws, oauth, sa = AwsKey(), OAuth2Client(), GoogleServiceAccount()
    key_file = tmp_path / "sa.json"
    key_file.write_text(json.dumps(sa.key_file()))
    client = SecretsProxyClient(gateway.base_url, gateway.api_key, ca_file=str(gateway.ca_file))
    with client.create_session(
        {
            "AWS": aws_secret(aws.access_key_id, aws.secret_access_key, ["bedrock-runtime.us-east-1.amazonaws.com"]),
            "IDP": oauth2_secret(
                oauth.token_url, oauth.client_id, ["api.oshu.test"], client_secret=oauth.client_secret, scope="read"
            ),
            "GOOGLE_SA": gcp_service_account_secret(key_file, ["us-east5-aiplatform.googleapis.com"]),
        }
    ) as s:
        assert s.secrets["AWS"].kind == KIND_AWS and s.secrets["GOOGLE_SA"].kind == KIND_GCP
        env = s.sandbox_env(ca_path="/sandbox/ca.pem", credentials_dir="/sandbox/creds")
        files = s.sandbox_files("/sandbox/creds")
        assert env["AWS_ACCESS_KEY_ID"] == s.sealed_secrets["AWS"]
        assert env["AWS_SECRET_ACCESS_KEY"].startswith("SEALED_") and "AWS_SESSION_TOKEN" not in env
        assert env["IDP"] == s.sealed_secrets["IDP"]
        path = "/sandbox/creds/agent-GOOGLE_SA.json"
        assert env["GOOGLE_APPLICATION_CREDENTIALS"] == env["GOOGLE_SA"] == path
        assert "AWS" not in env  # an aws secret's name is not a variable; its AWS_* ones are
        agent = json.loads(files[path])
        assert list(files) == [path]
        assert agent["private_key_id"] == s.sealed_secrets["GOOGLE_SA"] and agent["client_email"] == sa.client_email
        serialization.load_pem_private_key(agent["private_key"].encode(), None)  # a usable key, the throwaway
        assert env["HTTPS_PROXY"] == s.proxy_url and env["AWS_CA_BUNDLE"] == "/sandbox/ca.pem"
        assert_no_secret(
            {"env": json.dumps(env), "files": json.dumps(files), "repr": repr(s)},
            [*aws.values(), *oauth.values(), *sa.values()],
        )
        sid = s.session_id
    with pytest.raises(SecretsProxyError) as gone:  # deleted on exit
        client.get_session(sid)
    assert gone.value.status == 404


def test_sdk_falls_back_to_sealed_secrets_from_an_older_gateway() -> None:
    """A response without `secrets` (a gateway before the kinds) still gives the sealed values as env."""
    from oshu_vault_sdk import Session

    s = Session("sess_x", "tok_x", {"K": "SEALED_" + "a" * 40}, "https://sess_x:tok_x@gw:8443", "2030-01-01T00:00:00Z")
    env = s.sandbox_env()
    assert env["K"] == "SEALED_" + "a" * 40 and s.sandbox_files() == {}
