"""The local control plane behaves like a real cluster for what the project needs."""

from __future__ import annotations

import base64
import json
import textwrap

import pytest

from oshu_localkube import CommandError, LocalCluster, versions

pytestmark = pytest.mark.timeout(180)


def test_kubectl_and_server_report_the_pinned_release(kube_cluster: LocalCluster) -> None:
    reported = json.loads(kube_cluster.kubectl("version", "-o", "json").stdout)
    pinned = versions.kubernetes_version()
    assert reported["clientVersion"]["gitVersion"] == pinned
    assert reported["serverVersion"]["gitVersion"] == pinned
    assert reported["serverVersion"]["minor"] == pinned.split(".")[1]


def test_namespace_and_secret_round_trip(kube_cluster: LocalCluster, kube_namespace: str) -> None:
    namespace = json.loads(kube_cluster.kubectl("get", "namespace", kube_namespace, "-o", "json").stdout)
    assert namespace["status"]["phase"] == "Active"

    kube_cluster.kubectl(
        "create", "secret", "generic", "upstream-key", "-n", kube_namespace, "--from-literal=token=s3cr3t-value"
    )
    secret = json.loads(
        kube_cluster.kubectl("get", "secret", "upstream-key", "-n", kube_namespace, "-o", "json").stdout
    )
    assert base64.b64decode(secret["data"]["token"]) == b"s3cr3t-value"
    assert secret["type"] == "Opaque"


def test_new_namespace_gets_default_service_account_and_root_ca(
    kube_cluster: LocalCluster, kube_namespace: str
) -> None:
    """Proof the controller-manager runs: these objects only exist because its controllers made them."""
    kube_cluster.kubectl("get", "serviceaccount", "default", "-n", kube_namespace)
    # The root CA publisher may lag the ServiceAccount controller by a moment.
    kube_cluster.kubectl("wait", "--for=create", "configmap/kube-root-ca.crt", "-n", kube_namespace, "--timeout=60s")
    ca = json.loads(
        kube_cluster.kubectl("get", "configmap", "kube-root-ca.crt", "-n", kube_namespace, "-o", "json").stdout
    )
    assert ca["data"]["ca.crt"].strip() == kube_cluster.ca_cert.read_text().strip()


CRD = textwrap.dedent(
    """
    apiVersion: apiextensions.k8s.io/v1
    kind: CustomResourceDefinition
    metadata:
      name: widgets.localkube.test.oshu.dev
    spec:
      group: localkube.test.oshu.dev
      scope: Namespaced
      names: {plural: widgets, singular: widget, kind: Widget}
      versions:
        - name: v1
          served: true
          storage: true
          schema:
            openAPIV3Schema:
              type: object
              properties:
                spec:
                  type: object
                  required: [size]
                  properties:
                    size: {type: integer, minimum: 1}
    """
)


def test_crd_and_custom_object(kube_cluster: LocalCluster, kube_namespace: str) -> None:
    kube_cluster.kubectl("apply", "-f", "-", input=CRD)
    try:
        kube_cluster.kubectl(
            "wait", "--for=condition=Established", "crd/widgets.localkube.test.oshu.dev", "--timeout=60s"
        )
        widget = "apiVersion: localkube.test.oshu.dev/v1\nkind: Widget\nmetadata: {name: w1}\nspec: {size: 3}\n"
        kube_cluster.kubectl("apply", "-n", kube_namespace, "-f", "-", input=widget)
        stored = json.loads(kube_cluster.kubectl("get", "widget", "w1", "-n", kube_namespace, "-o", "json").stdout)
        assert stored["spec"] == {"size": 3}

        # The structural schema is enforced by the server, not by kubectl.
        invalid = widget.replace("w1", "w2").replace("size: 3", "size: 0")
        with pytest.raises(CommandError) as rejected:
            kube_cluster.kubectl("apply", "-n", kube_namespace, "-f", "-", input=invalid)
        assert "spec.size" in rejected.value.stderr
    finally:
        kube_cluster.kubectl("delete", "crd", "widgets.localkube.test.oshu.dev", "--wait=false", check=False)


def test_server_side_dry_run_validates_without_persisting(kube_cluster: LocalCluster, kube_namespace: str) -> None:
    manifest = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: planned}\ndata: {mode: dry}\n"
    result = kube_cluster.kubectl(
        "apply", "--dry-run=server", "-n", kube_namespace, "-o", "json", "-f", "-", input=manifest
    )
    answered = json.loads(result.stdout)
    assert answered["data"] == {"mode": "dry"}
    assert answered["metadata"]["namespace"] == kube_namespace  # defaulted by the server
    missing = kube_cluster.kubectl("get", "configmap", "planned", "-n", kube_namespace, check=False)
    assert missing.returncode != 0 and "NotFound" in missing.stderr

    # A manifest only the server can judge (a name that is not a DNS label) is refused in dry-run too.
    bad = manifest.replace("name: planned", "name: Not_A_Valid_Name")
    refused = kube_cluster.kubectl("apply", "--dry-run=server", "-n", kube_namespace, "-f", "-", input=bad, check=False)
    assert refused.returncode != 0 and "Invalid value" in refused.stderr


def test_owned_objects_are_garbage_collected(kube_cluster: LocalCluster, kube_namespace: str) -> None:
    """The garbage collector (controller-manager) deletes dependents of a deleted owner."""
    kube_cluster.kubectl("create", "configmap", "owner", "-n", kube_namespace)
    uid = kube_cluster.kubectl(
        "get", "configmap", "owner", "-n", kube_namespace, "-o", "jsonpath={.metadata.uid}"
    ).stdout
    dependent = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "dependent",
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}],
        },
        "stringData": {"k": "v"},
    }
    kube_cluster.kubectl("apply", "-n", kube_namespace, "-f", "-", input=json.dumps(dependent))
    kube_cluster.kubectl("delete", "configmap", "owner", "-n", kube_namespace)
    kube_cluster.kubectl("wait", "--for=delete", "secret/dependent", "-n", kube_namespace, "--timeout=60s")
