"""Every object the chart renders is accepted by the real API server (server-side dry run)."""

from __future__ import annotations

import json

import pytest

from oshu_e2e import install
from oshu_e2e.paths import CRD_FILE
from oshu_localkube import LocalCluster

#: Kinds whose CRDs come with other products (cert-manager, prometheus-operator), absent here.
THIRD_PARTY = {"Certificate", "Issuer", "ServiceMonitor"}

VARIANTS = {
    "defaults": {},
    "namespaced": {"watchNamespaces": ["WATCHED"]},
    "cert-manager+monitor": {
        "webhook": {"tls": {"mode": "cert-manager"}, "failurePolicy": "Ignore"},
        "metrics": {"serviceMonitor": {"enabled": True}},
    },
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_server_side_dry_run_of_every_rendered_object(
    chart_cluster: LocalCluster, fresh_namespace, render, variant: str
) -> None:
    chart_cluster.kubectl("apply", "-f", str(CRD_FILE))
    namespace = fresh_namespace("chart-dry")
    # The "restricted" Pod Security Standard: enforced on the test Pod, warned about for the
    # Deployment's pod template (a warning fails the test below).
    chart_cluster.kubectl(
        "label",
        "namespace",
        namespace,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/warn=restricted",
    )
    values = json.loads(json.dumps(VARIANTS[variant]).replace("WATCHED", fresh_namespace("chart-watched")))
    release = f"dry-{variant.split('+')[0]}"
    docs = [
        d
        for d in render(values, release=release, namespace=namespace, tests=True)
        if d["kind"] != "CustomResourceDefinition"
    ]
    skipped = {d["kind"] for d in docs if d["kind"] in THIRD_PARTY}
    checked = [d for d in docs if d["kind"] not in THIRD_PARTY]
    # A dry-run Pod is admitted only if its ServiceAccount exists for real (the API server's
    # ServiceAccount admission looks it up), so those are created first; the dry run below
    # then validates them again as updates.
    install.apply_docs(chart_cluster, [d for d in checked if d["kind"] == "ServiceAccount"])
    result = chart_cluster.kubectl(
        "apply",
        "--dry-run=server",
        "-o",
        "json",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": checked}),
    )
    accepted = json.loads(result.stdout)["items"]
    assert [(d["kind"], d["metadata"]["name"]) for d in accepted] == [
        (d["kind"], d["metadata"]["name"]) for d in checked
    ]
    assert "Warning" not in result.stderr, result.stderr
    kinds = {d["kind"] for d in checked}
    assert {"Deployment", "Service", "MutatingWebhookConfiguration", "ServiceAccount", "Pod", "ConfigMap"} <= kinds
    if variant == "cert-manager+monitor":
        assert skipped == THIRD_PARTY
    else:
        assert not skipped
