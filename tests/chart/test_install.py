"""Install for real on the local API server (helm, then kubectl), run the operator as the chart's
ServiceAccount, inject a pod, upgrade, uninstall, and check nothing is left but the CRD.

The operator runs on this machine with a token of the chart's ServiceAccount and nothing else
(oshu_e2e.install explains why and how), so every API call it makes is authorised by the
chart's RBAC alone: a missing permission shows up as a 403 in its log or a step that never
completes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from oshu_e2e import chart, examples, install
from oshu_e2e.identity import service_account_kubeconfig
from oshu_e2e.install import Installation, get_json
from oshu_e2e.paths import CHART_DIR, INSTALL_YAML
from oshu_localkube import LocalCluster
from oshu_localkube.cluster import wait_for
from oshu_operator import names as n
from oshu_testkit.operator_process import OperatorProcess

pytestmark = pytest.mark.timeout(600)

#: Words in an operator log that mean the chart's RBAC was not enough.
DENIED = ("status=403", "'code': 403", "Forbidden", "forbidden", "Not enough permissions")


def _expected(record: dict) -> bool:
    """Error-level records that are kopf's way of saying "retrying". (Refusals, such as the helm
    test's, and the revocation grace are not errors: the operator logs them at INFO.)"""
    msg = str(record.get("msg", ""))
    return "will retry" in msg and "status=429" in msg  # a new CRD's watch cache initialising


def _assert_log_clean(op: OperatorProcess, *secrets: str) -> None:
    text = op.log_text()
    for word in DENIED:
        assert word not in text, f"operator log mentions {word!r} (missing RBAC?):\n{op.log_tail()}"
    errors = [
        r for r in op.log_records() if str(r.get("level", "")).upper() in ("ERROR", "CRITICAL") and not _expected(r)
    ]
    assert not errors, errors
    for secret in secrets:
        assert secret not in text, "a real secret value reached the operator log"


def _tls_secret(installation: Installation) -> tuple[str, str]:
    arg = next(a for a in chart.operator_container(installation.docs)["args"] if a.startswith("--webhook-tls-secret="))
    namespace, name = arg.split("=", 1)[1].split("/")
    return namespace, name


# -- the steps ----------------------------------------------------------------------------------
def run_chart_operator(installation: Installation) -> None:
    """The Deployment's own arguments: webhook TLS Secret made, caBundle written, no 403."""
    cluster = installation.cluster
    with installation.chart_operator() as op:
        ns, name = _tls_secret(installation)
        secret = get_json(cluster, "secret", name, ns)
        config = installation.webhook_configuration()
        owner = secret["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["uid"]) == (
            "MutatingWebhookConfiguration",
            installation.webhook_config,
            config["metadata"]["uid"],
        )
        assert [h["clientConfig"].get("caBundle") for h in config["webhooks"]] == [secret["data"]["ca.crt"]] * 2
        status, body = op.get("/readyz")
        assert status == 200, body
    _assert_log_clean(op)


def inject_example_pod(
    installation: Installation,
    op: OperatorProcess,
    namespace: str,
    pod_name: str = "agent",
    proxy_port: int = n.SIDECAR_PROXY_PORT,
) -> dict:
    """Apply the example Secret + VaultSession + labelled Pod into `namespace`; return the stored Pod."""
    cluster = installation.cluster
    installation.assert_webhook_is_local()
    rendered = chart.find(installation.docs, "MutatingWebhookConfiguration")["metadata"]["labels"]
    assert installation.webhook_configuration()["metadata"]["labels"] == rendered, (
        "the dev-webhook operator changed the labels of the chart's configuration (Helm's managed-by)"
    )
    docs = examples.load(namespace)
    real = examples.real_key(docs)
    install.apply_docs(cluster, [docs["Secret"], docs["VaultSession"]])
    session = install.session_ready(cluster, namespace, docs["VaultSession"]["metadata"]["name"])
    sealed = session["status"]["tokens"]["ANTHROPIC_API_KEY"]
    assert sealed.startswith("SEALED_") and real not in json.dumps(session)

    pod = dict(docs["Pod"], metadata=dict(docs["Pod"]["metadata"], name=pod_name))
    install.apply_docs(cluster, [pod])
    stored = get_json(cluster, "pod", pod_name, namespace)
    spec = stored["spec"]
    (sidecar,) = [c for c in spec.get("initContainers", []) if c["name"] == n.SIDECAR_CONTAINER]
    assert sidecar["restartPolicy"] == "Always"
    (app,) = spec["containers"]
    env = {e["name"]: e.get("value") for e in app["env"]}
    assert env["ANTHROPIC_API_KEY"] == sealed
    assert env["HTTPS_PROXY"] == env["https_proxy"] == f"http://127.0.0.1:{proxy_port}"
    assert env["SSL_CERT_FILE"] == n.CA_BUNDLE_PATH and env["NODE_EXTRA_CA_CERTS"] == n.CA_CERT_PATH
    assert {m["mountPath"] for m in app["volumeMounts"]} == {n.CA_MOUNT_DIR}
    assert json.loads(stored["metadata"]["annotations"][n.ANNOTATION_INJECTED])
    assert real not in json.dumps(stored), "the real key reached the pod object"
    _assert_log_clean(op, real)
    return stored


def run_helm_test_script(installation: Installation) -> str:
    """files/webhook-check.py (what `helm test` runs in a pod), as the test's own ServiceAccount."""
    cluster = installation.cluster
    hooks = chart.documents(
        chart.template(
            cluster.helm_path,
            release=installation.release,
            namespace=installation.namespace,
            extra=["--show-only", "templates/tests/webhook-test.yaml"],
        )
    )
    pod = chart.find(hooks, "Pod")
    install.apply_docs(
        cluster, [d for d in hooks if d["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding")]
    )
    try:
        sa_dir = installation.workdir / "helm-test-sa"
        kubeconfig = service_account_kubeconfig(
            cluster,
            installation.namespace,
            pod["spec"]["serviceAccountName"],
            installation.workdir / "helm-test.kubeconfig",
        )
        sa_dir.mkdir(exist_ok=True)
        user = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]
        (sa_dir / "token").write_text(user["token"])
        (sa_dir / "ca.crt").write_bytes(cluster.ca_cert.read_bytes())
        host, port = cluster.server.removeprefix("https://").rsplit(":", 1)
        env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
        env.update(
            SA_DIR=str(sa_dir), KUBERNETES_SERVICE_HOST=host, KUBERNETES_SERVICE_PORT=port, PATH=os.environ["PATH"]
        )
        proc = subprocess.run(
            [sys.executable, str(CHART_DIR / "files" / "webhook-check.py")],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0 and proc.stdout.strip().endswith("PASS"), proc.stdout + proc.stderr
        return proc.stdout
    finally:
        cluster.kubectl(
            "delete",
            "-f",
            "-",
            "--ignore-not-found",
            check=False,
            input=json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "List",
                    "items": [d for d in hooks if d["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding")],
                }
            ),
        )


def remove_session(installation: Installation, namespace: str) -> None:
    """Pods and session deleted while the operator runs (its finalizer revokes the session)."""
    cluster = installation.cluster
    cluster.kubectl("-n", namespace, "delete", "pods", "--all", "--wait=false")
    cluster.kubectl("-n", namespace, "delete", "vaultsession", "claude", "--timeout=60s")
    wait_for(
        lambda: (
            not cluster.kubectl("-n", namespace, "get", "secrets", "-o", "name").stdout.count(n.SESSION_SECRET_PREFIX)
        ),
        timeout=60,
        what="the session Secret to be deleted",
    )


def assert_nothing_left(installation: Installation) -> None:
    cluster = installation.cluster
    selector = f"app.kubernetes.io/instance={installation.release}"
    cluster_scoped = cluster.kubectl(
        "get", "clusterroles,clusterrolebindings,mutatingwebhookconfigurations", "-l", selector, "-o", "name"
    ).stdout.split()
    assert cluster_scoped == [], cluster_scoped
    assert not [
        name
        for name in cluster.kubectl("get", "clusterroles,clusterrolebindings", "-o", "name").stdout.split()
        if name.split("/", 1)[1].startswith(chart.find(installation.docs, "Deployment")["metadata"]["name"])
    ]
    ns = installation.namespace
    exists = cluster.kubectl("get", "namespace", ns, "--ignore-not-found", "-o", "name").stdout.strip()
    if exists:
        tls_ns, tls_name = _tls_secret(installation)
        # The operator-made TLS Secret goes with its owner, the webhook configuration (garbage collector).
        wait_for(
            lambda: (
                not cluster.kubectl(
                    "-n", tls_ns, "get", "secret", tls_name, "--ignore-not-found", "-o", "name"
                ).stdout.strip()
            ),
            timeout=60,
            what="TLS Secret GC",
        )
        left = cluster.kubectl(
            "-n",
            ns,
            "get",
            "all,serviceaccounts,secrets,configmaps,roles,rolebindings,poddisruptionbudgets",
            "-o",
            "name",
        ).stdout.split()
        assert sorted(left) == ["configmap/kube-root-ca.crt", "serviceaccount/default"], left
    assert cluster.kubectl("get", "crd", "vaultsessions.vault.oshu.dev", "-o", "name").stdout.strip(), (
        "the CRD stays (Helm convention): VaultSessions of other installs survive"
    )


# -- the tests ----------------------------------------------------------------------------------
def test_helm_install_upgrade_uninstall(
    chart_cluster: LocalCluster, fresh_namespace, record_property, tmp_path: Path
) -> None:
    cluster = chart_cluster
    namespace = fresh_namespace("oshu-helm")
    agents = fresh_namespace("agents-helm")
    release = "vault-helm"
    installation, seconds = install.helm_install(cluster, release, namespace, workdir=tmp_path)
    try:
        record_property("helm_install_seconds", round(seconds, 2))
        print(f"helm install took {seconds:.2f}s")
        assert "STATUS: deployed" in cluster.helm("status", release, "-n", namespace).stdout
        notes = cluster.helm("get", "notes", release, "-n", namespace).stdout
        assert "rollout status deployment/vault-helm-oshu-vault" in notes and f"helm test {release}" in notes
        assert f"{n.LABEL_SESSION}: agent" in notes and "kind: VaultSession" in notes
        deployment = chart.find(installation.docs, "Deployment")["metadata"]["name"]
        assert deployment == "vault-helm-oshu-vault"
        config = installation.webhook_configuration()
        assert all("service" in h["clientConfig"] and not h["clientConfig"].get("caBundle") for h in config["webhooks"])

        run_chart_operator(installation)
        with installation.dev_operator(["--revocation-grace=2s"]) as op:
            inject_example_pod(installation, op, agents)
            print(run_helm_test_script(installation))
        _assert_log_clean(op, examples.real_key(examples.load()))

        # Back to the in-cluster state (Service + the operator's caBundle), then helm upgrade with
        # changed values: new sidecar image, ports and log level, webhook settings, log level.
        installation.restore_webhook_service()
        run_chart_operator(installation)
        ca_bundles = [h["clientConfig"]["caBundle"] for h in installation.webhook_configuration()["webhooks"]]
        values = {
            "sidecar": {"image": {"tag": "0.2.0"}, "proxyPort": 16080, "adminPort": 16090, "logLevel": "debug"},
            "operator": {"logLevel": "debug"},
            "webhook": {"failurePolicy": "Ignore", "timeoutSeconds": 5},
        }
        install.helm_upgrade(installation, values)
        spec = get_json(cluster, "deployment", deployment, namespace)["spec"]["template"]["spec"]
        args = spec["containers"][0]["args"]
        assert "--sidecar-image=oshu-vault-sidecar:0.2.0" in args and "--log-level=DEBUG" in args
        assert "--failure-policy=Ignore" in args
        assert {"--sidecar-proxy-port=16080", "--sidecar-admin-port=16090", "--sidecar-log-level=debug"} <= set(args)
        live = installation.webhook_configuration()["webhooks"]
        assert {(h["failurePolicy"], h["timeoutSeconds"]) for h in live} == {("Ignore", 5)}
        assert [h["clientConfig"]["caBundle"] for h in live] == ca_bundles, "helm upgrade dropped the caBundle"
        history = cluster.helm("history", release, "-n", namespace, "-o", "json").stdout
        assert [r["status"] for r in json.loads(history)] == ["superseded", "deployed"]

        # The upgraded release, run again: its pods get the new sidecar image.
        run_chart_operator(installation)
        with installation.dev_operator(["--revocation-grace=2s"]) as op:
            pod = inject_example_pod(installation, op, agents, pod_name="agent-after-upgrade", proxy_port=16080)
            (sidecar,) = pod["spec"]["initContainers"]
            assert sidecar["image"] == "oshu-vault-sidecar:0.2.0"
            assert (
                "127.0.0.1:16080" in sidecar["args"]
                and sidecar["args"][sidecar["args"].index("--log-level") + 1] == "debug"
            )
            assert sidecar["readinessProbe"]["httpGet"]["port"] == 16090
            remove_session(installation, agents)
        _assert_log_clean(op)

        cluster.helm("uninstall", release, "-n", namespace, "--wait", "--timeout=60s")
        assert_nothing_left(installation)
    finally:
        cluster.helm("uninstall", release, "-n", namespace, "--ignore-not-found", check=False)


def test_kubectl_apply_install_yaml_then_delete(chart_cluster: LocalCluster, fresh_namespace, tmp_path: Path) -> None:
    cluster = chart_cluster
    agents = fresh_namespace("agents-kubectl")
    docs = chart.documents(INSTALL_YAML.read_text())
    install.apply_docs(cluster, [chart.find(docs, "Namespace")])
    try:
        # Every object is accepted by the API server before anything is created for real.
        dry = cluster.kubectl("apply", "--dry-run=server", "-f", str(INSTALL_YAML))
        assert dry.stdout.count("(server dry run)") == len(docs), dry.stdout
        installation = install.kubectl_install(cluster, workdir=tmp_path)
        assert installation.namespace == "oshu-vault"

        run_chart_operator(installation)
        with installation.dev_operator(["--revocation-grace=2s"]) as op:
            inject_example_pod(installation, op, agents)
            remove_session(installation, agents)
        _assert_log_clean(op)

        # Everything but the CRD: the documented uninstall, which keeps VaultSessions' definition.
        cluster.kubectl(
            "delete", "-f", str(INSTALL_YAML), "-l", "app.kubernetes.io/instance=oshu-vault", "--wait", "--timeout=120s"
        )
        wait_for(
            lambda: (
                not cluster.kubectl("get", "namespace", "oshu-vault", "--ignore-not-found", "-o", "name").stdout.strip()
            ),
            timeout=120,
            what="namespace deletion",
        )
        assert_nothing_left(installation)
    finally:
        cluster.kubectl(
            "delete",
            "-f",
            str(INSTALL_YAML),
            "-l",
            "app.kubernetes.io/instance=oshu-vault",
            "--ignore-not-found",
            "--wait=false",
            check=False,
        )
