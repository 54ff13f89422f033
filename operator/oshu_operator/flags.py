"""The `oshu-operator` command line: every flag, its type and its OSHU_* environment default.

Every option can also come from an environment variable (OSHU_ + the option in upper
snake case, e.g. OSHU_SIDECAR_IMAGE); the command line wins. cli.py turns the parsed
flags into an OperatorConfig and runs the operator.
"""

from __future__ import annotations

import argparse
import os
from datetime import timedelta
from typing import overload

from .config import DEFAULT_NO_PROXY, SidecarConfig
from .duration import DurationError, parse_duration
from .names import ENFORCEMENT_PROXY, ENFORCEMENTS, SIDECAR_LOG_LEVELS, SIDECAR_PORT_RANGE, SIDECAR_TRANSPARENT_PORT

EPILOG = """\
examples:
  # local development / tests: webhook on 127.0.0.1 with a self-made certificate,
  # registered by the operator as a URL-based MutatingWebhookConfiguration
  oshu-operator --kubeconfig ~/.kube/config --dev-webhook --webhook-listen 127.0.0.1:9443

  # in a cluster (what the Helm chart runs): TLS kept in a Secret, caBundle patched into
  # the chart's Service-based webhook configuration
  oshu-operator --webhook-tls-secret oshu-system/oshu-vault-webhook-tls \\
      --webhook-service oshu-system/oshu-vault-webhook --webhook-config-name oshu-vault \\
      --sidecar-image registry.example/oshu-vault-sidecar:0.1.0

  # with cert-manager: serve the mounted certificate, leave the configuration alone
  oshu-operator --webhook-cert-file /tls/tls.crt --webhook-key-file /tls/tls.key

Pods opt in with the label vault.oshu.dev/session=<VaultSession name>; the webhook
configuration selects on that label, so other pods never reach the operator.
Reference: docs/operator.md.
"""


@overload
def _env(name: str, default: str) -> str: ...
@overload
def _env(name: str, default: None = None) -> str | None: ...
def _env(name: str, default: str | None = None) -> str | None:
    """An OSHU_<NAME> variable (flags' defaults come from the environment)."""
    return os.environ.get("OSHU_" + name.upper().replace("-", "_"), default)


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _sidecar_port(value: str) -> int:
    low, high = SIDECAR_PORT_RANGE
    if not value.isdigit() or not low <= int(value) <= high:
        raise argparse.ArgumentTypeError(
            f"expected a port from {low} to {high} (the sidecar runs without privileges), got {value!r}"
        )
    return int(value)


def _duration(value: str) -> timedelta:
    try:
        return parse_duration(value)
    except DurationError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _ns_name(value: str) -> str:
    if value.count("/") != 1 or not all(value.split("/")):
        raise argparse.ArgumentTypeError(f"expected NAMESPACE/NAME, got {value!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="oshu-operator",
        description="oshu-vault operator: reconciles VaultSessions into sealed tokens, a per-session CA and "
        "a session Secret, and injects the oshu-vault proxy sidecar into pods that opt in.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _cluster_access(p)
    _admission_webhook(p)
    _injected_sidecar(p)
    _sessions(p)
    _operations(p)
    return p


def _cluster_access(p: argparse.ArgumentParser) -> None:
    """Which cluster, context and namespaces."""
    g = p.add_argument_group("cluster access")
    g.add_argument(
        "--kubeconfig",
        default=_env("kubeconfig"),
        metavar="PATH",
        help="kubeconfig to use (default: in-cluster service account, else $KUBECONFIG or ~/.kube/config)",
    )
    g.add_argument("--context", default=_env("context"), help="kubeconfig context (default: current)")
    g.add_argument(
        "-n",
        "--namespace",
        dest="namespaces",
        action="append",
        metavar="NS",
        default=[x for x in (_env("namespaces") or "").split(",") if x],
        help="watch and inject only this namespace; repeat for several (default: all namespaces)",
    )
    g.add_argument("--all-namespaces", action="store_true", help="watch all namespaces (the default)")
    g.add_argument(
        "--own-namespace",
        default=_env("own_namespace", os.environ.get("POD_NAMESPACE")),
        help="the operator's namespace, never injected (default: $POD_NAMESPACE)",
    )


def _admission_webhook(p: argparse.ArgumentParser) -> None:
    """Where the webhook serves, its TLS, and its configuration in the cluster."""
    g = p.add_argument_group("admission webhook")
    g.add_argument(
        "--webhook-listen",
        type=_listen,
        default=_env("webhook_listen", "0.0.0.0:9443"),
        metavar="HOST:PORT",
        help="where the webhook serves HTTPS (default 0.0.0.0:9443; port 0 = any free)",
    )
    g.add_argument(
        "--webhook-cert-file",
        default=_env("webhook_cert_file"),
        metavar="PATH",
        help="serving certificate (PEM, chain); re-read when it changes (e.g. cert-manager)",
    )
    g.add_argument("--webhook-key-file", default=_env("webhook_key_file"), metavar="PATH", help="its private key")
    g.add_argument(
        "--webhook-tls-secret",
        type=_ns_name,
        default=_env("webhook_tls_secret"),
        metavar="NS/NAME",
        help="self-managed TLS: keep a self-made CA + serving certificate in this Secret",
    )
    g.add_argument(
        "--webhook-service",
        type=_ns_name,
        default=_env("webhook_service"),
        metavar="NS/NAME",
        help="the Service in front of the webhook (names in the self-made certificate)",
    )
    g.add_argument(
        "--webhook-config-name",
        default=_env("webhook_config_name"),
        metavar="NAME",
        help="MutatingWebhookConfiguration whose caBundle the operator keeps in sync (self-managed TLS)",
    )
    g.add_argument(
        "--failure-policy",
        choices=["Fail", "Ignore"],
        default=_env("failure_policy", "Fail"),
        help="failurePolicy of the webhooks the operator registers itself (default Fail)",
    )
    g.add_argument(
        "--dev-webhook",
        action="store_true",
        default=_env("dev_webhook") in ("1", "true"),
        help="local development: serve on 127.0.0.1 with a self-made certificate and register a "
        "URL-based MutatingWebhookConfiguration (--dev-webhook-config) pointing at it",
    )
    g.add_argument(
        "--dev-webhook-config",
        default=_env("dev_webhook_config", "oshu-vault-dev"),
        metavar="NAME",
        help="name of that configuration (default oshu-vault-dev)",
    )


def _injected_sidecar(p: argparse.ArgumentParser) -> None:
    """The sidecar container the webhook injects: image, resources, ports, log level."""
    g = p.add_argument_group("injected sidecar")
    d = SidecarConfig()
    g.add_argument("--sidecar-image", default=_env("sidecar_image", d.image), help=f"default {d.image}")
    g.add_argument(
        "--sidecar-pull-policy",
        choices=["Always", "IfNotPresent", "Never"],
        default=_env("sidecar_pull_policy", d.pull_policy),
    )
    g.add_argument("--sidecar-cpu-request", default=_env("sidecar_cpu_request", d.cpu_request))
    g.add_argument("--sidecar-memory-request", default=_env("sidecar_memory_request", d.memory_request))
    g.add_argument("--sidecar-cpu-limit", default=_env("sidecar_cpu_limit", d.cpu_limit))
    g.add_argument("--sidecar-memory-limit", default=_env("sidecar_memory_limit", d.memory_limit))
    g.add_argument(
        "--sidecar-proxy-port",
        type=_sidecar_port,
        default=_env("sidecar_proxy_port", str(d.proxy_port)),
        metavar="PORT",
        help=f"the proxy's port on the pod's loopback; HTTP(S)_PROXY of app containers "
        f"point at it (default {d.proxy_port})",
    )
    g.add_argument(
        "--sidecar-admin-port",
        type=_sidecar_port,
        default=_env("sidecar_admin_port", str(d.admin_port)),
        metavar="PORT",
        help=f"the sidecar's /readyz (kubelet probes) and /metrics on the pod IP (default {d.admin_port})",
    )
    g.add_argument(
        "--sidecar-log-level",
        choices=SIDECAR_LOG_LEVELS,
        default=_env("sidecar_log_level", d.log_level),
        help=f"default {d.log_level}",
    )
    g.add_argument(
        "--sidecar-upstream-ca-file",
        default=_env("sidecar_upstream_ca_file"),
        metavar="PATH",
        help="PEM CA certificate(s) the injected sidecars trust for upstream APIs on top of the system roots "
        "(a private API's CA); read at startup, copied into each session Secret (sidecar only) and "
        "passed as the sidecar's --upstream-ca-file",
    )
    g.add_argument(
        "--default-enforcement",
        choices=ENFORCEMENTS,
        default=_env("default_enforcement", ENFORCEMENT_PROXY),
        help="enforcement of sessions that do not set spec.enforcement: proxy (the proxy variables only; "
        "default) or redirect (also an init container with NET_ADMIN installing redirect rules to the "
        f"sidecar's transparent port {SIDECAR_TRANSPARENT_PORT}; not allowed under the restricted Pod "
        "Security Standard)",
    )
    g.add_argument(
        "--no-proxy",
        default=_env("no_proxy", ",".join(DEFAULT_NO_PROXY)),
        metavar="LIST",
        help="NO_PROXY given to app containers (comma-separated; the API server's address is added "
        "in-cluster); default: " + ",".join(DEFAULT_NO_PROXY),
    )


def _sessions(p: argparse.ArgumentParser) -> None:
    """How sessions are reconciled: CA validity, revocation grace, resync, concurrency."""
    g = p.add_argument_group("sessions")
    g.add_argument(
        "--revocation-grace",
        type=_duration,
        default=_env("revocation_grace", "180s"),
        metavar="DURATION",
        help="keep a deleted session's revoked Secret this long so kubelets sync it into running pods "
        "(default 180s: twice the kubelet's worst case, syncFrequency 60s + 50%% jitter; "
        "at most 90s is warned about at startup and in each Revoked event)",
    )
    g.add_argument(
        "--ca-validity",
        type=_duration,
        default=_env("ca_validity", "720h"),
        metavar="DURATION",
        help="lifetime of the CA of a session without ttl (default 720h; renewed with a third left)",
    )
    g.add_argument(
        "--resync-interval",
        type=_duration,
        default=_env("resync_interval", "10m"),
        metavar="DURATION",
        help="re-check every session this often without events (default 10m)",
    )
    g.add_argument(
        "--max-concurrent-reconciles",
        type=int,
        default=int(_env("max_concurrent_reconciles", "8")),
        metavar="N",
        help="sessions reconciled at once (default 8)",
    )
    g.add_argument(
        "--token-wait",
        type=_duration,
        default=_env("token_wait", "5s"),
        metavar="DURATION",
        help="how long admission waits for a just-created session's tokens (default 5s)",
    )


def _operations(p: argparse.ArgumentParser) -> None:
    """Logs, metrics, leader election, printing the webhook configuration."""
    g = p.add_argument_group("operations")
    g.add_argument(
        "--metrics-listen",
        type=_listen,
        default=_env("metrics_listen", "0.0.0.0:8080"),
        metavar="HOST:PORT",
        help="/metrics, /healthz, /readyz (default 0.0.0.0:8080)",
    )
    g.add_argument(
        "--peering",
        default=_env("peering"),
        metavar="NAME",
        help="kopf peering object for several replicas (default: standalone, one replica)",
    )
    g.add_argument("--log-level", default=_env("log_level", "INFO"), choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    g.add_argument("--log-format", default=_env("log_format", "json"), choices=["json", "text"])
    g.add_argument(
        "--print-webhook-config",
        metavar="NAME",
        help="print the Service-based MutatingWebhookConfiguration (needs --webhook-service) and exit",
    )
