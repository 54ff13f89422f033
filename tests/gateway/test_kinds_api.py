"""The session API with secrets of kind aws, oauth2 and gcpServiceAccount, on a real gateway process:
the response (sealed stand-ins, env per secret, the Google agent key file), metadata, every bad
input, and the stored form (nothing real in clear in the database, restart keeps it all)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from oshu_testkit.credential_material import AwsKey, GoogleServiceAccount, OAuth2Client, leak_forms
from oshu_testkit.gateway_process import GatewayProcess
from oshu_testkit.leaks import assert_no_secret

JSON = {"Content-Type": "application/json"}
STATIC = "sk-static-kinds-0123456789ab"
BEDROCK = ["bedrock-runtime.us-east-1.amazonaws.com", "bedrock.us-east-1.amazonaws.com"]
VERTEX = ["us-east5-aiplatform.googleapis.com"]


def _post(gw: GatewayProcess, doc: object) -> tuple[int, dict[str, Any], bytes]:
    status, _, body = gw.request("POST", "/v1/sessions", json.dumps(doc).encode(), JSON)
    return status, (json.loads(body) if body else {}), body


@pytest.fixture(scope="module")
def material() -> tuple[AwsKey, OAuth2Client, GoogleServiceAccount]:
    return AwsKey(), OAuth2Client(), GoogleServiceAccount()


def _all_kinds(aws: AwsKey, oauth: OAuth2Client, sa: GoogleServiceAccount) -> dict[str, Any]:
    return {
        "secrets": {
            "AWS": {"kind": "aws", "fields": aws.fields(), "hosts": BEDROCK},
            "IDP_TOKEN": {"kind": "oauth2", "fields": oauth.fields(refresh=True), "hosts": ["api.oshu.test"]},
            "GOOGLE_SA": {"kind": "gcpServiceAccount", "fields": sa.key_file(), "hosts": VERTEX},
            "ANTHROPIC_API_KEY": STATIC,
        }
    }


def _real(material: tuple[AwsKey, OAuth2Client, GoogleServiceAccount]) -> list[str]:
    aws, oauth, sa = material
    return [*aws.values(), *oauth.values(), *sa.values(), STATIC]


def test_create_answers_env_per_secret_and_the_agent_key_file(
    gateway: GatewayProcess, material: tuple[AwsKey, OAuth2Client, GoogleServiceAccount]
) -> None:
    aws, oauth, sa = material
    status, s, raw = _post(gateway, _all_kinds(aws, oauth, sa))
    assert status == 201, raw
    assert_no_secret({"creation response": raw}, _real(material))
    secrets = s["secrets"]
    assert {n: c["kind"] for n, c in secrets.items()} == {
        "AWS": "aws",
        "IDP_TOKEN": "oauth2",
        "GOOGLE_SA": "gcpServiceAccount",
        "ANTHROPIC_API_KEY": "static",
    }
    assert s["sealed_secrets"] == {n: c["sealed"] for n, c in secrets.items()}  # seed field kept, primary token
    env = secrets["AWS"]["env"]
    assert set(env) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
    assert env["AWS_ACCESS_KEY_ID"] == secrets["AWS"]["sealed"]
    assert len({*env.values()}) == 3 and all(v.startswith("SEALED_") for v in env.values())
    assert secrets["IDP_TOKEN"]["env"] == {"IDP_TOKEN": secrets["IDP_TOKEN"]["sealed"]}
    assert secrets["ANTHROPIC_API_KEY"]["env"] == {"ANTHROPIC_API_KEY": s["sealed_secrets"]["ANTHROPIC_API_KEY"]}
    google = secrets["GOOGLE_SA"]
    assert google["env"] == {} and google["agent_json_env"] == ["GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_SA"]
    agent = google["agent_json"]
    assert agent["private_key_id"] == google["sealed"]
    assert (agent["client_email"], agent["token_uri"], agent["project_id"], agent["type"]) == (
        sa.client_email,
        sa.token_uri,
        sa.project_id,
        "service_account",
    )
    throwaway = serialization.load_pem_private_key(agent["private_key"].encode(), None)
    assert isinstance(throwaway, rsa.RSAPrivateKey)
    assert (
        throwaway.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        != sa.public_pem()
    )
    status, _, meta = gateway.request("GET", f"/v1/sessions/{s['session_id']}")
    assert status == 200
    info = json.loads(meta)["secrets"]
    assert info["AWS"] == {"kind": "aws", "hosts": BEDROCK, "locations": ["headers"]}
    assert info["GOOGLE_SA"]["kind"] == "gcpServiceAccount"
    assert_no_secret({"metadata": meta}, _real(material) + [c["sealed"] for c in secrets.values()])
    assert agent["private_key"] not in meta.decode()


def test_two_sessions_get_different_throwaway_keys(gateway: GatewayProcess) -> None:
    sa = GoogleServiceAccount()
    doc = {"secrets": {"G": {"kind": "gcpServiceAccount", "fields": json.dumps(sa.key_file()), "hosts": VERTEX}}}
    keys = set()
    for _ in range(2):
        status, s, raw = _post(gateway, doc)  # the key file may also come as its JSON text
        assert status == 201, raw
        keys.add(s["secrets"]["G"]["agent_json"]["private_key"])
    assert len(keys) == 2


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ({"kind": "kerberos", "fields": {}, "hosts": BEDROCK}, "kind"),
        ({"kind": "aws", "fields": {"accessKeyId": "AKIAONLY00000000"}, "hosts": BEDROCK}, "secretAccessKey"),
        ({"kind": "aws", "fields": "AKIA", "hosts": BEDROCK}, "fields"),
        ({"kind": "aws", "fields": {"accessKeyId": "AKIAX0000000000", "secretAccessKey": "s" * 20}}, "hosts"),
        (
            {
                "kind": "aws",
                "fields": {"accessKeyId": "AKIAX0000000000", "secretAccessKey": "s" * 20, "x": "y"},
                "hosts": BEDROCK,
            },
            "x",
        ),
        ({"kind": "aws", "value": "AKIA0000000000", "hosts": BEDROCK}, "value"),
        ({"kind": "aws", "fields": {}, "hosts": BEDROCK, "locations": ["query"]}, "locations"),
        ({"value": STATIC, "fields": {"a": "b"}, "hosts": ["a.oshu.test"]}, "fields"),
        (
            {
                "kind": "oauth2",
                "fields": {"tokenUrl": "http://auth.oshu.test/t", "clientId": "c"},
                "hosts": ["a.oshu.test"],
            },
            "tokenUrl",
        ),
        (
            {
                "kind": "oauth2",
                "fields": {"tokenUrl": "https://auth.oshu.test/t", "clientId": "c"},
                "hosts": ["a.oshu.test"],
            },
            "clientSecret",
        ),
        ({"kind": "gcpServiceAccount", "fields": "{not json", "hosts": VERTEX}, "key file"),
        ({"kind": "gcpServiceAccount", "fields": {"type": "service_account"}, "hosts": VERTEX}, "private_key"),
    ],
)
def test_bad_kind_specs_are_400_naming_the_field(gateway: GatewayProcess, spec: dict[str, Any], named: str) -> None:
    status, e, raw = _post(gateway, {"secrets": {"S": spec}})
    assert status == 400, raw
    assert e["error"]["code"] == "invalid_request" and named in e["error"]["message"], e
    assert "S" in e["error"]["message"]
    assert_no_secret({"error": raw}, [STATIC, "s" * 20])


def test_at_most_one_aws_and_one_google_secret(gateway: GatewayProcess) -> None:
    a, b = AwsKey(), AwsKey()
    doc = {
        "secrets": {
            "A": {"kind": "aws", "fields": a.fields(), "hosts": BEDROCK},
            "B": {"kind": "aws", "fields": b.fields(), "hosts": BEDROCK},
        }
    }
    status, e, raw = _post(gateway, doc)
    assert status == 400 and "aws" in e["error"]["message"]
    assert_no_secret({"error": raw}, a.values() + b.values())


def test_stored_encrypted_and_kept_across_restart(
    upstream: Any, material: tuple[AwsKey, OAuth2Client, GoogleServiceAccount], tmp_path: Path
) -> None:
    with GatewayProcess(upstream, directory=tmp_path) as gw:
        s = gw.create_session(_all_kinds(*material))
        agent_key = s["secrets"]["GOOGLE_SA"]["agent_json"]["private_key"]
        gw.restart()
        status, _, meta = gw.request("GET", f"/v1/sessions/{s['session_id']}")
        assert status == 200 and json.loads(meta)["secrets"]["AWS"]["kind"] == "aws"
        gw.stop()
        state = b"".join(p.read_bytes() for p in gw.state_dir.glob("sessions.db*"))
        assert state, "no database files"
        sealed = [t for c in s["secrets"].values() for t in c["env"].values()]
        agent_lines = [ln for ln in agent_key.splitlines() if ln and not ln.startswith("-----")]
        for form in leak_forms([*_real(material), *sealed, *agent_lines]):
            assert form not in state, "a real value, sealed token or the agent's key is in clear in the database"
        log = gw.log_text().encode()
        for form in leak_forms(_real(material)):
            assert form not in log


def test_openapi_describes_every_field_of_the_answer(
    gateway: GatewayProcess, material: tuple[AwsKey, OAuth2Client, GoogleServiceAccount]
) -> None:
    from oshu_gateway.api import openapi_document

    schemas = json.loads(openapi_document())["components"]["schemas"]
    s = gateway.create_session(_all_kinds(*material))
    assert set(s) <= set(schemas["Session"]["properties"])
    for entry in s["secrets"].values():
        assert set(entry) <= set(schemas["SecretCredentials"]["properties"])
        assert entry["kind"] in schemas["SecretCredentials"]["properties"]["kind"]["enum"]
    kinds = {
        schemas[ref["$ref"].rsplit("/", 1)[1]]["properties"]["kind"]["const"]
        for ref in schemas["SecretSpec"]["oneOf"]
        if "$ref" in ref
    }
    assert kinds == {"aws", "oauth2", "gcpServiceAccount"}
    for name, spec in _all_kinds(*material)["secrets"].items():
        if isinstance(spec, dict):
            schema = schemas[
                {"aws": "AwsSecretSpec", "oauth2": "OAuth2SecretSpec"}.get(spec["kind"], "GcpServiceAccountSecretSpec")
            ]
            assert set(spec) <= set(schema["properties"]), name
            if spec["kind"] != "gcpServiceAccount":
                assert set(spec["fields"]) <= set(schema["properties"]["fields"]["properties"]), name


def test_openapi_fields_are_the_contracts() -> None:
    from oshu_contract.kinds import FIELDS, REQUIRED_FIELDS, Kind
    from oshu_gateway.api import openapi_document

    schemas = json.loads(openapi_document())["components"]["schemas"]
    for kind, name in ((Kind.AWS, "AwsSecretSpec"), (Kind.OAUTH2, "OAuth2SecretSpec")):
        fields = schemas[name]["properties"]["fields"]
        assert set(fields["properties"]) == FIELDS[kind] and fields["required"] == list(REQUIRED_FIELDS[kind])


@pytest.mark.parametrize(
    ("static_name", "kind_spec"),
    [
        ("AWS_SECRET_ACCESS_KEY", {"kind": "aws", "fields": AwsKey().fields(), "hosts": BEDROCK}),
        (
            "GOOGLE_APPLICATION_CREDENTIALS",
            {"kind": "gcpServiceAccount", "fields": GoogleServiceAccount().key_file(), "hosts": VERTEX},
        ),
    ],
)
def test_two_secrets_setting_one_sandbox_variable_are_refused(
    gateway: GatewayProcess, static_name: str, kind_spec: dict[str, Any]
) -> None:
    doc = {"secrets": {static_name: {"value": STATIC, "hosts": ["api.oshu.test"]}, "CRED": kind_spec}}
    status, e, raw = _post(gateway, doc)
    assert status == 400 and static_name in e["error"]["message"] and "both set" in e["error"]["message"], raw
    assert_no_secret({"error": raw}, [STATIC])


def test_a_google_secret_named_like_its_variable_sets_it_once(gateway: GatewayProcess) -> None:
    spec = {"kind": "gcpServiceAccount", "fields": GoogleServiceAccount().key_file(), "hosts": VERTEX}
    status, s, raw = _post(gateway, {"secrets": {"GOOGLE_APPLICATION_CREDENTIALS": spec}})
    assert status == 201, raw
    assert s["secrets"]["GOOGLE_APPLICATION_CREDENTIALS"]["agent_json_env"] == ["GOOGLE_APPLICATION_CREDENTIALS"]


@pytest.mark.parametrize("kind", ["static", "aws", "oauth2", "gcpServiceAccount"])
def test_the_sandbox_variables_are_the_webhooks(
    gateway: GatewayProcess, material: tuple[AwsKey, OAuth2Client, GoogleServiceAccount], kind: str
) -> None:
    """A sandbox gets the same variables in both modes: the gateway's answer against the operator's
    injected_env_names for each kind."""
    from oshu_contract.kinds import Kind
    from oshu_operator.credspec import injected_env_names

    spec: Any = _all_kinds(*material)["secrets"][
        {"static": "ANTHROPIC_API_KEY", "aws": "AWS", "oauth2": "IDP_TOKEN", "gcpServiceAccount": "GOOGLE_SA"}[kind]
    ]
    status, s, raw = _post(
        gateway, {"secrets": {"MY_CRED": spec if kind != "static" else {"value": STATIC, "hosts": ["api.oshu.test"]}}}
    )
    assert status == 201, raw
    answer = s["secrets"]["MY_CRED"]
    assert sorted([*answer["env"], *answer.get("agent_json_env", [])]) == sorted(
        injected_env_names("MY_CRED", Kind(kind))
    )
