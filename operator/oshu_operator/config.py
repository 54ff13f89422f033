"""Operator configuration: one frozen object built from the command line, handed to every part."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from .names import SIDECAR_ADMIN_PORT, SIDECAR_PROXY_PORT

#: Loopback, cluster-internal names and the API server's in-cluster names: traffic that must
#: never go through the proxy (it would gain nothing and could break cluster access).
DEFAULT_NO_PROXY = (
    "localhost",
    "127.0.0.1",
    "::1",
    ".svc",
    ".svc.cluster.local",
    ".cluster.local",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
)


@dataclass(frozen=True, slots=True)
class SidecarConfig:
    """What the webhook injects as the proxy container."""

    image: str = "ghcr.io/oshu-vault/sidecar:0.1.0"
    pull_policy: str = "IfNotPresent"
    cpu_request: str = "50m"
    memory_request: str = "64Mi"
    cpu_limit: str = "1"
    memory_limit: str = "256Mi"
    #: Passed to the sidecar's --log-level (one of names.SIDECAR_LOG_LEVELS).
    log_level: str = "info"
    #: Loopback port of the proxy; HTTP(S)_PROXY of app containers point at it.
    proxy_port: int = SIDECAR_PROXY_PORT
    #: /readyz (the kubelet's probes) and /metrics, on the pod IP.
    admin_port: int = SIDECAR_ADMIN_PORT

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"


@dataclass(frozen=True, slots=True)
class OperatorConfig:
    kubeconfig: str | None = None
    context: str | None = None
    #: Empty = all namespaces (cluster-wide).
    namespaces: tuple[str, ...] = ()
    #: The operator's own namespace: never injected.
    own_namespace: str | None = None
    webhook_host: str = "0.0.0.0"
    webhook_port: int = 9443
    webhook_cert_file: str | None = None
    webhook_key_file: str | None = None
    #: --dev-webhook: self-made certificate, 127.0.0.1, URL-based configuration registered by us.
    dev_webhook: bool = False
    dev_webhook_config: str = "oshu-vault-dev"
    #: In-cluster self-managed TLS: keep the serving certificate in this Secret (ns/name) and
    #: write its CA into this MutatingWebhookConfiguration's caBundle.
    webhook_tls_secret: str | None = None
    webhook_service: str | None = None
    webhook_config_name: str | None = None
    failure_policy: str = "Fail"
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 8080
    sidecar: SidecarConfig = field(default_factory=SidecarConfig)
    no_proxy: tuple[str, ...] = DEFAULT_NO_PROXY
    #: Keep a revoked session Secret this long before deleting it, so kubelets sync the
    #: revoked file into running pods (a deleted Secret stays mounted with its last content).
    revocation_grace: timedelta = timedelta(seconds=90)
    ca_validity: timedelta = timedelta(days=30)
    #: Re-check every session this often even without events (level-triggered safety net).
    resync_interval: timedelta = timedelta(minutes=10)
    #: How long an admission request waits for a just-created session's tokens.
    token_wait: timedelta = timedelta(seconds=5)
    #: Reconciles (and revocations) running at once.
    max_concurrent_reconciles: int = 8
    peering: str | None = None
    log_level: str = "INFO"
    log_format: str = "json"

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    def injectable_namespace(self, namespace: str | None) -> bool:
        from .names import SYSTEM_NAMESPACES

        if not namespace or namespace in SYSTEM_NAMESPACES or namespace == self.own_namespace:
            return False
        return self.clusterwide or namespace in self.namespaces
