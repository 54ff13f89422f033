"""Credential kinds in the operator without a cluster (issue 11): the spec per kind, the session file
and agent file the reconciler writes, and the env the webhook injects.

Every scenario scans what the agent can read (env, the CA volume's files), the status and the
events for every form of the real material it used.
"""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from oshu_contract.kinds import Kind
from oshu_contract.pki import new_rsa_key_pem, rsa_public_pem
from oshu_contract.session import loads_session
from oshu_operator import names as n
from oshu_operator import reconcile_plan as rp
from oshu_operator.config import OperatorConfig, SidecarConfig
from oshu_operator.injection import NotReady, Refused, SessionView, plan, volumes
from oshu_operator.spec import SpecError, parse_spec
from oshu_operator.status import status_patch
from oshu_testkit.credential_material import AwsKey, GoogleServiceAccount, OAuth2Client, leak_forms

from .test_reconcile_plan import CFG, NOW, NS, b64, no_value_in_words, session_body, session_file, stored, with_status

AWS = AwsKey()
OAUTH = OAuth2Client()
SA = GoogleServiceAccount()
REALS = AWS.values() + OAUTH.values() + SA.values()
INJECT_CFG = OperatorConfig(sidecar=SidecarConfig(image="registry.test/oshu-sidecar:1"), no_proxy=("localhost",))


def aws_entry(**over: Any) -> dict[str, Any]:
    return {
        "name": "AWS",
        "kind": "aws",
        "secretRef": {"name": "aws"},
        "hosts": ["bedrock-runtime.us-east-1.amazonaws.com"],
        **over,
    }


def oauth_entry(**over: Any) -> dict[str, Any]:
    return {
        "name": "API_TOKEN",
        "kind": "oauth2",
        "secretRef": {"name": "oauth"},
        "oauth2": {"tokenUrl": OAUTH.token_url, "scopes": ["read", "write"], "clientAuth": "post"},
        "hosts": ["api.oshu.test"],
        **over,
    }


def gcp_entry(**over: Any) -> dict[str, Any]:
    return {
        "name": "GOOGLE_SA",
        "kind": "gcpServiceAccount",
        "secretKeyRef": {"name": "google", "key": "key.json"},
        "hosts": ["us-east5-aiplatform.googleapis.com"],
        **over,
    }


def secret(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": NS}, "data": {k: b64(v) for k, v in data.items()}}


def refs(session_token: bool = True, oauth: dict[str, str] | None = None, sa: dict[str, Any] | None = None):
    aws = {"AWS_ACCESS_KEY_ID": AWS.access_key_id, "AWS_SECRET_ACCESS_KEY": AWS.secret_access_key}
    if session_token:
        aws["AWS_SESSION_TOKEN"] = AWS.session_token + "\n"  # a file's newline is dropped
    default_oauth = {"client_id": OAUTH.client_id, "client_secret": OAUTH.client_secret}
    return {
        "aws": secret("aws", aws),
        "oauth": secret("oauth", default_oauth if oauth is None else oauth),
        "google": secret("google", {"key.json": json.dumps(sa or SA.key_file())}),
    }


def no_leak(*blobs: bytes | str) -> None:
    forms = leak_forms(REALS)
    for blob in blobs:
        raw = blob.encode() if isinstance(blob, str) else blob
        found = [f[:12] for f in forms if f in raw]
        assert not found, f"real material in agent-visible or status output: {found}"


def all_kinds() -> dict[str, Any]:
    return session_body(aws_entry(), oauth_entry(), gcp_entry())


# --- spec ----------------------------------------------------------------------------------------


def test_spec_parses_each_kind() -> None:
    spec = parse_spec(all_kinds()["spec"])
    aws, oauth, gcp = spec.secrets
    assert (aws.kind, aws.secret_name, aws.key) == (Kind.AWS, "aws", "")
    assert oauth.kind is Kind.OAUTH2 and oauth.oauth2 is not None
    assert oauth.oauth2.fields() == {"tokenUrl": OAUTH.token_url, "clientAuth": "post", "scope": "read write"}
    assert (gcp.kind, gcp.secret_name, gcp.key) == (Kind.GCP, "google", "key.json")
    assert parse_spec(session_body()["spec"]).secrets[0].kind is Kind.STATIC


@pytest.mark.parametrize(
    "entries, fragment",
    [
        ([aws_entry(secretKeyRef={"name": "aws", "key": "k"})], "secretKeyRef does not apply to kind aws"),
        ([aws_entry(secretRef=None)], "spec.secrets[0].secretRef must name a Secret"),
        ([aws_entry(secretRef={"name": "Bad_Name"})], "secretRef.name must be a Secret name"),
        ([gcp_entry(secretKeyRef=None, secretRef={"name": "google"})], "secretRef does not apply"),
        ([oauth_entry(oauth2=None)], "oauth2 must give at least tokenUrl"),
        ([oauth_entry(oauth2={"tokenUrl": "http://auth.oshu.test/t"})], "oauth2.tokenUrl must be an https URL"),
        ([oauth_entry(oauth2={"tokenUrl": OAUTH.token_url, "scopes": ["a b"]})], "scopes[0] must be a scope"),
        ([oauth_entry(oauth2={"tokenUrl": OAUTH.token_url, "scopes": "read"})], "scopes must be a list"),
        ([oauth_entry(oauth2={"tokenUrl": OAUTH.token_url, "clientAuth": "jwt"})], "clientAuth must be one of"),
        ([oauth_entry(oauth2={"tokenUrl": OAUTH.token_url, "audience": ""})], "audience must be a non-empty"),
        ([aws_entry(oauth2={"tokenUrl": OAUTH.token_url})], "oauth2 applies to kind oauth2 only"),
        ([aws_entry(locations=["query"])], "locations applies to kinds static and oauth2 only"),
        ([aws_entry(kind="kerberos")], "spec.secrets[0].kind must be one of"),
        ([aws_entry(), aws_entry(name="AWS2")], "AWS and AWS2 are both of kind aws"),
        ([gcp_entry(), gcp_entry(name="G2")], "GOOGLE_SA and G2 are both of kind gcpServiceAccount"),
        (
            [
                aws_entry(),
                {"name": "AWS_SECRET_ACCESS_KEY", "secretKeyRef": {"name": "x", "key": "k"}, "hosts": ["a.test"]},
            ],
            "AWS and AWS_SECRET_ACCESS_KEY would both set AWS_SECRET_ACCESS_KEY",
        ),
        (
            [
                gcp_entry(),
                {
                    "name": "GOOGLE_APPLICATION_CREDENTIALS",
                    "secretKeyRef": {"name": "x", "key": "k"},
                    "hosts": ["a.test"],
                },
            ],
            "would both set GOOGLE_APPLICATION_CREDENTIALS",
        ),
    ],
)
def test_spec_refuses_wrong_combinations(entries: list[dict[str, Any]], fragment: str) -> None:
    entries = [{k: v for k, v in e.items() if v is not None} for e in entries]
    with pytest.raises(SpecError) as err:
        parse_spec({"secrets": entries})
    assert fragment in str(err.value)


def test_gcp_entry_named_like_the_google_variable_is_one_variable() -> None:
    spec = parse_spec({"secrets": [gcp_entry(name="GOOGLE_APPLICATION_CREDENTIALS")]})
    assert spec.secrets[0].kind is Kind.GCP


# --- the reconciler's session file and agent file -------------------------------------------------


def test_every_kind_becomes_its_session_file_entry_and_status_tokens() -> None:
    body = all_kinds()
    p = rp.plan(body, None, refs(), NOW, CFG)
    assert p.outcome.phase == n.PHASE_READY, p.outcome.message
    tokens = p.outcome.tokens
    assert set(tokens) == {"AWS", "AWS.secretAccessKey", "AWS.sessionToken", "API_TOKEN", "GOOGLE_SA"}
    session = loads_session(base64.b64decode(p.secret["data"][n.KEY_SESSION_FILE]))
    aws, oauth, gcp = session.secrets
    assert aws.kind is Kind.AWS and aws.sealed == tokens["AWS"]
    assert aws.fields == AWS.fields() and aws.sealed_fields == {
        "secretAccessKey": tokens["AWS.secretAccessKey"],
        "sessionToken": tokens["AWS.sessionToken"],
    }
    assert oauth.fields == {
        "tokenUrl": OAUTH.token_url,
        "clientId": OAUTH.client_id,
        "clientSecret": OAUTH.client_secret,
        "scope": "read write",
        "clientAuth": "post",
    }
    assert gcp.fields["privateKey"] == SA.private_key_pem and gcp.fields["privateKeyId"] == SA.private_key_id
    assert gcp.sealed == tokens["GOOGLE_SA"]
    no_value_in_words(p, *REALS)
    no_leak(json.dumps(status_patch({}, p.outcome, 1, NOW)), json.dumps(rp.event_for({}, p.outcome)))


def test_aws_session_token_is_sealed_only_when_the_secret_has_one() -> None:
    body = session_body(aws_entry())
    p = rp.plan(body, None, refs(session_token=False), NOW, CFG)
    assert set(p.outcome.tokens) == {"AWS", "AWS.secretAccessKey"}
    entry = session_file(p)["secrets"][0]
    assert set(entry["sealedFields"]) == {"secretAccessKey"} and "sessionToken" not in entry["fields"]
    # the key appears later: the earlier tokens stay, the new one is minted
    again = rp.plan(with_status(body, p), stored(p), refs(), NOW, CFG)
    assert {k: again.outcome.tokens[k] for k in p.outcome.tokens} == p.outcome.tokens
    assert "AWS.sessionToken" in again.outcome.tokens


def test_tokens_and_the_throwaway_key_are_stable_across_reconciles() -> None:
    body = all_kinds()
    first = rp.plan(body, None, refs(), NOW, CFG)
    again = rp.plan(with_status(body, first), stored(first), refs(), NOW, CFG)
    assert again.outcome.tokens == first.outcome.tokens
    key = n.agent_file_key("GOOGLE_SA")
    assert again.secret["data"][key] == first.secret["data"][key]
    assert rp.secret_write(stored(first), again.secret, body["metadata"]["uid"])[0] is None  # nothing to write
    # a lost status alone changes nothing either (the session file remembers the sealed fields)
    lost = rp.plan(body, stored(first), refs(), NOW, CFG)
    assert lost.outcome.tokens == first.outcome.tokens and lost.secret["data"] == first.secret["data"]


def test_gcp_agent_file_holds_the_throwaway_key_and_the_sealed_key_id_only() -> None:
    p = rp.plan(all_kinds(), None, refs(), NOW, CFG)
    agent_raw = base64.b64decode(p.secret["data"][n.agent_file_key("GOOGLE_SA")])
    agent = json.loads(agent_raw)
    assert agent["private_key_id"] == p.outcome.tokens["GOOGLE_SA"]
    assert agent["client_email"] == SA.client_email and agent["token_uri"] == SA.token_uri
    assert agent["project_id"] == SA.project_id and agent["type"] == "service_account"
    entry = next(s for s in session_file(p)["secrets"] if s["name"] == "GOOGLE_SA")
    assert entry["fields"]["sessionPublicKey"] == rsa_public_pem(agent["private_key"].encode()).decode()
    assert agent["private_key"] != SA.private_key_pem
    no_leak(agent_raw)
    # what the app containers' CA volume projects: nothing real either
    items = next(v for v in volumes("s", ["agent-GOOGLE_SA.json"]) if v["name"] == n.VOLUME_CA)["secret"]["items"]
    projected = [base64.b64decode(p.secret["data"][i["key"]]) for i in items]
    assert [i["key"] for i in items] == [n.KEY_CA_CERT, n.KEY_CA_BUNDLE, "agent-GOOGLE_SA.json"]
    no_leak(*projected)


def test_the_session_ca_covers_the_gcp_token_endpoint() -> None:
    p = rp.plan(all_kinds(), None, refs(), NOW, CFG)
    cert = x509.load_pem_x509_certificate(base64.b64decode(p.secret["data"][n.KEY_CA_CERT]))
    nc = cert.extensions.get_extension_for_class(x509.NameConstraints).value
    permitted = {d.value for d in nc.permitted_subtrees or []}
    assert {"oauth2.googleapis.com", "us-east5-aiplatform.googleapis.com", "api.oshu.test"} <= permitted


@pytest.mark.parametrize(
    "references, reason, fragment",
    [
        (
            refs(oauth={"client_secret": OAUTH.client_secret}),
            "SecretKeyNotFound",
            "Secret oauth has no key client_id (for API_TOKEN)",
        ),
        (refs(oauth={"client_id": OAUTH.client_id}), "SecretKeyNotFound", "neither client_secret nor refresh_token"),
        (
            {**refs(), "aws": secret("aws", {"AWS_ACCESS_KEY_ID": AWS.access_key_id})},
            "SecretKeyNotFound",
            "no key AWS_SECRET_ACCESS_KEY",
        ),
        (
            {
                **refs(),
                "aws": secret("aws", {"AWS_ACCESS_KEY_ID": "AKIA1", "AWS_SECRET_ACCESS_KEY": AWS.secret_access_key}),
            },
            "SecretValueInvalid",
            "fields.accessKeyId must be at least 8",
        ),
        (
            {**refs(), "google": secret("google", {"key.json": SA.private_key_pem})},
            "SecretValueInvalid",
            "not a service-account JSON document",
        ),
        (
            {**refs(), "google": secret("google", {"key.json": "[1]"})},
            "SecretValueInvalid",
            "not a service-account JSON object",
        ),
        (
            refs(sa={**SA.key_file(), "client_email": ""}),
            "SecretValueInvalid",
            "client_email must be a non-empty string",
        ),
        (
            refs(sa={**SA.key_file(), "private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}),
            "SecretValueInvalid",
            "private_key is not an RSA private key",
        ),
        (
            {**refs(), "google": {"metadata": {"name": "google"}, "data": {"key.json": "!!"}}},
            "SecretValueInvalid",
            "is not UTF-8 text",
        ),
    ],
)
def test_unusable_material_is_pending_naming_keys_never_values(
    references: dict[str, Any], reason: str, fragment: str
) -> None:
    p = rp.plan(all_kinds(), None, references, NOW, CFG)
    assert p.outcome.phase == n.PHASE_PENDING and p.outcome.reason == reason
    assert fragment in p.outcome.message, p.outcome.message
    no_value_in_words(p, *REALS)
    no_leak(p.outcome.message)


def test_an_unreadable_stored_agent_file_gets_a_new_throwaway_key() -> None:
    body = all_kinds()
    first = rp.plan(body, None, refs(), NOW, CFG)
    broken = stored(first)
    broken["data"] = dict(broken["data"], **{n.agent_file_key("GOOGLE_SA"): b64('{"private_key": "nope"}')})
    again = rp.plan(with_status(body, first), broken, refs(), NOW, CFG)
    agent = json.loads(base64.b64decode(again.secret["data"][n.agent_file_key("GOOGLE_SA")]))
    serialization.load_pem_private_key(agent["private_key"].encode(), None)
    assert again.outcome.tokens == first.outcome.tokens and again.outcome.ready


def test_agent_files_never_replace_the_session_secrets_own_keys() -> None:
    from oshu_contract.pki import new_ca
    from oshu_operator.material import secret_data

    with pytest.raises(ValueError, match="would replace a session Secret key"):
        secret_data(b"{}", new_ca("x"), files={n.KEY_CA_KEY: b"x"})


# --- the webhook ---------------------------------------------------------------------------------


def view(body: dict[str, Any], p: rp.Plan) -> SessionView:
    return SessionView.from_body(with_status(body, p))


def agent_pod(**over: Any) -> dict[str, Any]:
    container = {"name": "agent", "image": "agent:1", **over}
    return {
        "metadata": {"name": "p", "namespace": NS, "labels": {n.LABEL_SESSION: "claude"}},
        "spec": {"containers": [container]},
    }


def injected(pod: dict[str, Any], session: SessionView) -> dict[str, Any]:
    out = copy.deepcopy(pod)
    plan(out, session, INJECT_CFG).apply(out)
    return out


def test_webhook_env_per_kind() -> None:
    body = all_kinds()
    p = rp.plan(body, None, refs(), NOW, CFG)
    out = injected(agent_pod(), view(body, p))
    env = {e["name"]: e["value"] for e in out["spec"]["containers"][0]["env"]}
    tokens = p.outcome.tokens
    path = f"{n.CA_MOUNT_DIR}/agent-GOOGLE_SA.json"
    assert env[n.AWS_ACCESS_KEY_ID] == tokens["AWS"]
    assert env[n.AWS_SECRET_ACCESS_KEY] == tokens["AWS.secretAccessKey"]
    assert env[n.AWS_SESSION_TOKEN] == tokens["AWS.sessionToken"]
    assert "AWS" not in env  # the aws entry's name is not a variable
    assert env["API_TOKEN"] == tokens["API_TOKEN"]
    assert env["GOOGLE_SA"] == path and env[n.ENV_GOOGLE_CREDENTIALS] == path
    ca_vol = next(v for v in out["spec"]["volumes"] if v["name"] == n.VOLUME_CA)
    assert {"key": "agent-GOOGLE_SA.json", "path": "agent-GOOGLE_SA.json"} in ca_vol["secret"]["items"]
    no_leak(json.dumps(out))
    assert out == injected(out, view(body, p))  # idempotent


def test_webhook_without_a_session_token_sets_no_aws_session_token() -> None:
    body = session_body(aws_entry())
    p = rp.plan(body, None, refs(session_token=False), NOW, CFG)
    env = {e["name"] for e in injected(agent_pod(), view(body, p))["spec"]["containers"][0]["env"]}
    assert {n.AWS_ACCESS_KEY_ID, n.AWS_SECRET_ACCESS_KEY} <= env and n.AWS_SESSION_TOKEN not in env


def test_webhook_waits_for_the_sealed_secret_access_key() -> None:
    body = session_body(aws_entry())
    p = rp.plan(body, None, refs(), NOW, CFG)
    status = with_status(body, p)["status"]
    status["tokens"] = {"AWS": status["tokens"]["AWS"]}
    with pytest.raises(NotReady, match="no sealed token yet for AWS"):
        SessionView.from_body(dict(body, status=status)).check_usable()
    view(body, p).check_usable()  # with every token: usable


def test_webhook_refuses_a_container_setting_an_aws_variable_itself() -> None:
    body = session_body(aws_entry())
    p = rp.plan(body, None, refs(), NOW, CFG)
    pod = agent_pod(env=[{"name": n.AWS_SECRET_ACCESS_KEY, "value": "my-own"}])
    with pytest.raises(Refused, match="sets AWS_SECRET_ACCESS_KEY itself"):
        plan(pod, view(body, p), INJECT_CFG)


def test_webhook_refuses_mounting_a_secret_ref_secret() -> None:
    """The aws and oauth2 Secrets (secretRef) are real keys' Secrets to admission, like secretKeyRef ones."""
    body = all_kinds()
    p = rp.plan(body, None, refs(), NOW, CFG)
    session = view(body, p)
    assert set(session.source_secrets) == {"aws", "oauth", "google"}
    pod = agent_pod(volumeMounts=[{"name": "k", "mountPath": "/k"}])
    pod["spec"]["volumes"] = [{"name": "k", "secret": {"secretName": "aws"}}]
    with pytest.raises(Refused):
        plan(pod, session, INJECT_CFG)


def test_throwaway_helpers_fit_google_auth() -> None:
    """google-auth loads the agent's file as a service account and signs with the throwaway key."""
    from google.oauth2 import service_account

    p = rp.plan(all_kinds(), None, refs(), NOW, CFG)
    info = json.loads(base64.b64decode(p.secret["data"][n.agent_file_key("GOOGLE_SA")]))
    creds = service_account.Credentials.from_service_account_info(info)
    assert creds.service_account_email == SA.client_email
    signature = creds.signer.sign(b"payload")
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    public = serialization.load_pem_public_key(rsa_public_pem(info["private_key"].encode()))
    assert isinstance(public, rsa.RSAPublicKey)
    public.verify(signature, b"payload", padding.PKCS1v15(), hashes.SHA256())
    assert creds.signer.key_id == p.outcome.tokens["GOOGLE_SA"]
    assert new_rsa_key_pem() != new_rsa_key_pem()
