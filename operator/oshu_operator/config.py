"""Operator configuration: one frozen object built from the command line, handed to every part."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from .names import ENFORCEMENT_PROXY, SIDECAR_ADMIN_PORT, SIDECAR_PROXY_PORT

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


#: The latest a kubelet with default settings refreshes a Secret volume after the Secret
#: changed: pod workers resync every `syncFrequency` (1 min) stretched by a jitter of up to
#: 50 % (kubelet pod_workers.go, workerResyncIntervalJitterFactor = 0.5), so up to 90 s; with
#: the default `configMapAndSecretChangeDetectionStrategy: Watch` the Secret cache is current,
#: with `Cache` its TTL (the node's ttl annotation, else 1 min) adds to it.
KUBELET_SECRET_SYNC_BOUND = timedelta(seconds=90)


def revocation_grace_problem(grace: timedelta) -> str | None:
    """Why this revocation grace can lose revocations, or None when it covers the kubelet's bound.

    A Secret deleted before the kubelet synced its revoked content stays mounted with the last
    (live) session file, and the sidecar keeps swapping keys: the grace must outlast the sync.
    """
    if grace > KUBELET_SECRET_SYNC_BOUND:
        return None
    return (
        f"revocation grace {int(grace.total_seconds())}s is not above the kubelet's worst-case Secret volume "
        f"refresh ({int(KUBELET_SECRET_SYNC_BOUND.total_seconds())}s with default syncFrequency 1m + 50% jitter): "
        "a running pod may keep the last live session file and never see its revocation"
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
    #: Extra CA certificates (PEM) the sidecar trusts for upstream APIs, on top of the system
    #: roots: copied into every session Secret and passed as the sidecar's --upstream-ca-file.
    upstream_ca_pem: bytes = b""

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
    #: Enforcement of sessions that do not set spec.enforcement (names.ENFORCEMENTS).
    default_enforcement: str = ENFORCEMENT_PROXY
    #: Keep a revoked session Secret this long before deleting it, so kubelets sync the
    #: revoked file into running pods (a deleted Secret stays mounted with its last content).
    #: Twice KUBELET_SECRET_SYNC_BOUND: see revocation_grace_problem.
    revocation_grace: timedelta = timedelta(seconds=180)
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
