"""--dev-webhook pointed at an existing configuration: the chart's keeps everything but the
clientConfig of our webhooks (Helm's labels above all); one of ours from an earlier run is
brought up to date; one missing our webhooks stops the operator with a clear message.

Each test runs a second operator for one empty namespace of its own, next to the session's
operator; the configurations they register select nothing the other tests create.
"""

from __future__ import annotations

import copy

import pytest

from oshu_operator import names as n
from oshu_operator.config import OperatorConfig
from oshu_operator.webhookconfig import client_config_patch, configuration, is_ours
from oshu_testkit.operator_process import OperatorError, OperatorProcess

NEVER = {"matchLabels": {"never": "matches"}}
SERVICE = {"service": {"namespace": "oshu-system", "name": "oshu-vault-webhook", "port": 443}}
HELM_LABELS = {
    "app.kubernetes.io/managed-by": "Helm",
    "app.kubernetes.io/instance": "oshu-vault",
    "helm.sh/chart": "oshu-vault-0.1.0",
}
SOMEONE_ELSES = {
    "name": "audit.example.com",
    "clientConfig": {"url": "https://127.0.0.1:1/audit"},
    "rules": [
        {
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "operations": ["CREATE"],
            "resources": ["configmaps"],
            "scope": "Namespaced",
        }
    ],
    "admissionReviewVersions": ["v1"],
    "sideEffects": "None",
    "failurePolicy": "Ignore",
    "objectSelector": NEVER,
}


def chart_configuration(name: str, ns: str) -> dict:
    """What the chart renders (Service client config, Helm's labels), selecting nothing here."""
    body = configuration(name, OperatorConfig(namespaces=(ns,), failure_policy="Ignore"), SERVICE, None)
    body["metadata"]["labels"] = dict(HELM_LABELS)
    body["metadata"]["annotations"] = {"meta.helm.sh/release-name": "oshu-vault"}
    for hook in body["webhooks"]:
        hook["objectSelector"] = NEVER
        hook["timeoutSeconds"] = 5
    body["webhooks"].append(copy.deepcopy(SOMEONE_ELSES))
    return body


def _without_client_config(hook: dict) -> dict:
    return {k: v for k, v in hook.items() if k != "clientConfig"}


@pytest.fixture
def webhook_config(kube, ns):
    name = f"oshu-vault-dev-test-{ns[-6:]}"
    yield name
    kube.kubectl("delete", "mutatingwebhookconfiguration", name, "--ignore-not-found", check=False)


def test_the_charts_configuration_keeps_its_labels_and_everything_but_our_client_config(
    kube, ns, webhook_config, tmp_path
):
    before = kube.apply(chart_configuration(webhook_config, ns))
    with OperatorProcess(kube.cluster.kubeconfig, webhook_config=webhook_config, namespaces=[ns], directory=tmp_path):
        after = kube.get("mutatingwebhookconfiguration", webhook_config)
    assert after["metadata"]["labels"] == HELM_LABELS  # not oshu-vault-operator's managed-by
    assert after["metadata"]["annotations"] == before["metadata"]["annotations"]
    assert [h["name"] for h in after["webhooks"]] == [h["name"] for h in before["webhooks"]]
    for old, new in zip(before["webhooks"], after["webhooks"], strict=True):
        assert _without_client_config(new) == _without_client_config(old), new["name"]
    ours, theirs = after["webhooks"][:2], after["webhooks"][2]
    for hook in ours:
        assert hook["clientConfig"]["url"].startswith("https://127.0.0.1:") and hook["clientConfig"]["caBundle"]
        assert "service" not in hook["clientConfig"]
    assert theirs["clientConfig"] == SOMEONE_ELSES["clientConfig"]


def test_our_own_configuration_from_an_earlier_run_is_brought_up_to_date(kube, ns, webhook_config, tmp_path):
    stale = configuration(
        webhook_config, OperatorConfig(namespaces=("somewhere-else",)), {"url": "https://127.0.0.1:1/"}, None
    )
    for hook in stale["webhooks"]:
        hook["objectSelector"] = NEVER  # until the operator rewrites it
    kube.apply(stale)
    with OperatorProcess(kube.cluster.kubeconfig, webhook_config=webhook_config, namespaces=[ns], directory=tmp_path):
        after = kube.get("mutatingwebhookconfiguration", webhook_config)
    assert is_ours(after)
    for hook in after["webhooks"]:
        selected = hook["namespaceSelector"]["matchExpressions"][-1]
        assert selected == {"key": "kubernetes.io/metadata.name", "operator": "In", "values": [ns]}
        assert hook["clientConfig"]["caBundle"] and hook["objectSelector"] != NEVER


def test_a_configuration_lacking_our_webhooks_stops_the_operator_clearly(kube, ns, webhook_config, tmp_path):
    body = chart_configuration(webhook_config, ns)
    body["webhooks"] = [h for h in body["webhooks"] if h["name"] != n.EPHEMERAL_WEBHOOK_NAME]
    kube.apply(body)
    with pytest.raises(OperatorError, match=f"has no webhook named {n.EPHEMERAL_WEBHOOK_NAME}"):
        OperatorProcess(
            kube.cluster.kubeconfig, webhook_config=webhook_config, namespaces=[ns], directory=tmp_path
        ).start(timeout=30)
    after = kube.get("mutatingwebhookconfiguration", webhook_config)
    assert all("service" in h["clientConfig"] for h in after["webhooks"][:1]), "left as it was"


def test_client_config_patch_is_guarded_and_minimal():
    current = chart_configuration("c", "ns")
    current["metadata"]["resourceVersion"] = "42"
    wanted = configuration("c", OperatorConfig(), {"url": "https://127.0.0.1:9443"}, b"ca")["webhooks"]
    ops = client_config_patch(current, wanted)
    assert ops[0] == {"op": "test", "path": "/metadata/resourceVersion", "value": "42"}
    assert [op["path"] for op in ops[1:]] == ["/webhooks/0/clientConfig", "/webhooks/1/clientConfig"]
    assert all(op["op"] == "replace" and op["value"]["url"].startswith("https://127.0.0.1:9443/") for op in ops[1:])
    for i, hook in enumerate(wanted):
        current["webhooks"][i]["clientConfig"] = hook["clientConfig"]
    assert client_config_patch(current, wanted) == []  # already pointing at us: no write at all
    assert not is_ours(current) and is_ours(configuration("c", OperatorConfig(), SERVICE, None))
