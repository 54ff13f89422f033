"""Install oshu-vault on the local control plane (helm or kubectl) and run its operator here.

There is no kubelet, so the chart's operator Deployment never gets a running pod. Instead the
operator runs on this machine as the chart's ServiceAccount (a real token of it, nothing more),
with the rendered Deployment's own arguments. Two ways, for what each proves:

- `chart_operator()`: the Deployment's arguments verbatim, listeners moved to 127.0.0.1. It
  makes the webhook's TLS Secret and writes its CA into the chart's webhook configuration,
  with the chart's RBAC only.
- `dev_operator()`: the same, but serving the webhook on 127.0.0.1 with a certificate for that
  address (`--dev-webhook`), pointing the chart's own webhook configuration at it (get+patch,
  which the chart grants), because the API server cannot reach a Service without a pod behind
  it. This is the one that injects pods.

While the chart's configuration still points at its Service, no opted-in pod may be created:
the API server would try to reach the Service's cluster IP. `assert_webhook_is_local()`
guards that.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oshu_localkube import LocalCluster
from oshu_localkube.cluster import wait_for
from oshu_testkit.operator_process import OperatorProcess

from . import chart
from .chart import Doc
from .identity import service_account_kubeconfig
from .paths import CHART_DIR, INSTALL_YAML

#: Arguments that only make sense for the in-cluster TLS modes (not with --dev-webhook).
_IN_CLUSTER_TLS = (
    "--webhook-tls-secret",
    "--webhook-service",
    "--webhook-config-name",
    "--webhook-cert-file",
    "--webhook-key-file",
)


@dataclass
class Installation:
    """What was installed (the rendered objects) and how to run its operator locally."""

    cluster: LocalCluster
    docs: list[Doc]
    how: str  # "helm" or "kubectl"
    release: str
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="oshu-e2e-")))
    _kubeconfig: Path | None = None

    @property
    def namespace(self) -> str:
        return chart.service_account(self.docs)[0]

    @property
    def service_account(self) -> str:
        return chart.service_account(self.docs)[1]

    @property
    def webhook_config(self) -> str:
        return chart.webhook_config_name(self.docs)

    def objects(self) -> list[Doc]:
        """Rendered objects except the CRD (which the cluster keeps after an uninstall)."""
        return [d for d in self.docs if d["kind"] != "CustomResourceDefinition"]

    # -- acting as the operator ------------------------------------------------------------
    def kubeconfig(self) -> Path:
        """A kubeconfig holding only a token of the chart's ServiceAccount."""
        if self._kubeconfig is None:
            self._kubeconfig = service_account_kubeconfig(
                self.cluster, self.namespace, self.service_account, self.workdir / "operator.kubeconfig"
            )
        return self._kubeconfig

    def _dir(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _env(self) -> dict[str, str]:
        # POD_NAMESPACE comes from the downward API in the Deployment.
        return {**os.environ, "POD_NAMESPACE": self.namespace}

    def chart_operator(self) -> OperatorProcess:
        """The operator with the Deployment's arguments (in-cluster TLS mode), on loopback."""
        op = OperatorProcess(self.kubeconfig(), directory=self._dir("chart-operator"), env=self._env())
        op.args = [op.args[0], "-m", "oshu_operator", *chart.local_operator_args(self.docs, self.kubeconfig())]
        return op

    def dev_operator(self, extra_args: Sequence[str] = ()) -> OperatorProcess:
        """The operator serving the webhook on 127.0.0.1 through the chart's own configuration."""
        args = [
            a
            for a in chart.local_operator_args(self.docs, self.kubeconfig())
            if a.partition("=")[0] not in _IN_CLUSTER_TLS and not a.startswith("--kubeconfig")
        ]
        return OperatorProcess(
            self.kubeconfig(),
            webhook_config=self.webhook_config,
            directory=self._dir("dev-operator"),
            env=self._env(),
            args=[*args, *extra_args],
        )

    # -- checks ----------------------------------------------------------------------------
    def webhook_configuration(self) -> Doc:
        return get_json(self.cluster, "mutatingwebhookconfiguration", self.webhook_config)

    def restore_webhook_service(self) -> None:
        """Point the configuration back at the chart's Service (as in a cluster), undoing what
        `dev_operator()` changed, e.g. before a `helm upgrade`, which patches it."""
        rendered = {
            h["name"]: h["clientConfig"] for h in chart.find(self.docs, "MutatingWebhookConfiguration")["webhooks"]
        }
        ops = [
            {"op": "replace", "path": f"/webhooks/{i}/clientConfig", "value": rendered[hook["name"]]}
            for i, hook in enumerate(self.webhook_configuration()["webhooks"])
        ]
        self.cluster.kubectl(
            "patch", "mutatingwebhookconfiguration", self.webhook_config, "--type=json", "-p", json.dumps(ops)
        )

    def assert_webhook_is_local(self) -> None:
        """Refuse to go on while the API server would call the webhook through its Service."""
        for hook in self.webhook_configuration()["webhooks"]:
            url = hook["clientConfig"].get("url", "")
            if not url.startswith("https://127.0.0.1:"):
                raise AssertionError(f"webhook {hook['name']} does not point at 127.0.0.1 yet: {hook['clientConfig']}")


# -- installing -----------------------------------------------------------------------------
def helm_install(
    cluster: LocalCluster,
    release: str,
    namespace: str,
    values: dict[str, Any] | None = None,
    *,
    create_namespace: bool = False,
    workdir: Path | None = None,
) -> tuple[Installation, float]:
    """`helm install` the chart; returns the installation and how long helm took (seconds)."""
    docs = chart.documents(
        chart.template(
            cluster.helm_path,
            release=release,
            namespace=namespace,
            values=values,
            extra=["--include-crds", "--skip-tests"],
        )
    )
    args = ["install", release, str(CHART_DIR), "--namespace", namespace, "--wait=false"]
    if create_namespace:
        args.append("--create-namespace")
    if values:
        args += ["--values", "-"]
    started = time.monotonic()
    cluster.helm(*args, input=json.dumps(values) if values else None)
    seconds = time.monotonic() - started
    return Installation(cluster, docs, "helm", release, **({"workdir": workdir} if workdir else {})), seconds


def helm_upgrade(installation: Installation, values: dict[str, Any]) -> Installation:
    namespace = installation.namespace
    docs = chart.documents(
        chart.template(
            installation.cluster.helm_path,
            release=installation.release,
            namespace=namespace,
            values=values,
            extra=["--include-crds", "--skip-tests"],
        )
    )
    installation.cluster.helm(
        "upgrade",
        installation.release,
        str(CHART_DIR),
        "--namespace",
        namespace,
        "--wait=false",
        "--values",
        "-",
        input=json.dumps(values),
    )
    installation.docs = docs
    return installation


def kubectl_install(cluster: LocalCluster, manifest: Path = INSTALL_YAML, workdir: Path | None = None) -> Installation:
    cluster.kubectl("apply", "-f", str(manifest))
    docs = chart.documents(manifest.read_text())
    release = chart.find(docs, "Deployment")["metadata"]["labels"]["app.kubernetes.io/instance"]
    return Installation(cluster, docs, "kubectl", release, **({"workdir": workdir} if workdir else {}))


# -- small API helpers ------------------------------------------------------------------------
def get_json(cluster: LocalCluster, kind: str, name: str, namespace: str | None = None) -> Doc:
    args = ["get", kind, name, "-o", "json"]
    if namespace:
        args += ["-n", namespace]
    return json.loads(cluster.kubectl(*args).stdout)


def apply_docs(cluster: LocalCluster, docs: Iterable[Doc]) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(docs)}))


def session_ready(cluster: LocalCluster, namespace: str, name: str, timeout: float = 60) -> Doc:
    """Wait until the VaultSession's Ready condition is True; returns the session."""

    def ready() -> Doc | None:
        session = get_json(cluster, "vaultsession", name, namespace)
        conditions = (session.get("status") or {}).get("conditions") or []
        return session if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions) else None

    return wait_for(ready, timeout=timeout, what=f"VaultSession {namespace}/{name} Ready")
