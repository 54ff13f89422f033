"""Credential kinds through the real API server (issue 11): the CRD's CEL rules for the kind
combinations, the operator reconciling each kind into its session file and agent file, and the
webhook injecting each kind's env into a stored pod. Nothing real in status, events or the pod.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from oshu_contract.kinds import Kind
from oshu_contract.pki import rsa_public_pem
from oshu_contract.session import loads_session
from oshu_operator import names as n
from oshu_testkit.credential_material import AwsKey, GoogleServiceAccount, OAuth2Client, leak_forms
from oshu_testkit.kube import pod, wait_for

AWS_HOST = "bedrock-runtime.us-east-1.amazonaws.com"


def aws(**over: Any) -> dict[str, Any]:
    return {"name": "AWS", "kind": "aws", "secretRef": {"name": "aws"}, "hosts": [AWS_HOST], **over}


def oauth(**over: Any) -> dict[str, Any]:
    return {
        "name": "API_TOKEN",
        "kind": "oauth2",
        "secretRef": {"name": "oauth"},
        "oauth2": {"tokenUrl": "https://auth.oshu.test/oauth/token", "scopes": ["read"]},
        "hosts": ["api.oshu.test"],
        **over,
    }


def gcp(**over: Any) -> dict[str, Any]:
    return {
        "name": "GOOGLE_SA",
        "kind": "gcpServiceAccount",
        "secretKeyRef": {"name": "google", "key": "key.json"},
        "hosts": ["us-east5-aiplatform.googleapis.com"],
        **over,
    }


def static(name: str = "KEY", **over: Any) -> dict[str, Any]:
    return {"name": name, "secretKeyRef": {"name": "s", "key": "k"}, "hosts": ["a.oshu.test"], **over}


def body(ns: str, *secrets: dict[str, Any]) -> dict[str, Any]:
    clean = [{k: v for k, v in s.items() if v is not None} for s in secrets]
    return {
        "apiVersion": n.API_VERSION,
        "kind": n.KIND,
        "metadata": {"name": "cel", "namespace": ns},
        "spec": {"secrets": clean},
    }


@pytest.mark.parametrize(
    "secrets, message",
    [
        (
            [aws(secretRef=None, secretKeyRef={"name": "aws", "key": "k"})],
            "kinds aws and oauth2 name a Secret with secretRef",
        ),
        ([aws(secretKeyRef={"name": "aws", "key": "k"})], "kinds aws and oauth2 name a Secret with secretRef"),
        ([static(secretKeyRef=None, secretRef={"name": "s"})], "static and gcpServiceAccount name a Secret and a key"),
        (
            [gcp(secretKeyRef=None, secretRef={"name": "google"})],
            "static and gcpServiceAccount name a Secret and a key",
        ),
        ([oauth(oauth2=None)], "oauth2 (tokenUrl, scopes, ...) is required for kind oauth2"),
        (
            [static(oauth2={"tokenUrl": "https://a.test/t"})],
            "oauth2 (tokenUrl, scopes, ...) is required for kind oauth2",
        ),
        ([oauth(oauth2={"tokenUrl": "http://auth.oshu.test/t"})], "tokenUrl must be an https URL"),
        ([oauth(oauth2={"tokenUrl": "https://a.test/t", "clientAuth": "jwt"})], "Unsupported value"),
        ([aws(locations=["query"])], "locations applies to kinds static and oauth2 only"),
        ([aws(kind="kerberos")], "Unsupported value"),
        ([aws(), aws(name="AWS2")], "at most one secret of kind aws"),
        ([gcp(), gcp(name="G2")], "at most one secret of kind gcpServiceAccount"),
        ([aws(), static("AWS_SESSION_TOKEN")], "no other secret may be named AWS_ACCESS_KEY_ID"),
        (
            [gcp(), static("GOOGLE_APPLICATION_CREDENTIALS")],
            "no other secret may be named GOOGLE_APPLICATION_CREDENTIALS",
        ),
    ],
)
def test_cel_refuses_wrong_kind_combinations(kube, ns, secrets: list[dict[str, Any]], message: str) -> None:
    made = kube.create(body(ns, *secrets), "--dry-run=server")
    assert not made.ok and message in made.error, made.error


def test_cel_accepts_each_kind_and_defaults_static(kube, ns) -> None:
    made = kube.create(
        body(
            ns,
            static(),
            aws(),
            oauth(oauth2={"tokenUrl": "https://a.test:8443/t", "clientAuth": "post"}),
            gcp(name="GOOGLE_APPLICATION_CREDENTIALS"),
        ),
        "--dry-run=server",
    )
    assert made.ok, made.error
    assert made.obj is not None
    assert [s["kind"] for s in made.obj["spec"]["secrets"]] == ["static", "aws", "oauth2", "gcpServiceAccount"]
    made = kube.create(
        body(ns, static("AWS_ACCESS_KEY_ID"), static("GOOGLE_APPLICATION_CREDENTIALS")), "--dry-run=server"
    )
    assert made.ok, made.error  # without those kinds the names are the user's


def test_operator_and_webhook_serve_every_kind(kube, ns, operator, real_values: set[str]) -> None:
    key, client, sa = AwsKey(), OAuth2Client(), GoogleServiceAccount()
    real_values.update(key.values() + client.values() + sa.values())  # the final leak scan looks for them too
    kube.secret(ns, "aws", {"AWS_ACCESS_KEY_ID": key.access_key_id, "AWS_SECRET_ACCESS_KEY": key.secret_access_key})
    kube.secret(ns, "oauth", {"client_id": client.client_id, "client_secret": client.client_secret})
    kube.secret(ns, "google", {"key.json": json.dumps(sa.key_file())})
    kube.session(ns, "kinds", [aws(), oauth(), gcp()])
    status = kube.wait_phase(ns, "kinds", n.PHASE_READY)
    tokens = status["tokens"]
    assert set(tokens) == {"AWS", "AWS.secretAccessKey", "API_TOKEN", "GOOGLE_SA"}

    data = kube.session_secret(ns, "kinds")
    assert data is not None
    session = loads_session(data[n.KEY_SESSION_FILE])
    assert [s.kind for s in session.secrets] == [Kind.AWS, Kind.OAUTH2, Kind.GCP]
    assert session.secrets[0].sealed_fields == {"secretAccessKey": tokens["AWS.secretAccessKey"]}
    agent = json.loads(data[n.agent_file_key("GOOGLE_SA")])
    assert agent["private_key_id"] == tokens["GOOGLE_SA"]
    assert session.secrets[2].fields["sessionPublicKey"].encode() == rsa_public_pem(agent["private_key"].encode())

    made = kube.create(pod("agent", "kinds", [{"name": "agent", "image": "agent:1"}]), "-n", ns)
    assert made.ok, made.error
    assert made.obj is not None
    env = {e["name"]: e.get("value") for e in made.obj["spec"]["containers"][0]["env"]}
    path = n.agent_file_path("GOOGLE_SA")
    assert env[n.AWS_ACCESS_KEY_ID] == tokens["AWS"]
    assert env[n.AWS_SECRET_ACCESS_KEY] == tokens["AWS.secretAccessKey"] and n.AWS_SESSION_TOKEN not in env
    assert env["API_TOKEN"] == tokens["API_TOKEN"]
    assert env[n.ENV_GOOGLE_CREDENTIALS] == path and env["GOOGLE_SA"] == path
    ca = next(v for v in made.obj["spec"]["volumes"] if v["name"] == n.VOLUME_CA)
    assert n.agent_file_key("GOOGLE_SA") in [i["key"] for i in ca["secret"]["items"]]

    # rotation: a session token added to the aws Secret (a secretRef) reaches the session at once
    kube.secret(
        ns,
        "aws",
        {
            "AWS_ACCESS_KEY_ID": key.access_key_id,
            "AWS_SECRET_ACCESS_KEY": key.secret_access_key,
            "AWS_SESSION_TOKEN": key.session_token,
        },
    )
    status = wait_for(
        lambda: (s := kube.status(ns, "kinds")).get("tokens", {}).get("AWS.sessionToken") and s,
        timeout=20,  # well under the resync interval: the Secret's event triggered it
        what="AWS.sessionToken in status",
    )
    assert {k: status["tokens"][k] for k in tokens} == tokens  # the earlier tokens stay

    visible = json.dumps(made.obj) + json.dumps(kube.status(ns, "kinds")) + json.dumps(kube.events(ns))
    visible += operator.log_text() + operator.metrics_text()
    visible += (
        base64.b64encode(data[n.agent_file_key("GOOGLE_SA")]).decode() + data[n.agent_file_key("GOOGLE_SA")].decode()
    )
    found = [f[:10] for f in leak_forms(key.values() + client.values() + sa.values()) if f in visible.encode()]
    assert not found, f"real material where the agent or a user reading status/events sees it: {found}"
