"""Issue 11's credential kinds on running pods: the chart's operator and webhook, the built
images, the real node.

One VaultSession holds the three non-static kinds -- ``aws``, ``gcpServiceAccount`` and
``oauth2`` -- from Secrets with fake but well-formed real material; one agent pod (the test
agent image: curl, python3, node) uses only what the webhook injected. The far side is the
API stand-in (hack/oshu_e2e/standin_server.py) in a namespace of its own, under five Service
names, configured with the REAL material: it checks SigV4 signatures with its own hmac code
and the real secret, verifies Google assertions with the real public key (RSA by hand), is
an OAuth2 client-credentials endpoint, and logs whether a bearer token is one it issued.

The Service names stand for the providers' hosts (``bedrock-runtime.<ns>.svc...`` for
``bedrock-runtime.us-east-1.amazonaws.com``): the stand-in's CA may sign only under
cluster.local and the pod resolves names through the cluster's DNS, never the Internet.

Nothing here talks to the pods any other way than a user would: kubectl (exec, logs, get).
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from oshu_e2e import pods, standin
from oshu_operator import names as n
from oshu_testkit.aws_leaks import derived_keys
from oshu_testkit.credential_material import AwsKey, GoogleServiceAccount, OAuth2Client

pytestmark = pytest.mark.timeout(900)

AWS, GCP, OAUTH = "AWS", "VERTEX_CREDENTIALS", "OAUTH_TOKEN"
BEDROCK, OAUTH_TOKEN_SVC, OAUTH_API, GCP_TOKEN, GCP_API = (
    "bedrock-runtime",
    "oauth2-token",
    "oauth-api",
    "gcp-token",
    "gcp-api",
)
S3 = "s3"
SERVICES = (BEDROCK, S3, OAUTH_TOKEN_SVC, OAUTH_API, GCP_TOKEN, GCP_API)
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


@dataclass
class Creds:
    """The stand-in's namespace, the agent's namespace, pod and the real material."""

    kube: Any
    api_namespace: str
    namespace: str
    pod: str
    images: Any
    hosts: dict[str, str]
    aws: AwsKey
    google: GoogleServiceAccount
    oauth: OAuth2Client
    tokens: dict[str, str] = field(default_factory=dict)  # the session's status.tokens
    rotation: tuple[AwsKey, AwsKey] = field(default_factory=lambda: (AwsKey(), AwsKey()))

    def seen(self) -> list[dict[str, Any]]:
        return standin.requests_seen(self.kube, self.api_namespace)

    def by_client(self, tag: str) -> list[dict[str, Any]]:
        return [r for r in self.seen() if pods.client_of(r) == tag]

    def run(self, script: str, timeout: float = 60, pod: str | None = None) -> Any:
        return pods.exec_in(self.kube, self.namespace, pod or self.pod, script, timeout=timeout)


def _standin_config(c: Creds) -> dict[str, Any]:
    aws, google, oauth = c.aws, c.google, c.oauth
    public = serialization.load_pem_public_key(google.public_pem())
    assert isinstance(public, rsa.RSAPublicKey)
    numbers = public.public_numbers()
    return {
        "aws": [
            {
                "access_key_id": k.access_key_id,
                "secret_access_key": k.secret_access_key,
                "session_token": k.session_token,
            }
            for k in (aws, *c.rotation)
        ],
        "oauth2": {"client_id": oauth.client_id, "client_secret": oauth.client_secret},
        "google": {
            "n": str(numbers.n),
            "e": str(numbers.e),
            "kid": google.private_key_id,
            "client_email": google.client_email,
            "token_uri": google.token_uri,
        },
    }


def _session_docs(namespace: str, c: Creds) -> list[dict[str, Any]]:
    h = c.hosts
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque"}
    return [
        {
            **secret,
            "metadata": {"name": "aws-real", "namespace": namespace},
            "stringData": {
                "AWS_ACCESS_KEY_ID": c.aws.access_key_id,
                "AWS_SECRET_ACCESS_KEY": c.aws.secret_access_key,
                "AWS_SESSION_TOKEN": c.aws.session_token,
            },
        },
        {
            **secret,
            "metadata": {"name": "gcp-real", "namespace": namespace},
            "stringData": {"key.json": json.dumps(c.google.key_file())},
        },
        {
            **secret,
            "metadata": {"name": "oauth-real", "namespace": namespace},
            "stringData": {"client_id": c.oauth.client_id, "client_secret": c.oauth.client_secret},
        },
        {
            "apiVersion": "vault.oshu.dev/v1alpha1",
            "kind": "VaultSession",
            "metadata": {"name": "creds", "namespace": namespace},
            "spec": {
                "secrets": [
                    {"name": AWS, "kind": "aws", "secretRef": {"name": "aws-real"}, "hosts": [h[BEDROCK], h[S3]]},
                    {
                        "name": GCP,
                        "kind": "gcpServiceAccount",
                        "secretKeyRef": {"name": "gcp-real", "key": "key.json"},
                        "hosts": [h[GCP_API]],
                    },
                    {
                        "name": OAUTH,
                        "kind": "oauth2",
                        "secretRef": {"name": "oauth-real"},
                        "oauth2": {"tokenUrl": c.oauth.token_url, "scopes": ["read"]},
                        "hosts": [h[OAUTH_API]],
                    },
                ],
                "ttl": "2h",
                "egress": [h[BEDROCK], h[S3], h[GCP_API], h[OAUTH_API]],
            },
        },
    ]


@pytest.fixture(scope="module")
def creds(pods_env: Any) -> Iterator[Creds]:
    kube, images = pods_env.kube, pods_env.images
    suffix = secrets.token_hex(3)
    api_ns, namespace = f"creds-api-{suffix}", f"creds-{suffix}"
    hosts = {s: standin.host(api_ns, s, domain=pods_env.cluster_domain) for s in SERVICES}
    aws = AwsKey()
    google = GoogleServiceAccount(token_uri=f"https://{hosts[GCP_TOKEN]}/token")
    oauth = OAuth2Client(token_url=f"https://{hosts[OAUTH_TOKEN_SVC]}/token")
    c = Creds(kube, api_ns, namespace, "agent", images, hosts, aws, google, oauth)
    try:
        kube.kubectl("create", "namespace", api_ns)
        config = _standin_config(c)
        docs = standin.manifests(
            api_ns, images.agent, images.pull_policy, pods_env.cluster_domain, service_names=SERVICES, config=config
        )
        pods.apply(kube, docs)
        kube.kubectl("create", "namespace", namespace)
        pods.apply(kube, _session_docs(namespace, c))
        c.tokens = pods.session_ready(kube, namespace, "creds")["status"]["tokens"]
        pods.apply(kube, [pods.agent_pod(namespace, c.pod, images.agent, "creds", pull_policy=images.pull_policy)])
        pods.pod_running(kube, api_ns, standin.NAME)
        pods.pod_running(kube, namespace, c.pod)
        yield c
    finally:
        for ns in (namespace, api_ns):
            kube.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found", check=False)


def _env(c: Creds, pod: str | None = None, prefix: str = "") -> dict[str, str]:
    out = c.run(prefix + "env", pod=pod).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _last_json(result: Any) -> dict[str, Any]:
    lines = result.stdout.strip().splitlines()
    assert lines, result
    parsed: dict[str, Any] = json.loads(lines[-1])
    return parsed


# -- aws -----------------------------------------------------------------------------------------

#: curl signs with SigV4 from the injected variables only; prints the answer, then the status.
AWS_CURL = (
    "curl -sS --max-time 20 --aws-sigv4 'aws:amz:us-east-1:bedrock' "
    '--user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY{tamper}" '
    '-H "x-amz-security-token: $AWS_SESSION_TOKEN" -H "x-client: {tag}" '
    "-H 'content-type: application/json' --data '{{\"prompt\": \"hi\"}}' {extra} "
    "-w '\\n%{{http_code}}' https://{host}/model/anthropic.claude-v2/invoke"
)


def _aws_curl(
    c: Creds, tag: str, tamper: str = "", extra: str = "", pod: str | None = None, prefix: str = ""
) -> tuple[str, str]:
    result = c.run(prefix + AWS_CURL.format(tamper=tamper, tag=tag, extra=extra, host=c.hosts[BEDROCK]), pod=pod)
    body, _, status = result.stdout.rpartition("\n")
    return status.strip(), body


def test_aws_env_holds_only_sealed_material(creds: Creds) -> None:
    env = _env(creds)
    assert env["AWS_ACCESS_KEY_ID"] == creds.tokens[AWS]
    assert env["AWS_SECRET_ACCESS_KEY"] == creds.tokens[f"{AWS}.secretAccessKey"]
    assert env["AWS_SESSION_TOKEN"] == creds.tokens[f"{AWS}.sessionToken"]
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        assert env[var].startswith("SEALED_"), var
    dump = "\n".join(env.values())
    assert not [v for v in creds.aws.values() if v in dump]


def test_aws_sigv4_from_the_pod_arrives_signed_with_the_real_key(creds: Creds) -> None:
    tag = f"aws-{secrets.token_hex(4)}"
    status, body = _aws_curl(creds, tag)
    assert status == "200" and json.loads(body)["verified"] is True, (status, body)
    (record,) = creds.by_client(tag)
    assert record["sigv4"] == {"verified": True, "problem": None}
    assert f"Credential={creds.aws.access_key_id}/" in (standin.header(record, "authorization") or "")
    assert standin.header(record, "x-amz-security-token") == creds.aws.session_token
    assert creds.aws.secret_access_key not in body


def test_aws_the_standins_check_fails_on_the_agents_own_signature(creds: Creds) -> None:
    """Control: the same request sent past the proxy (straight to the Service, certificate
    unchecked) carries only the sealed material, and the stand-in's check says so."""
    tag = f"aws-direct-{secrets.token_hex(4)}"
    status, body = _aws_curl(creds, tag, extra="--noproxy '*' --insecure")
    assert status == "403" and json.loads(body) == {"verified": False, "problem": "access key id is not the real one"}
    (record,) = creds.by_client(tag)
    assert f"Credential={creds.tokens[AWS]}/" in (standin.header(record, "authorization") or "")


def test_aws_a_wrong_sealed_secret_is_refused_by_the_sidecar(creds: Creds) -> None:
    tag = f"aws-wrong-{secrets.token_hex(4)}"
    status, body = _aws_curl(creds, tag, tamper="x")
    assert status == "403", (status, body)
    assert json.loads(body)["error"]["code"] == "signature_invalid"
    assert not creds.by_client(tag), "a request with a wrong signature reached the API"


#: curl's S3 form: PUT of a 300 kB file with x-amz-content-sha256 given with -H (curl signs that
#: value as the payload hash).
S3_CURL = (
    "head -c 300000 /dev/urandom > /tmp/object && curl -sS --max-time 30 --aws-sigv4 'aws:amz:us-east-1:s3' "
    '--user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" -H "x-amz-security-token: $AWS_SESSION_TOKEN" '
    "-H 'x-client: {tag}' {extra} -T /tmp/object -w '\\n%{{http_code}}' https://{host}/bucket/key-{tag}.bin"
)


def _s3_curl(c: Creds, tag: str, extra: str = "") -> tuple[str, str]:
    result = c.run(S3_CURL.format(tag=tag, extra=extra, host=c.hosts[S3]))
    body, _, status = result.stdout.rpartition("\n")
    return status.strip(), body


@pytest.mark.parametrize("payload", ["hashed", "UNSIGNED-PAYLOAD"])
def test_aws_s3_put_from_the_pod_arrives_signed_with_the_real_key(creds: Creds, payload: str) -> None:
    tag = f"s3-{payload.lower()}-{secrets.token_hex(4)}"
    # S3 wants the header; curl 7.88 signs the value given (it would hash only a --data body).
    value = "UNSIGNED-PAYLOAD" if payload != "hashed" else "$(sha256sum /tmp/object | cut -d' ' -f1)"
    extra = f'-H "x-amz-content-sha256: {value}"'
    status, body = _s3_curl(creds, tag, extra)
    assert status == "200" and json.loads(body)["verified"] is True, (status, body)
    (record,) = creds.by_client(tag)
    assert record["sigv4"]["verified"] is True and record["body_bytes"] == 300000
    declared = standin.header(record, "x-amz-content-sha256")
    assert declared == "UNSIGNED-PAYLOAD" if payload != "hashed" else len(declared or "") == 64, declared


def test_aws_a_payload_that_does_not_match_its_signed_hash_is_refused(creds: Creds) -> None:
    tag = f"s3-mismatch-{secrets.token_hex(4)}"
    other = "0" * 64  # the agent signs this hash but sends other bytes
    status, body = _s3_curl(creds, tag, f"-H 'x-amz-content-sha256: {other}'")
    assert status == "400" and json.loads(body)["error"]["code"] == "payload_hash_mismatch", (status, body)
    assert not creds.by_client(tag)


def _aws_secret(namespace: str, name: str, key: AwsKey) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "Opaque",
        "stringData": {
            "AWS_ACCESS_KEY_ID": key.access_key_id,
            "AWS_SECRET_ACCESS_KEY": key.secret_access_key,
            "AWS_SESSION_TOKEN": key.session_token,
        },
    }


def test_aws_rotation_reaches_the_running_sidecar(creds: Creds) -> None:
    """A session of its own (Secret aws-rotating, pod "rotating"): the Secret patched with a new
    key id, secret and session token; the agent keeps signing with the same sealed material and
    the API soon sees the new real key. Every request on the way verifies with one of the two."""
    first, second = creds.rotation
    session = _session_docs(creds.namespace, creds)[-1]
    session["metadata"]["name"] = "creds-rotate"
    session["spec"]["secrets"] = [
        {"name": AWS, "kind": "aws", "secretRef": {"name": "aws-rotating"}, "hosts": [creds.hosts[BEDROCK]]}
    ]
    pods.apply(creds.kube, [_aws_secret(creds.namespace, "aws-rotating", first), session])
    tokens = pods.session_ready(creds.kube, creds.namespace, "creds-rotate")["status"]["tokens"]
    image, policy = creds.images.agent, creds.images.pull_policy
    pods.apply(creds.kube, [pods.agent_pod(creds.namespace, "rotating", image, "creds-rotate", pull_policy=policy)])
    pods.pod_running(creds.kube, creds.namespace, "rotating")

    def key_seen(tag: str) -> str:
        status, body = _aws_curl(creds, tag, pod="rotating")
        assert status == "200" and json.loads(body)["verified"] is True, (status, body)
        (record,) = creds.by_client(tag)
        return (standin.header(record, "authorization") or "").split("Credential=")[1].split("/")[0]

    assert key_seen(f"rotate-before-{secrets.token_hex(3)}") == first.access_key_id
    started = time.monotonic()
    pods.apply(creds.kube, [_aws_secret(creds.namespace, "aws-rotating", second)])
    for attempt in range(300):
        seen = key_seen(f"rotate-{attempt}-{secrets.token_hex(3)}")
        assert seen in (first.access_key_id, second.access_key_id), seen
        if seen == second.access_key_id:
            break
        time.sleep(1)
    else:
        raise AssertionError("the sidecar still signs with the old key")
    print(
        f"\n[pods] aws rotation: {time.monotonic() - started:.0f}s from the Secret update to the new key ({attempt + 1} requests)"
    )
    after = pods.get_json(creds.kube, "vaultsession", "creds-rotate", "-n", creds.namespace)["status"]["tokens"]
    assert after == tokens  # the agent's sealed material did not change
    env = _env(creds, "rotating")
    assert env["AWS_SECRET_ACCESS_KEY"] == tokens[f"{AWS}.secretAccessKey"]


# -- gcpServiceAccount -------------------------------------------------------------------------

#: node (its crypto signs RS256): a JWT from the agent's service-account file (or a fresh key
#: with ``other``), exchanged at the file's token_uri, then an API call with the answer's token.
#: Prints JSON: the token answer's status and token, the API's status.
GCP_NODE = r"""
const fs = require("fs"), crypto = require("crypto");
const [api, tag, other] = process.argv.slice(1);
const sa = JSON.parse(fs.readFileSync(process.env.GOOGLE_APPLICATION_CREDENTIALS, "utf8"));
const key = other ? crypto.generateKeyPairSync("rsa", {modulusLength: 2048}).privateKey : sa.private_key;
const b64 = (x) => Buffer.from(x).toString("base64url");
const now = Math.floor(Date.now() / 1000);
const head = b64(JSON.stringify({alg: "RS256", typ: "JWT", kid: sa.private_key_id}));
const claims = b64(JSON.stringify({iss: sa.client_email, scope: "https://www.googleapis.com/auth/cloud-platform",
                                   aud: sa.token_uri, iat: now, exp: now + 3600}));
const jwt = head + "." + claims + "." + crypto.sign("sha256", Buffer.from(head + "." + claims), key).toString("base64url");
(async () => {
  const out = {};
  const t = await fetch(sa.token_uri, {method: "POST", headers: {"x-client": tag + "-token",
    "content-type": "application/x-www-form-urlencoded"},
    body: new URLSearchParams({grant_type: "urn:ietf:params:oauth:grant-type:jwt-bearer", assertion: jwt})});
  out.token_status = t.status;
  out.token_answer = await t.json();
  if (t.status === 200) {
    const r = await fetch(api, {headers: {authorization: "Bearer " + out.token_answer.access_token, "x-client": tag}});
    out.api_status = r.status;
  }
  console.log(JSON.stringify(out));
})().catch((e) => { console.error(String(e.cause || e)); process.exit(1); });
"""


def _gcp_node(c: Creds, tag: str, other: bool = False, pod: str | None = None, prefix: str = "") -> dict[str, Any]:
    api = f"https://{c.hosts[GCP_API]}/v1/projects/oshu-test/locations/us-east5/publishers/anthropic/models/claude"
    args = " ".join([f"'{api}'", tag, *(["other"] if other else [])])
    return _last_json(c.run(f"{prefix}node -e '{GCP_NODE.replace(chr(39), chr(34))}' {args}", pod=pod))


def test_gcp_agent_file_has_a_throwaway_key_and_the_sealed_key_id(creds: Creds) -> None:
    env = _env(creds)
    path = env["GOOGLE_APPLICATION_CREDENTIALS"]
    assert env[GCP] == path
    sa = json.loads(creds.run(f"cat '{path}'").stdout)
    real = creds.google.key_file()
    assert sa["private_key_id"] == creds.tokens[GCP] and sa["private_key_id"].startswith("SEALED_")
    assert sa["private_key"].startswith("-----BEGIN PRIVATE KEY-----") and sa["private_key"] != real["private_key"]
    assert (sa["client_email"], sa["token_uri"]) == (real["client_email"], real["token_uri"])
    text = json.dumps(sa)
    assert not [v for v in creds.google.values() if v in text]


def test_gcp_jwt_exchange_from_the_pod_reaches_the_api_with_the_real_token(creds: Creds) -> None:
    tag = f"gcp-{secrets.token_hex(4)}"
    out = _gcp_node(creds, tag)
    assert out["token_status"] == 200 and out["api_status"] == 200, out
    sealed_access = out["token_answer"]["access_token"]
    assert sealed_access.startswith("SEALED_"), out
    (exchange,) = creds.by_client(f"{tag}-token")
    assert exchange["grant"] == JWT_BEARER and "refused" not in exchange, exchange
    real_access = exchange["issued"]  # verified with the REAL public key under the real kid
    (call,) = creds.by_client(tag)
    assert standin.credential(call) == real_access and call["bearer_issued"] is True
    assert real_access not in json.dumps(out)
    # The minted sealed token is swapped on the binding's hosts only: elsewhere it stays itself.
    elsewhere = f"{tag}-elsewhere"
    script = (
        f'curl -sS --max-time 20 -o /dev/null -w "%{{http_code}}" -H "authorization: Bearer {sealed_access}" '
        f"-H 'x-client: {elsewhere}' https://{creds.hosts[OAUTH_API]}/v1/things"
    )
    assert creds.run(script).stdout.strip() == "200"
    (other,) = creds.by_client(elsewhere)
    assert standin.credential(other) == sealed_access and other["bearer_issued"] is False


def test_gcp_an_assertion_signed_with_another_key_is_refused(creds: Creds) -> None:
    tag = f"gcp-other-{secrets.token_hex(4)}"
    out = _gcp_node(creds, tag, other=True)
    assert out["token_status"] == 403 and out["token_answer"]["error"]["code"] == "assertion_invalid", out
    assert not creds.by_client(f"{tag}-token") and not creds.by_client(tag)


#: node: a self-signed JWT bearer (no token exchange) from the agent's file, sent to the API.
GCP_SELF_SIGNED = r"""
const fs = require("fs"), crypto = require("crypto");
const [api, tag, other] = process.argv.slice(1);
const sa = JSON.parse(fs.readFileSync(process.env.GOOGLE_APPLICATION_CREDENTIALS, "utf8"));
const key = other ? crypto.generateKeyPairSync("rsa", {modulusLength: 2048}).privateKey : sa.private_key;
const b64 = (x) => Buffer.from(x).toString("base64url");
const now = Math.floor(Date.now() / 1000);
const head = b64(JSON.stringify({alg: "RS256", typ: "JWT", kid: sa.private_key_id}));
const claims = b64(JSON.stringify({iss: sa.client_email, sub: sa.client_email, aud: new URL(api).origin + "/",
                                   iat: now, exp: now + 3600}));
const jwt = head + "." + claims + "." + crypto.sign("sha256", Buffer.from(head + "." + claims), key).toString("base64url");
fetch(api, {headers: {authorization: "Bearer " + jwt, "x-client": tag}})
  .then(async (r) => console.log(JSON.stringify({status: r.status, body: await r.text(), jwt})),
        (e) => { console.error(String(e.cause || e)); process.exit(1); });
"""


@pytest.mark.parametrize("signer", ["throwaway", "another key"])
def test_gcp_self_signed_jwt_bearer_from_the_pod(creds: Creds, signer: str) -> None:
    """google-auth's self-signed JWT form: the API gets the same claims signed with the REAL key
    under the real key id; a JWT signed with any other key is refused, nothing forwarded."""
    tag = f"gcp-jwt-{secrets.token_hex(4)}"
    api = f"https://{creds.hosts[GCP_API]}/v1/projects/oshu-test/locations/us-east5/models"
    args = " ".join([f"'{api}'", tag, *(["other"] if signer != "throwaway" else [])])
    out = _last_json(creds.run(f"node -e '{GCP_SELF_SIGNED}' {args}"))
    if signer != "throwaway":
        assert out["status"] == 403 and json.loads(out["body"])["error"]["code"] == "assertion_invalid", out
        assert not creds.by_client(tag)
        return
    assert out["status"] == 200, out
    (call,) = creds.by_client(tag)
    arrived = standin.credential(call) or ""
    assert call["jwt_problem"] is None, call  # verified with the real public key, real kid, current
    assert arrived != out["jwt"] and arrived.split(".")[1] == out["jwt"].split(".")[1]  # same claims, re-signed
    head = json.loads(base64.urlsafe_b64decode(arrived.split(".")[0] + "=="))
    assert (
        head["kid"]
        == creds.google.private_key_id
        != json.loads(base64.urlsafe_b64decode(out["jwt"].split(".")[0] + "=="))["kid"]
    )


# -- oauth2 ------------------------------------------------------------------------------------


def test_oauth2_sealed_bearer_arrives_as_the_real_access_token(creds: Creds) -> None:
    tag = f"oauth-{secrets.token_hex(4)}"
    before = {r["issued"] for r in creds.seen() if r.get("grant") == "client_credentials" and "issued" in r}
    script = (
        'curl -sS --max-time 20 -o /dev/null -w "%{http_code}" -H "authorization: Bearer $OAUTH_TOKEN" '
        f"-H 'x-client: {tag}' https://{creds.hosts[OAUTH_API]}/v1/things"
    )
    result = creds.run(script)
    assert result.stdout.strip() == "200", result
    assert _env(creds)[OAUTH] == creds.tokens[OAUTH] and creds.tokens[OAUTH].startswith("SEALED_")
    (call,) = creds.by_client(tag)
    issued = {r["issued"] for r in creds.seen() if r.get("grant") == "client_credentials" and "issued" in r}
    assert call["bearer_issued"] is True and standin.credential(call) in issued, (call, issued)
    refused = [r for r in creds.seen() if r.get("grant") == "client_credentials" and "refused" in r]
    assert not refused and len(issued - before) <= 1  # fetched once (or earlier, cached)


def test_oauth2_concurrent_requests_share_one_token_and_revocation_stops_them(creds: Creds) -> None:
    """A session of its own (scope unique to it, so its token requests can be counted): 32
    concurrent curls from the pod with the sealed bearer, one token request between them; then
    the VaultSession is deleted and the sidecar refuses the sealed bearer, nothing forwarded."""
    scope, tag = f"burst-{secrets.token_hex(4)}", f"burst-{secrets.token_hex(3)}"
    session = _session_docs(creds.namespace, creds)[-1]
    session["metadata"]["name"] = "creds-oauth"
    (entry,) = [e for e in session["spec"]["secrets"] if e["kind"] == "oauth2"]
    entry["oauth2"]["scopes"] = [scope]
    session["spec"]["secrets"], session["spec"]["egress"] = [entry], [creds.hosts[OAUTH_API]]
    pods.apply(creds.kube, [session])
    pods.session_ready(creds.kube, creds.namespace, "creds-oauth")
    image, policy = creds.images.agent, creds.images.pull_policy
    pods.apply(creds.kube, [pods.agent_pod(creds.namespace, "oauth", image, "creds-oauth", pull_policy=policy)])
    pods.pod_running(creds.kube, creds.namespace, "oauth")
    curl = (
        'curl -sS --max-time 30 -o /dev/null -w "%{{http_code}}\\n" -H "authorization: Bearer $OAUTH_TOKEN" '
        f"-H 'x-client: {tag}-{{i}}' https://{creds.hosts[OAUTH_API]}/v1/things"
    )
    burst = "for i in $(seq 32); do " + curl.format(i="$i") + " & done; wait"
    result = creds.run(burst, timeout=120, pod="oauth")
    assert result.stdout.split() == ["200"] * 32, result
    calls = [r for r in creds.seen() if (pods.client_of(r) or "").startswith(f"{tag}-")]
    assert len(calls) == 32 and all(r["bearer_issued"] is True for r in calls)
    assert len({standin.credential(r) for r in calls}) == 1
    fetched = [r for r in creds.seen() if r.get("scope") == scope]
    assert len(fetched) == 1 and "issued" in fetched[0], fetched  # single flight: one token request
    creds.kube.kubectl("-n", creds.namespace, "delete", "vaultsession", "creds-oauth", "--wait=false")
    started, answered = time.monotonic(), []
    for attempt in range(300):
        one = curl.replace('-o /dev/null -w "%{{http_code}}\\n"', '-w "\\n%{{http_code}}"').format(i=f"r{attempt}")
        last = creds.run(one, pod="oauth")
        body, _, status = last.stdout.rpartition("\n")
        if status.strip() != "200":
            break
        answered.append(f"{tag}-r{attempt}")
        time.sleep(1)
    else:
        raise AssertionError("the sidecar still sends the token after the session was deleted")
    # The sidecar answers session_revoked, or -- when the kubelet has already removed the deleted
    # session's CA from the agent's bundle -- the agent no longer trusts the interception (curl 60).
    outcome = json.loads(body)["error"]["code"] if body.strip() else f"curl exit {last.returncode}"
    print(f"\n[pods] oauth2 revocation: refused {time.monotonic() - started:.0f}s after the delete: {outcome}")
    assert outcome in ("session_revoked", "session_expired", "curl exit 60"), last
    time.sleep(1)
    late = [r for r in creds.seen() if pods.client_of(r) == f"{tag}-r{attempt}"]
    assert not late and len([r for r in creds.seen() if r.get("scope") == scope]) == 1


# -- enforcement: redirect --------------------------------------------------------------------

#: Every variable that could point a client at the proxy: the commands below run without any.
UNSET = "unset " + " ".join((*n.ENV_PROXY_VARS, *n.ENV_NO_PROXY_VARS, n.ENV_NODE_USE_ENV_PROXY)) + "; "
REDIRECTED = "redirected"


@pytest.fixture(scope="module")
def redirected(creds: Creds) -> Iterator[dict[str, str]]:
    """A second session in the same namespace, ``enforcement: redirect``, with the aws and the
    Google secret, and its pod: clients that ignore the proxy still go through the sidecar."""
    docs = _session_docs(creds.namespace, creds)
    session = docs[-1]
    session["metadata"]["name"] = "creds-redirect"
    session["spec"]["enforcement"] = "redirect"
    session["spec"]["secrets"] = [s for s in session["spec"]["secrets"] if s["kind"] != "oauth2"]
    pods.apply(creds.kube, [session])
    tokens: dict[str, str] = pods.session_ready(creds.kube, creds.namespace, "creds-redirect")["status"]["tokens"]
    image = creds.images.agent
    pod = pods.agent_pod(creds.namespace, REDIRECTED, image, "creds-redirect", pull_policy=creds.images.pull_policy)
    pods.apply(creds.kube, [pod])
    pods.pod_running(creds.kube, creds.namespace, REDIRECTED)
    yield tokens


def test_redirect_aws_without_proxy_variables_is_signed_again_by_the_sidecar(
    creds: Creds, redirected: dict[str, str]
) -> None:
    """With no proxy variable, and even with curl told to go direct and trust anything, the
    connection lands on the sidecar's transparent listener: the stand-in sees the real key."""
    for extra in ("", "--noproxy '*' --insecure"):
        tag = f"aws-redirect-{secrets.token_hex(4)}"
        status, body = _aws_curl(creds, tag, extra=extra, pod=REDIRECTED, prefix=UNSET)
        assert status == "200" and json.loads(body)["verified"] is True, (extra, status, body)
        (record,) = creds.by_client(tag)
        assert record["sigv4"]["verified"] is True
        assert f"Credential={creds.aws.access_key_id}/" in (standin.header(record, "authorization") or "")
    env = _env(creds, REDIRECTED)
    assert (
        env["AWS_SECRET_ACCESS_KEY"] == redirected[f"{AWS}.secretAccessKey"] != creds.tokens[f"{AWS}.secretAccessKey"]
    )
    assert not [v for v in ("HTTPS_PROXY", "https_proxy") if v in _env(creds, REDIRECTED, UNSET)]
    tag = f"aws-redirect-wrong-{secrets.token_hex(4)}"
    status, body = _aws_curl(creds, tag, tamper="x", pod=REDIRECTED, prefix=UNSET)
    assert status == "403" and json.loads(body)["error"]["code"] == "signature_invalid", (status, body)
    assert not creds.by_client(tag)


def test_redirect_gcp_exchange_without_proxy_variables(creds: Creds, redirected: dict[str, str]) -> None:
    tag = f"gcp-redirect-{secrets.token_hex(4)}"
    out = _gcp_node(creds, tag, pod=REDIRECTED, prefix=UNSET)
    assert out["token_status"] == 200 and out["api_status"] == 200, out
    assert out["token_answer"]["access_token"].startswith("SEALED_")
    (exchange,) = creds.by_client(f"{tag}-token")
    (call,) = creds.by_client(tag)
    assert standin.credential(call) == exchange["issued"] and call["bearer_issued"] is True


# -- what the agent container can read (pods.SCAN_SCRIPT) --------------------------------------


def _needles(c: Creds) -> list[tuple[str, bytes]]:
    """Every real form: the AWS values and their derived signing keys, the Google key (PEM,
    JSON-escaped, each base64 line, DER) and key id, the OAuth2 client secret, and each access
    token the stand-in issued (to the sidecar, never to the agent)."""
    issued = [r["issued"] for r in c.seen() if "issued" in r]
    assert issued, "no token was issued: run with the exchange tests"
    values = (
        [("aws", v) for k in (c.aws, *c.rotation) for v in k.values()]
        + [("google", v) for v in c.google.values()]
        + [("oauth2", c.oauth.client_secret)]
        + [("issued", t) for t in issued]
    )
    out: list[tuple[str, bytes]] = []
    for label, v in values:
        raw = v.encode()
        out += [
            (label, raw),
            (label + "/base64", base64.b64encode(raw)),
            (label + "/json", json.dumps(v)[1:-1].encode()),
        ]
    der = serialization.load_pem_private_key(c.google.private_key_pem.encode(), None).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    out.append(("google/der", der))
    for k in (d for key in (c.aws, *c.rotation) for d in derived_keys(key, services=("bedrock", "s3"))):
        out += [("aws-derived", k), ("aws-derived/hex", k.hex().encode()), ("aws-derived/base64", base64.b64encode(k))]
    return [(label, b) for label, b in out if len(b) >= 12]


@pytest.mark.parametrize("pod", ["agent", REDIRECTED])
def test_the_agent_container_holds_no_real_form(creds: Creds, pod: str, request: pytest.FixtureRequest) -> None:
    tokens = creds.tokens if pod == creds.pod else request.getfixturevalue("redirected")
    prefix = "" if pod == creds.pod else UNSET
    # Exercise every kind first (a module run in any order still has something to look for).
    assert _aws_curl(creds, f"aws-scan-{secrets.token_hex(3)}", pod=pod, prefix=prefix)[0] == "200"
    assert _gcp_node(creds, f"gcp-scan-{secrets.token_hex(3)}", pod=pod, prefix=prefix)["api_status"] == 200
    # A planted value shows the needles are searched as they should be (a binary one, as a derived key).
    planted = secrets.token_bytes(32)
    octal = "".join(f"\\{b:03o}" for b in planted)
    creds.run(f"printf '{octal}' > /tmp/planted", pod=pod)
    needles = [*_needles(creds), ("planted", planted)]
    report = pods.scan_agent_for(creds.kube, creds.namespace, pod, needles, tokens[AWS])
    print(
        f"\n[pods] credential scan of the agent container of {pod}: {json.dumps({**report, 'hits': report['hits'][:20]})}"
    )
    assert report["files"] > 1000 and report["processes"] >= 1 and report["needles"] == len(needles)
    assert any(w.endswith("/environ") for w in report["control_seen_in"]), report  # it sees what the agent sees
    assert ["/tmp/planted", "planted"] in report["hits"], report
    hits = [h for h in report["hits"] if h != ["/tmp/planted", "planted"]]
    assert hits == [], f"real material readable in the agent container: {hits}"


def test_no_real_form_in_sidecar_logs_session_status_or_events(creds: Creds) -> None:
    """What the operator and the sidecars write where users and agents' operators look: every
    container log of every pod of the namespace (sidecars, rules containers), the VaultSessions
    (status included) and the namespace's events."""
    kube, ns = creds.kube, creds.namespace
    texts: dict[str, bytes] = {}
    for pod in pods.get_json(kube, "pods", "-n", ns)["items"]:
        name = pod["metadata"]["name"]
        logs = kube.kubectl("-n", ns, "logs", name, "--all-containers", "--prefix", check=False).stdout
        texts[f"logs of {name}"] = logs.encode()
    texts["vaultsessions"] = kube.kubectl("-n", ns, "get", "vaultsessions", "-o", "json").stdout.encode()
    texts["events"] = kube.kubectl("-n", ns, "get", "events", "-o", "json").stdout.encode()
    sidecar_logs = [t for w, t in texts.items() if w.startswith("logs of ")]
    assert any(b"signature_invalid" in t for t in sidecar_logs), "the sidecars' logs were not read"
    hits = sorted({(where, label) for where, text in texts.items() for label, b in _needles(creds) if b in text})
    assert hits == [], f"real material in logs, status or events: {hits}"
