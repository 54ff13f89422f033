"""The operator's output drives a real sidecar (issue 11): the session file the reconciler writes,
its session CA (name-constrained, covering the gcp token endpoint) and the agent material the
webhook injects (AWS_* env, API_TOKEN, the agent-NAME.json file) work with real clients (boto3,
google-auth, requests) against stand-ins that check with the REAL keys; nothing real reaches the
agent. No cluster: `reconcile_plan.plan` and `injection.plan` are the operator's decisions, and
the real-apiserver tests show the same objects are what the cluster stores.
"""

from __future__ import annotations

import base64
import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from oshu_contract.pki import KeyPair
from oshu_operator import material
from oshu_operator import names as n
from oshu_operator import reconcile_plan as rp
from oshu_operator.injection import SessionView, plan
from oshu_testkit.aws_standin import AwsStandIn
from oshu_testkit.credential_material import AwsKey, GoogleServiceAccount, leak_forms
from oshu_testkit.oauth_standins import API_HOST, AUTH_HOST, GOOGLE_TOKEN_HOST, VERTEX_HOST, TokenServer
from oshu_testkit.sidecar_process import SidecarProcess

from .test_credential_kinds import INJECT_CFG, secret
from .test_reconcile_plan import CFG, session_body, with_status

S3_HOST = "bucket.s3.amazonaws.com"

#: The agent: only the env and file the webhook gives it (and the proxy/CA variables).
AGENT = r"""
import json, os, sys
import boto3, requests
import google.auth.transport.requests as tr
from botocore.config import Config
from google.oauth2 import service_account

out = {}
s3 = boto3.client("s3", config=Config(region_name="us-east-1", s3={"addressing_style": "virtual"},
                                      retries={"max_attempts": 1}))
s3.put_object(Bucket="bucket", Key="k.txt", Body=b"hello through the operator's session")
out["s3"] = s3.get_object(Bucket="bucket", Key="k.txt")["Body"].read().decode()
r = requests.get(sys.argv[1], headers={"Authorization": "Bearer " + os.environ["API_TOKEN"]}, timeout=30)
out["oauth_status"], out["oauth_body"] = r.status_code, r.json()
creds = service_account.Credentials.from_service_account_file(
    os.environ["GOOGLE_APPLICATION_CREDENTIALS"], scopes=["https://www.googleapis.com/auth/cloud-platform"])
creds.refresh(tr.Request())
out["google_token"] = creds.token
r = tr.AuthorizedSession(creds).post(sys.argv[2], json={"anthropic_version": "vertex-2023-10-16", "max_tokens": 8,
                                                         "messages": [{"role": "user", "content": "hi"}]})
out["vertex_status"] = r.status_code
print(json.dumps(out))
"""


def session_and_pod(key: AwsKey, sa: GoogleServiceAccount, ts: TokenServer) -> tuple[rp.Plan, dict[str, str]]:
    """What the operator makes of a VaultSession with the three kinds: its plan and the agent's env."""
    body = session_body(
        {"name": "AWS", "kind": "aws", "secretRef": {"name": "aws"}, "hosts": ["*.s3.amazonaws.com"]},
        {
            "name": "API_TOKEN",
            "kind": "oauth2",
            "secretRef": {"name": "oauth"},
            "oauth2": {"tokenUrl": f"https://{AUTH_HOST}/oauth/token"},
            "hosts": [API_HOST],
        },
        {
            "name": "GOOGLE_SA",
            "kind": "gcpServiceAccount",
            "secretKeyRef": {"name": "google", "key": "key.json"},
            "hosts": [VERTEX_HOST],
        },
    )
    referenced = {
        "aws": secret("aws", {"AWS_ACCESS_KEY_ID": key.access_key_id, "AWS_SECRET_ACCESS_KEY": key.secret_access_key,
                              "AWS_SESSION_TOKEN": key.session_token}),
        "oauth": secret("oauth", {"client_id": ts.client_id, "client_secret": ts.client_secret}),
        "google": secret("google", {"key.json": json.dumps(sa.key_file())}),
    }  # fmt: skip
    p = rp.plan(body, None, referenced, material.utcnow(), CFG)  # now: the CA must be valid for the clients
    assert p.outcome.ready, p.outcome.message
    pod: dict[str, Any] = {
        "metadata": {"name": "agent", "namespace": "team", "labels": {n.LABEL_SESSION: "claude"}},
        "spec": {"containers": [{"name": "agent", "image": "agent:1"}]},
    }
    injected = copy.deepcopy(pod)
    plan(injected, SessionView.from_body(with_status(body, p)), INJECT_CFG).apply(injected)
    env = {e["name"]: e["value"] for e in injected["spec"]["containers"][0]["env"]}
    return p, env


def test_what_the_operator_writes_works_with_real_clients_through_a_real_sidecar(tmp_path: Path) -> None:
    key, sa = AwsKey(), GoogleServiceAccount()
    with AwsStandIn(key) as aws, TokenServer(names=(AUTH_HOST, API_HOST, GOOGLE_TOKEN_HOST, VERTEX_HOST)) as ts:
        ts.google_public_pem, ts.google_kid, ts.google_email = sa.public_pem(), sa.private_key_id, sa.client_email
        p, pod_env = session_and_pod(key, sa, ts)
        data = {k: base64.b64decode(v) for k, v in p.secret["data"].items()}
        agent_dir = tmp_path / "ca-volume"  # what the app container's CA volume holds
        agent_dir.mkdir()
        agent_file = agent_dir / n.agent_file_key("GOOGLE_SA")
        agent_file.write_bytes(data[n.agent_file_key("GOOGLE_SA")])
        sidecar = SidecarProcess(
            data[n.KEY_SESSION_FILE],  # the operator's session file, byte for byte
            directory=tmp_path / "sc",
            ca=KeyPair(data[n.KEY_CA_CERT], data[n.KEY_CA_KEY]),  # and its name-constrained session CA
            connect_to=[f"{S3_HOST}:443:127.0.0.1:{aws.port}", *ts.connect_to()],
            upstream_ca_files=[aws.ca_file, ts.ca_file],
        )
        with sidecar as sc:
            env = sc.client_env(base={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
            sealed = (n.AWS_ACCESS_KEY_ID, n.AWS_SECRET_ACCESS_KEY, n.AWS_SESSION_TOKEN, "API_TOKEN", "GOOGLE_SA")
            env.update({k: pod_env[k] for k in sealed})  # the session's variables, as the webhook set them
            env.update(
                GOOGLE_APPLICATION_CREDENTIALS=str(agent_file),  # the webhook's path, mounted here instead
                AWS_CONFIG_FILE=str(tmp_path / "none"),
                AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
                AWS_EC2_METADATA_DISABLED="true",
            )
            assert pod_env[n.ENV_GOOGLE_CREDENTIALS] == n.agent_file_path("GOOGLE_SA")
            script = tmp_path / "agent.py"
            script.write_text(AGENT)
            predict = f"https://{VERTEX_HOST}/v1/projects/p/locations/us-east5/publishers/anthropic/models/c:rawPredict"
            proc = subprocess.run(
                [sys.executable, str(script), f"https://{API_HOST}/v1/whoami", predict],
                env=env,
                capture_output=True,
                timeout=180,
                check=False,
            )
            assert proc.returncode == 0, proc.stderr.decode()[-3000:]
            out = json.loads(proc.stdout.decode().strip().splitlines()[-1])
            log, metrics = sc.log_text(), sc.metrics_text()
    assert out["s3"] == "hello through the operator's session"
    assert aws.requests and not aws.failures  # every request verified with the real key
    assert out["oauth_status"] == 200 and ts.token_requests == 1 and ts.api_tokens[0] == ts.issued[0]
    assert out["oauth_body"]["ok"] is True  # (an API echoing the token: tests/credentials/test_oauth2_e2e.py)
    assert str(out["google_token"]).startswith("SEALED_") and out["vertex_status"] == 200
    assert ts.google_requests == 1 and ts.refused == []

    reals = [*key.values(), ts.client_secret, *ts.issued, *sa.values()]
    seen = {"agent output": proc.stdout + proc.stderr, "agent env": json.dumps(env).encode(),
            "agent file": agent_file.read_bytes(), "sidecar log": log.encode(), "metrics": metrics.encode()}  # fmt: skip
    found = [(where, f[:10]) for where, text in seen.items() for f in leak_forms(reals) if f in text]
    assert found == []
    # the control: the real material is where it belongs, the session file only the sidecar mounts
    assert (
        key.secret_access_key.encode() in data[n.KEY_SESSION_FILE]
        and ts.client_secret.encode() in data[n.KEY_SESSION_FILE]
    )
