"""The running operator's parts, wired together: API client, reconciler, admission, webhook TLS.

One `Runtime` per process. kopf handlers (handlers.py) close over it; the CLI builds it,
runs kopf and the health server around it, and closes it.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import tempfile
from pathlib import Path
from typing import Any

import kopf
from kubernetes_asyncio.client.exceptions import ApiException

from . import names as n
from . import tls, webhookconfig
from .admission import Admission
from .config import OperatorConfig
from .kube import Kube, in_cluster
from .metrics import Metrics
from .reconciler import Reconciler
from .server import AdmissionServer

log = logging.getLogger(__name__)


class Runtime:
    def __init__(self, config: OperatorConfig, kube: Kube, metrics: Metrics | None = None) -> None:
        self.config = config
        self.kube = kube
        self.metrics = metrics or Metrics()
        self.reconciler = Reconciler(config, kube, self.metrics)
        self.admission = Admission(config, kube, self.metrics)
        self.kopf_ready = asyncio.Event()
        self.webhook_ready = asyncio.Event()
        self._tls_dir: tempfile.TemporaryDirectory[str] | None = None

    # --- readiness -----------------------------------------------------------------------
    def readiness(self) -> dict[str, bool]:
        return {"operator": self.kopf_ready.is_set(), "webhook": self.webhook_ready.is_set()}

    # --- kopf credentials: the same source as the kubernetes-asyncio client ---------------
    def connection_info(self, **kwargs: Any) -> kopf.ConnectionInfo | None:
        if self.config.kubeconfig is None and in_cluster():
            return kopf.login_with_service_account(**kwargs)
        cfg = self.kube.api.configuration
        auth = (cfg.api_key or {}).get("authorization") or (cfg.api_key or {}).get("BearerToken")
        token = auth.split(" ", 1)[1] if auth and " " in auth else auth
        return kopf.ConnectionInfo(
            server=cfg.host,
            ca_path=cfg.ssl_ca_cert,
            insecure=not cfg.verify_ssl,
            certificate_path=cfg.cert_file,
            private_key_path=cfg.key_file,
            scheme="Bearer" if token else None,
            token=token,
        )

    # --- kopf settings --------------------------------------------------------------------
    async def configure(self, settings: kopf.OperatorSettings) -> None:
        await self._require_crd()
        # No runtime observation of CRDs/namespaces: the CRD is installed before the operator
        # (checked above) and namespaces are exact names, so the operator needs no RBAC on
        # customresourcedefinitions or namespaces.
        settings.scanning.disabled = True
        settings.persistence.finalizer = n.FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=n.GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=n.GROUP, key="last-handled-configuration"
        )
        settings.posting.enabled = True
        settings.posting.loggers = False  # Events are the reconciler's own, written for users
        settings.posting.reporting_component = n.EVENT_COMPONENT
        # The operator never needs its own session Secrets in the watch stream (large, and
        # written by itself): only the Secrets users reference.
        settings.watching.label_selectors[("v1", "secrets")] = f"{n.LABEL_MANAGED_BY}!={n.MANAGED_BY}"
        settings.watching.server_timeout = 300
        settings.execution.max_workers = 4
        settings.admission.managed = None  # the configuration is ours (dev) or the chart's
        # The CRD is installed before the operator (chart crds/, install.yaml): no need to watch
        # CRDs or namespaces, so no RBAC for them (kopf would retry 403s on every start).
        settings.scanning.disabled = True
        settings.admission.server = await self._admission_server()

    async def _require_crd(self) -> None:
        """Fail fast, with the fix in the message, when the VaultSession CRD is not served."""
        try:
            resources = await self.kube.api_resources(n.GROUP, n.VERSION)
        except Exception as e:
            raise kopf.PermanentError(f"cannot discover {n.API_VERSION}: {e}") from None
        if n.PLURAL not in resources:
            raise SystemExit(
                f"oshu-operator: the {n.PLURAL}.{n.GROUP} CRD is not installed; apply "
                "charts/oshu-vault/crds/vaultsessions.vault.oshu.dev.yaml (or install the chart) first"
            )

    async def _admission_server(self) -> AdmissionServer:
        cfg = self.config
        cafile_data: bytes | None = None
        certfile, keyfile = cfg.webhook_cert_file, cfg.webhook_key_file
        host = cfg.webhook_host
        if cfg.dev_webhook:
            host = "127.0.0.1"
            pair = tls.mint(["127.0.0.1", "localhost"])
            certfile, keyfile = self._write_pair(pair)
            cafile_data = pair.ca_pem
        elif cfg.webhook_tls_secret and not certfile:
            ns, name = cfg.webhook_tls_secret.split("/", 1)
            svc_ns, svc = (cfg.webhook_service or f"{ns}/oshu-vault-webhook").split("/", 1)
            pair = await tls.ensure_in_secret(
                self.kube, ns, name, tls.service_names(svc, svc_ns), owner=await self._webhook_config_owner()
            )
            certfile, keyfile = self._write_pair(pair)
            cafile_data = pair.ca_pem
        if not certfile or not keyfile:
            raise SystemExit(
                "oshu-operator: the webhook needs --dev-webhook, --webhook-tls-secret, "
                "or --webhook-cert-file with --webhook-key-file"
            )
        return AdmissionServer(
            metrics=self.metrics,
            on_serving=self._on_serving,
            addr=host,
            port=cfg.webhook_port or None,
            certfile=certfile,
            pkeyfile=keyfile,
            cadata=cafile_data,
            file_check_interval=30.0,
        )

    async def _webhook_config_owner(self) -> dict[str, Any] | None:
        """ownerReference to the (chart's) webhook configuration, if it exists already."""
        name = self.config.webhook_config_name
        current = await self.kube.get_mutating_webhook(name) if name else None
        if current is None:
            return None
        return {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "name": current["metadata"]["name"],
            "uid": current["metadata"]["uid"],
        }

    def _write_pair(self, pair: tls.ServingCert) -> tuple[str, str]:
        if self._tls_dir is None:
            self._tls_dir = tempfile.TemporaryDirectory(prefix="oshu-webhook-")
        cert, key = pair.write(Path(self._tls_dir.name))
        return str(cert), str(key)

    async def _on_serving(self, client_config: dict[str, Any]) -> None:
        cfg = self.config
        ca_pem = None
        if client_config.get("caBundle"):
            ca_pem = base64.b64decode(client_config["caBundle"])
        if cfg.dev_webhook:
            await self._register_dev_webhook(client_config["url"], ca_pem)
        elif cfg.webhook_config_name and ca_pem:
            await self._patch_ca_bundle(cfg.webhook_config_name, ca_pem)
        self.webhook_ready.set()

    async def _register_dev_webhook(self, url: str, ca_pem: bytes | None) -> None:
        """Point --dev-webhook-config at this process, touching no more than needed.

        Absent: create it, labelled as ours. Ours (an earlier dev run): bring its webhooks up to
        date (namespaces and failure policy may have changed). Someone else's, e.g. the chart's
        when a local operator stands in for the Deployment: only the clientConfig of each of our
        webhooks (get+patch, which the chart grants); its labels (Helm's managed-by) and the
        rest stay as its owner wrote them.
        """
        cfg = self.config
        name = cfg.dev_webhook_config
        body = webhookconfig.configuration(name, cfg, {"url": url}, ca_pem)
        for attempt in range(5):
            current = await self.kube.get_mutating_webhook(name)
            try:
                if current is None:
                    await self.kube.create_mutating_webhook(body)
                elif webhookconfig.is_ours(current):
                    await self.kube.merge_patch_mutating_webhook(
                        name,
                        {
                            "metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
                            "webhooks": body["webhooks"],
                        },
                    )
                else:
                    ops = webhookconfig.client_config_patch(current, body["webhooks"])
                    if ops:
                        await self.kube.patch_mutating_webhook(name, ops)
            except ApiException as e:
                # Created or changed between our read and our write (409; 422: the patch's
                # resourceVersion test failed): read again.
                if e.status not in (409, 422) or attempt == 4:
                    raise
                continue
            log.info("webhook configuration registered", extra={"configuration": name, "url": url})
            return

    async def _patch_ca_bundle(self, name: str, ca_pem: bytes) -> None:
        for attempt in range(60):
            current = await self.kube.get_mutating_webhook(name)
            if current is not None:
                ops = webhookconfig.ca_bundle_patch(current, ca_pem)
                if ops:
                    await self.kube.patch_mutating_webhook(name, ops)
                    log.info("webhook caBundle updated", extra={"configuration": name})
                return
            if attempt == 0:
                log.warning("webhook configuration not found yet; waiting", extra={"configuration": name})
            await asyncio.sleep(2)
        raise RuntimeError(f"MutatingWebhookConfiguration {name} does not exist")

    async def cleanup(self) -> None:
        """Graceful stop. A registered dev webhook configuration stays: with failurePolicy Fail,
        a labelled pod is refused while no operator serves it rather than started without its proxy."""
        await self.reconciler.close()

    async def close(self) -> None:
        await self.kube.close()
        if self._tls_dir is not None:
            self._tls_dir.cleanup()
            self._tls_dir = None
