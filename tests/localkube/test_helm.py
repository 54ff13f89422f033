"""The pinned helm works against the local cluster: install, upgrade and uninstall a chart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oshu_localkube import LocalCluster, versions

pytestmark = pytest.mark.timeout(180)


def test_helm_reports_pinned_version(kube_cluster: LocalCluster) -> None:
    assert kube_cluster.helm("version", "--short").stdout.strip().split("+")[0] == versions.helm_version()


def _chart(root: Path) -> Path:
    chart = root / "greeter"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: greeter\nversion: 0.1.0\nkubeVersion: '>=1.33.0-0'\n")
    (chart / "values.yaml").write_text("greeting: hello\n")
    (chart / "templates" / "configmap.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-greeting\n"
        "data:\n  greeting: {{ .Values.greeting | quote }}\n  kube: {{ .Capabilities.KubeVersion.Version | quote }}\n"
    )
    return chart


def _configmap(kube_cluster: LocalCluster, namespace: str) -> dict:
    out = kube_cluster.kubectl("get", "configmap", "demo-greeting", "-n", namespace, "-o", "json")
    return json.loads(out.stdout)["data"]


def test_helm_install_upgrade_uninstall(kube_cluster: LocalCluster, kube_namespace: str, tmp_path: Path) -> None:
    chart = _chart(tmp_path)
    ns = kube_namespace
    kube_cluster.helm("install", "demo", str(chart), "-n", ns, "--wait", "--timeout", "60s")
    data = _configmap(kube_cluster, ns)
    assert data["greeting"] == "hello"
    # helm asked the server for its version (the chart's kubeVersion constraint passed too).
    assert data["kube"] == versions.kubernetes_version()

    kube_cluster.helm("upgrade", "demo", str(chart), "-n", ns, "--set", "greeting=bonjour")
    assert _configmap(kube_cluster, ns)["greeting"] == "bonjour"
    releases = json.loads(kube_cluster.helm("list", "-n", ns, "-o", "json").stdout)
    assert [(r["name"], r["revision"], r["status"]) for r in releases] == [("demo", "2", "deployed")]

    kube_cluster.helm("uninstall", "demo", "-n", ns, "--wait")
    gone = kube_cluster.kubectl("get", "configmap", "demo-greeting", "-n", ns, check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr
