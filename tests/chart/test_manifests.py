"""manifests/install.yaml is the chart rendered with its defaults, and the examples are valid."""

from __future__ import annotations

from pathlib import Path

from oshu_contract.session import SEALED_PREFIX
from oshu_e2e import chart, examples
from oshu_e2e.manifests import NAMESPACE, render
from oshu_e2e.paths import CRD_FILE, INSTALL_YAML
from oshu_operator import names as n


def test_install_yaml_is_not_stale(helm: Path) -> None:
    assert INSTALL_YAML.read_text() == render(helm), "manifests/install.yaml is stale: run hack/render-manifests"


def test_install_yaml_carries_the_single_crd_verbatim() -> None:
    crd_text = CRD_FILE.read_text().strip()
    assert crd_text in INSTALL_YAML.read_text(), "the CRD in install.yaml must be crds/ byte for byte"


def test_install_yaml_objects(render) -> None:
    docs = chart.documents(INSTALL_YAML.read_text())
    kinds = [d["kind"] for d in docs]
    assert kinds[:2] == ["CustomResourceDefinition", "Namespace"], "CRD and namespace first, for kubectl apply"
    assert not [d for d in docs if d["kind"] == "Pod"], "no helm test hooks in install.yaml"
    assert {d["metadata"].get("namespace", NAMESPACE) for d in docs} == {NAMESPACE}
    same = {(d["kind"], d["metadata"]["name"]) for d in render(release="oshu-vault", namespace=NAMESPACE)}
    assert {(d["kind"], d["metadata"]["name"]) for d in docs} == same | {("Namespace", NAMESPACE)}
    for doc in docs:
        labels = doc["metadata"].get("labels") or {}
        assert labels.get("app.kubernetes.io/managed-by") != "Helm", f"{doc['kind']} claims to be Helm-managed"
        if doc["kind"] != "CustomResourceDefinition":
            # `kubectl delete -f install.yaml -l app.kubernetes.io/instance=oshu-vault` keeps only the CRD
            assert labels.get("app.kubernetes.io/instance") == "oshu-vault", doc["kind"]


def test_examples_opt_in_with_the_operator_label() -> None:
    docs = examples.load()
    assert set(docs) == {"Namespace", "Secret", "VaultSession", "Pod"}
    session, pod, secret = docs["VaultSession"], docs["Pod"], docs["Secret"]
    assert pod["metadata"]["labels"][n.LABEL_SESSION] == session["metadata"]["name"]
    ref = session["spec"]["secrets"][0]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == (secret["metadata"]["name"], "api-key")
    value = examples.real_key(docs)
    assert "EXAMPLE-not-a-real-key" in value and not value.startswith(SEALED_PREFIX)
    for doc in docs.values():
        assert doc["metadata"].get("namespace", examples.NAMESPACE) == examples.NAMESPACE
