"""Credential kinds in the session file (issue 11): aws, oauth2, gcpServiceAccount next to static.

What the writer builds the reader accepts (round trip), what either refuses names the field and
never the value, and the helpers shared by the operator and the gateway (the agent's
service-account JSON, the throwaway RSA key) keep real material out of the agent's copy.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest

from oshu_contract.hosts import HostPattern
from oshu_contract.kinds import (
    FIELDS,
    SEALED_FIELDS,
    SECRET_FIELDS,
    FieldError,
    Kind,
    agent_service_account,
    parse_kind,
    service_account_fields,
    url_host_pattern,
)
from oshu_contract.pki import new_rsa_key_pem, rsa_public_pem
from oshu_contract.session import (
    SessionError,
    loads_session,
    new_binding,
    new_kind_binding,
    new_sealed_token,
    new_session,
    parse_session,
    recorded_tokens,
)

AKID = "AKIAREALACCESSKEY123"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYREALSECRET"
SESSION_TOKEN = "FwoGZXIvYXdzEREALSESSIONTOKENxyz0123456789"
CLIENT_SECRET = "real-client-secret-0123"
REFRESH = "1//real-refresh-token-abcdef"
REAL_KEY_ID = "0123456789abcdef0123456789abcdef01234567"
STATIC = "sk-real-static-value-0123"


@pytest.fixture(scope="module")
def real_pem() -> str:
    return new_rsa_key_pem().decode()


@pytest.fixture(scope="module")
def throwaway_pem() -> str:
    return new_rsa_key_pem().decode()


def aws_entry() -> dict[str, Any]:
    return {
        "name": "AWS",
        "kind": "aws",
        "sealed": new_sealed_token(),
        "hosts": ["bedrock-runtime.us-east-1.amazonaws.com", "*.s3.amazonaws.com"],
        "fields": {"accessKeyId": AKID, "secretAccessKey": SECRET_KEY, "sessionToken": SESSION_TOKEN},
        "sealedFields": {"secretAccessKey": new_sealed_token(), "sessionToken": new_sealed_token()},
    }


def oauth_entry() -> dict[str, Any]:
    return {
        "name": "API_TOKEN",
        "kind": "oauth2",
        "sealed": new_sealed_token(),
        "hosts": ["api.example.com"],
        "fields": {
            "tokenUrl": "https://auth.example.com:8443/oauth/token",
            "clientId": "client-1",
            "clientSecret": CLIENT_SECRET,
            "refreshToken": REFRESH,
            "scope": "read write",
            "clientAuth": "post",
        },
    }


def gcp_entry(real_pem: str, public_pem: str) -> dict[str, Any]:
    return {
        "name": "GOOGLE_SA",
        "kind": "gcpServiceAccount",
        "sealed": new_sealed_token(),
        "hosts": ["us-east5-aiplatform.googleapis.com"],
        "fields": {
            "privateKey": real_pem,
            "privateKeyId": REAL_KEY_ID,
            "clientEmail": "agent@project.iam.gserviceaccount.com",
            "tokenUri": "https://oauth2.googleapis.com/token",
            "sessionPublicKey": public_pem,
        },
    }


def doc(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"session": "agents/claude", "secrets": list(entries)}


def reals(real_pem: str) -> list[str]:
    return [AKID, SECRET_KEY, SESSION_TOKEN, CLIENT_SECRET, REFRESH, REAL_KEY_ID, STATIC, real_pem]


def test_every_kind_round_trips(real_pem: str, throwaway_pem: str) -> None:
    static = {"name": "KEY", "sealed": new_sealed_token(), "value": STATIC, "hosts": ["api.anthropic.com"]}
    entries = [static, aws_entry(), oauth_entry(), gcp_entry(real_pem, rsa_public_pem(throwaway_pem.encode()).decode())]
    s = parse_session(doc(*entries))
    assert [b.kind for b in s.secrets] == [Kind.STATIC, Kind.AWS, Kind.OAUTH2, Kind.GCP]
    assert loads_session(s.to_json()) == s
    written = json.loads(s.to_json())["secrets"]
    assert "kind" not in written[0] and "fields" not in written[0]  # static stays as it was
    for entry in written[1:]:
        assert "value" not in entry and entry["kind"] in {k.value for k in Kind}
    assert written[1]["sealedFields"] == entries[1]["sealedFields"]
    assert [b.name for b in s.static_secrets] == ["KEY"] and [b.name for b in s.of_kind(Kind.AWS)] == ["AWS"]
    assert all(b.value == "" for b in s.secrets[1:])
    hash(s.secrets[1])  # fields are not hashed, the binding still is


def test_secret_values_name_the_real_material_of_each_kind(real_pem: str, throwaway_pem: str) -> None:
    public = rsa_public_pem(throwaway_pem.encode()).decode()
    s = parse_session(doc(aws_entry(), oauth_entry(), gcp_entry(real_pem, public)))
    assert s.secrets[0].secret_values() == (AKID, SECRET_KEY, SESSION_TOKEN)
    assert s.secrets[1].secret_values() == (CLIENT_SECRET, REFRESH)
    assert s.secrets[2].secret_values() == (real_pem, REAL_KEY_ID)
    static = new_binding("K", new_sealed_token(), STATIC, [HostPattern.parse("a.example.com")])
    assert static.secret_values() == (STATIC,)
    for b in s.secrets:
        assert set(SECRET_FIELDS[b.kind]) <= FIELDS[b.kind]
        assert len(b.sealed_tokens()) == 1 + len(b.sealed_fields)
    text = repr(s)
    assert not any(v in text for v in reals(real_pem)), "repr shows real material"


def test_token_endpoint_is_the_host_port_of_the_token_url(real_pem: str, throwaway_pem: str) -> None:
    public = rsa_public_pem(throwaway_pem.encode()).decode()
    s = parse_session(doc(aws_entry(), oauth_entry(), gcp_entry(real_pem, public)))
    assert s.secrets[0].token_endpoint is None
    assert str(s.secrets[1].token_endpoint) == "auth.example.com:8443"
    assert str(s.secrets[2].token_endpoint) == "oauth2.googleapis.com"
    assert str(url_host_pattern("https://[::1]:9443/token")) == "[::1]:9443"


def _set(path: str, value: object) -> Callable[[dict[str, Any]], None]:
    def mutate(entry: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = entry
        for p in parents:
            target = target[p]
        if value is None:
            del target[last]
        else:
            target[last] = value

    return mutate


@pytest.mark.parametrize(
    "make, mutate, fragment",
    [
        (aws_entry, _set("kind", "kerberos"), "kind must be one of static, aws, oauth2, gcpServiceAccount"),
        (aws_entry, _set("fields.secretAccessKey", None), "needs fields secretAccessKey"),
        (aws_entry, _set("fields.password", "hunter2-long"), "fields password do not belong to kind aws"),
        (aws_entry, _set("fields.accessKeyId", "AKIA1"), "fields.accessKeyId must be at least 8"),
        (aws_entry, _set("fields.secretAccessKey", SECRET_KEY + "\n"), "printable ASCII"),
        (aws_entry, _set("fields.sessionToken", "SEALED_" + "a" * 30), "must not contain a sealed token"),
        (aws_entry, _set("sealedFields.sessionToken", None), "exactly these fields: secretAccessKey, sessionToken"),
        (aws_entry, _set("sealedFields.secretAccessKey", "SEALED_x"), "sealedFields.secretAccessKey must look like"),
        (aws_entry, _set("sealed", "not-sealed"), "sealed must look like"),
        (aws_entry, _set("value", STATIC), "value belongs to static secrets"),
        (aws_entry, _set("fields", "AKIA"), "fields must be an object"),
        (aws_entry, _set("sealedFields", ["x"]), "sealedFields must be an object"),
        (oauth_entry, _set("fields.tokenUrl", "http://auth.example.com/token"), "tokenUrl must be an https URL"),
        (oauth_entry, _set("fields.tokenUrl", "https://bad host/token"), "tokenUrl must be an https URL"),
        (oauth_entry, _set("fields.clientAuth", "jwt"), "clientAuth must be one of basic, post"),
        (oauth_entry, _set("fields.scope", ""), "fields.scope must be a non-empty string"),
        (oauth_entry, _set("fields.scope", "x" * 20000), "at most 16384"),
        (oauth_entry, _set("sealedFields", {"clientSecret": new_sealed_token()}), "exactly these fields: none"),
    ],
)
def test_bad_entries_name_the_field_never_the_value(
    make: Callable[[], dict[str, Any]], mutate: Callable[[dict[str, Any]], None], fragment: str
) -> None:
    entry = make()
    mutate(entry)
    with pytest.raises(SessionError) as err:
        parse_session(doc(entry))
    assert fragment in str(err.value)
    assert not any(v in str(err.value) for v in (AKID, SECRET_KEY, SESSION_TOKEN, CLIENT_SECRET, REFRESH))


def test_oauth2_needs_a_client_secret_or_a_refresh_token() -> None:
    entry = oauth_entry()
    del entry["fields"]["clientSecret"]
    assert parse_session(doc(entry)).secrets[0].fields["refreshToken"] == REFRESH  # public client, refresh grant
    del entry["fields"]["refreshToken"]
    with pytest.raises(SessionError, match="needs fields clientSecret or refreshToken"):
        parse_session(doc(entry))


def test_gcp_keys_must_be_pem(real_pem: str, throwaway_pem: str) -> None:
    entry = gcp_entry(real_pem, "not a key")
    with pytest.raises(SessionError, match="sessionPublicKey must be one PEM block"):
        parse_session(doc(entry))
    entry = gcp_entry(real_pem.replace("-----END PRIVATE KEY-----", "-----END RSA PRIVATE KEY-----"), throwaway_pem)
    with pytest.raises(SessionError, match="privateKey must be one PEM block") as err:
        parse_session(doc(entry))
    assert real_pem.splitlines()[1] not in str(err.value)


def test_static_entries_carry_no_fields() -> None:
    entry = {"name": "K", "sealed": new_sealed_token(), "value": STATIC, "hosts": ["a.example.com"], "fields": {"x": 1}}
    with pytest.raises(SessionError, match="belong to the other kinds"):
        parse_session(doc(entry))


def test_across_entries_one_aws_and_no_overlapping_sealed_fields() -> None:
    second = dict(aws_entry(), name="AWS2")
    with pytest.raises(SessionError, match="AWS, AWS2: a session holds at most one of kind aws"):
        parse_session(doc(aws_entry(), second))
    entry = aws_entry()
    token = entry["sealedFields"]["secretAccessKey"]
    static = {"name": "K", "sealed": token, "value": STATIC, "hosts": ["a.example.com"]}
    with pytest.raises(SessionError, match="sealed tokens of AWS and K overlap"):
        parse_session(doc(entry, static))
    entry["sealedFields"]["sessionToken"] = entry["sealed"]
    with pytest.raises(SessionError, match="sealed tokens of AWS and AWS overlap"):
        parse_session(doc(entry))


def test_writer_constructor_makes_the_checks_the_reader_makes() -> None:
    hosts = [HostPattern.parse("bedrock-runtime.us-east-1.amazonaws.com")]
    sealed_secret = new_sealed_token()
    b = new_kind_binding(
        "AWS", Kind.AWS, new_sealed_token(), hosts, {"accessKeyId": AKID, "secretAccessKey": SECRET_KEY},
        {"secretAccessKey": sealed_secret},
    )  # fmt: skip
    s = new_session("ns/x", [b])
    assert loads_session(s.to_json()) == s and s.secrets[0].sealed_fields == {"secretAccessKey": sealed_secret}
    with pytest.raises(SessionError, match="exactly these fields: secretAccessKey"):
        new_kind_binding(
            "AWS", Kind.AWS, new_sealed_token(), hosts, {"accessKeyId": AKID, "secretAccessKey": SECRET_KEY}
        )
    with pytest.raises(SessionError, match="built with new_binding"):
        new_kind_binding("K", Kind.STATIC, new_sealed_token(), hosts, {})
    with pytest.raises(SessionError, match="environment variable name"):
        new_kind_binding("1X", Kind.OAUTH2, new_sealed_token(), hosts, {})
    with pytest.raises(SessionError, match="at least one host"):
        new_kind_binding("X", Kind.OAUTH2, new_sealed_token(), [], {})


def test_recorded_tokens_keep_sealed_fields_under_name_dot_field() -> None:
    entry = aws_entry()
    data = json.dumps(doc(entry, {"name": "BAD", "sealed": "x", "sealedFields": {"a": "SEALED_short"}})).encode()
    assert recorded_tokens(data) == {
        "AWS": entry["sealed"],
        "AWS.secretAccessKey": entry["sealedFields"]["secretAccessKey"],
        "AWS.sessionToken": entry["sealedFields"]["sessionToken"],
    }


def test_parse_kind() -> None:
    assert parse_kind(None, "kind") is Kind.STATIC and parse_kind("gcpServiceAccount", "kind") is Kind.GCP
    with pytest.raises(FieldError, match=r"spec\.secrets\[0\]\.kind must be one of"):
        parse_kind(3, "spec.secrets[0].kind")
    assert SEALED_FIELDS[Kind.AWS] == ("secretAccessKey", "sessionToken")


def test_agent_service_account_holds_no_real_material(real_pem: str, throwaway_pem: str) -> None:
    real = {
        "type": "service_account",
        "project_id": "proj",
        "private_key_id": REAL_KEY_ID,
        "private_key": real_pem,
        "client_email": "agent@proj.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": "https://oauth2.googleapis.com/token",
        "universe_domain": "googleapis.com",
        "extra": "ignored",
    }
    sealed = new_sealed_token()
    data = agent_service_account(real, sealed, throwaway_pem)
    agent = json.loads(data)
    assert agent["private_key_id"] == sealed and agent["private_key"] == throwaway_pem
    assert agent["project_id"] == "proj" and agent["client_email"] == real["client_email"] and "extra" not in agent
    body = "".join(real_pem.splitlines()[1:-1])
    for secret in (REAL_KEY_ID, body, body[:64], base64.b64encode(REAL_KEY_ID.encode()).decode()):
        assert secret not in data.decode()
    public = rsa_public_pem(throwaway_pem.encode()).decode()
    fields = service_account_fields(real, public)
    assert fields == {
        "privateKey": real_pem,
        "privateKeyId": REAL_KEY_ID,
        "clientEmail": real["client_email"],
        "tokenUri": real["token_uri"],
        "sessionPublicKey": public,
    }
    minimal = agent_service_account({"client_email": "a@b.c"}, sealed, throwaway_pem)
    assert json.loads(minimal)["token_uri"] == "https://oauth2.googleapis.com/token"


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"type": "authorized_user"}, "type must be service_account"),
        ({"private_key": ""}, "private_key must be a non-empty string"),
        ({"client_email": None}, "client_email must be a non-empty string"),
        ({"token_uri": 5}, "token_uri must be a string"),
    ],
)
def test_service_account_fields_name_the_json_key(change: dict[str, Any], fragment: str, real_pem: str) -> None:
    real = {"private_key": real_pem, "private_key_id": REAL_KEY_ID, "client_email": "a@b.c", **change}
    with pytest.raises(FieldError, match=fragment) as err:
        service_account_fields(real, "pub")
    assert REAL_KEY_ID not in str(err.value)


def test_rsa_helpers(throwaway_pem: str) -> None:
    from cryptography.hazmat.primitives import serialization

    public = rsa_public_pem(throwaway_pem.encode())
    assert public.startswith(b"-----BEGIN PUBLIC KEY-----")
    serialization.load_pem_public_key(public)
    with pytest.raises(ValueError, match="not an unencrypted PEM private key"):
        rsa_public_pem(b"garbage")
    from cryptography.hazmat.primitives.asymmetric import ec

    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ValueError, match="not an RSA private key"):
        rsa_public_pem(ec_pem)
