"""examples/claude-code-bedrock and examples/claude-code-vertex: the manifests are accepted by the real
API server with the CRD (server-side dry run, CEL rules included) and by the operator's own spec
parser, and what they say agrees (the pod's region is a host of the session, the pod opts in)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import yaml

from oshu_e2e.paths import CRD_FILE, REPO_ROOT
from oshu_localkube import LocalCluster
from oshu_operator import names as n
from oshu_operator.spec import parse_spec

EXAMPLES = {"claude-code-bedrock": "aws", "claude-code-vertex": "gcpServiceAccount"}


def _docs(example: str, namespace: str | None = None) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for path in sorted((REPO_ROOT / "examples" / example).glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                if namespace is not None:
                    doc["metadata"]["namespace"] = namespace
                out[doc["kind"]] = doc
    return out


def _env(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_example_is_consistent_and_parses(example: str) -> None:
    docs = _docs(example)
    assert set(docs) == {"Secret", "VaultSession", "Pod"}
    session, pod, secret = docs["VaultSession"], docs["Pod"], docs["Secret"]
    assert pod["metadata"]["labels"][n.LABEL_SESSION] == session["metadata"]["name"]
    parsed = parse_spec(session["spec"])  # the operator's checks: kinds, refs, hosts
    (entry,) = session["spec"]["secrets"]
    assert entry["kind"] == EXAMPLES[example] and parsed.secrets[0].name == entry["name"]
    ref = entry.get("secretRef") or entry["secretKeyRef"]
    assert ref["name"] == secret["metadata"]["name"]
    env = _env(pod)
    hosts = entry["hosts"]
    if example == "claude-code-bedrock":
        assert env["CLAUDE_CODE_USE_BEDROCK"] == "1"
        assert f"bedrock-runtime.{env['AWS_REGION']}.amazonaws.com" in hosts
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(secret["stringData"])
    else:
        assert env["CLAUDE_CODE_USE_VERTEX"] == "1" and env["ANTHROPIC_VERTEX_PROJECT_ID"]
        assert f"{env['CLOUD_ML_REGION']}-aiplatform.googleapis.com" in hosts
        key = json.loads(secret["stringData"][ref["key"]])
        assert key["type"] == "service_account" and key["project_id"] == env["ANTHROPIC_VERTEX_PROJECT_ID"]
    assert not set(env) & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "GOOGLE_APPLICATION_CREDENTIALS"}


def _default_service_account(cluster: LocalCluster, namespace: str) -> None:
    """A dry-run Pod is admitted only once its namespace's default ServiceAccount exists."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if cluster.kubectl("-n", namespace, "get", "serviceaccount", "default", check=False).returncode == 0:
            return
        time.sleep(0.5)
    raise AssertionError(f"no default ServiceAccount in {namespace} after 60 s")


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_example_manifests_pass_the_api_server(chart_cluster: LocalCluster, fresh_namespace: Any, example: str) -> None:
    chart_cluster.kubectl("apply", "-f", str(CRD_FILE))
    namespace = fresh_namespace("cc-example")
    _default_service_account(chart_cluster, namespace)
    docs = list(_docs(example, namespace).values())
    result = chart_cluster.kubectl(
        "apply",
        "--dry-run=server",
        "-o",
        "json",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}),
    )
    accepted = json.loads(result.stdout)["items"]
    assert sorted(d["kind"] for d in accepted) == ["Pod", "Secret", "VaultSession"]
    assert "Warning" not in result.stderr, result.stderr
    session = next(d for d in accepted if d["kind"] == "VaultSession")
    assert session["spec"]["secrets"][0]["kind"] == EXAMPLES[example]


def test_the_crd_refuses_a_broken_variant(chart_cluster: LocalCluster, fresh_namespace: Any) -> None:
    """The dry run above means something: the same session with an aws secret given a secretKeyRef
    instead of a secretRef is refused by the CRD's rules."""
    chart_cluster.kubectl("apply", "-f", str(CRD_FILE))
    namespace = fresh_namespace("cc-example-bad")
    session = _docs("claude-code-bedrock", namespace)["VaultSession"]
    entry = session["spec"]["secrets"][0]
    entry["secretKeyRef"] = {"name": entry.pop("secretRef")["name"], "key": "AWS_ACCESS_KEY_ID"}
    result = chart_cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(session), check=False)
    assert result.returncode != 0 and "name a Secret with secretRef" in result.stderr, result.stderr
