"""The MutatingWebhookConfiguration for pod injection, built in one place.

In --dev-webhook mode the operator registers it itself with a URL client config; in a
cluster the chart renders the same webhooks with a Service client config (the chart's
test compares its template with `webhooks()`), and the operator only fills in caBundle
when it manages the webhook's TLS itself.
"""

from __future__ import annotations

import base64
from typing import Any

from . import names as n
from .config import OperatorConfig

#: CEL: the pod carries the opt-in label or the opt-in annotation (either opts in).
OPTED_IN = (
    f"(has(object.metadata.labels) && '{n.LABEL_SESSION}' in object.metadata.labels) || "
    f"(has(object.metadata.annotations) && '{n.ANNOTATION_SESSION}' in object.metadata.annotations)"
)
#: CEL: the pod was injected (its proxy init container; pod containers cannot be renamed or removed,
#: while labels and annotations can be removed by an update before a debug container is added).
INJECTED = f"has(object.spec.initContainers) && object.spec.initContainers.exists(c, c.name == '{n.SIDECAR_CONTAINER}')"


def _client_config(base: dict[str, Any], path: str, ca_pem: bytes | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "url" in base:
        out["url"] = base["url"].rstrip("/") + path
    else:
        out["service"] = dict(base["service"], path=path)
    if ca_pem:
        out["caBundle"] = base64.b64encode(ca_pem).decode("ascii")
    return out


def namespace_selector(cfg: OperatorConfig) -> dict[str, Any]:
    excluded = sorted({*n.SYSTEM_NAMESPACES, *([cfg.own_namespace] if cfg.own_namespace else [])})
    exprs: list[dict[str, Any]] = [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": excluded}]
    if cfg.namespaces:
        exprs.append({"key": "kubernetes.io/metadata.name", "operator": "In", "values": sorted(cfg.namespaces)})
    return {"matchExpressions": exprs}


def match_conditions(ephemeral: bool = False) -> list[dict[str, str]]:
    """Only opted-in pods (label or annotation) reach the webhooks, filtered by the API server
    (matchConditions, GA since Kubernetes 1.30): a label objectSelector cannot see annotations.
    Debug containers are checked on injected pods too, whatever their labels say now."""
    expression = f"({OPTED_IN}) || ({INJECTED})" if ephemeral else OPTED_IN
    return [{"name": "opted-in-or-injected" if ephemeral else "opted-in", "expression": expression}]


def webhooks(cfg: OperatorConfig, base: dict[str, Any], ca_pem: bytes | None) -> list[dict[str, Any]]:
    common = {
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "failurePolicy": cfg.failure_policy,
        "matchPolicy": "Equivalent",
        "timeoutSeconds": n.WEBHOOK_TIMEOUT_SECONDS,
        "namespaceSelector": namespace_selector(cfg),
        "objectSelector": {},
    }
    return [
        {
            "name": n.WEBHOOK_NAME,
            "clientConfig": _client_config(base, n.WEBHOOK_PATH, ca_pem),
            "rules": [
                {
                    "apiGroups": [""],
                    "apiVersions": ["v1"],
                    "operations": ["CREATE"],
                    "resources": ["pods"],
                    "scope": "Namespaced",
                }
            ],
            # Another webhook adding containers after us gets them injected too.
            "reinvocationPolicy": "IfNeeded",
            "matchConditions": match_conditions(),
            **common,
        },
        {
            "name": n.EPHEMERAL_WEBHOOK_NAME,
            "clientConfig": _client_config(base, n.EPHEMERAL_PATH, ca_pem),
            # Updates of injected pods: debug containers, and in-place changes (container images).
            "rules": [
                {
                    "apiGroups": [""],
                    "apiVersions": ["v1"],
                    "operations": ["UPDATE"],
                    "resources": ["pods", "pods/ephemeralcontainers"],
                    "scope": "Namespaced",
                }
            ],
            "reinvocationPolicy": "Never",
            "matchConditions": match_conditions(ephemeral=True),
            **common,
        },
    ]


def configuration(name: str, cfg: OperatorConfig, base: dict[str, Any], ca_pem: bytes | None) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name, "labels": {n.LABEL_MANAGED_BY: n.MANAGED_BY}},
        "webhooks": webhooks(cfg, base, ca_pem),
    }


def is_ours(current: dict[str, Any]) -> bool:
    """Registered by an operator in --dev-webhook mode (it carries our managed-by label)."""
    return ((current.get("metadata") or {}).get("labels") or {}).get(n.LABEL_MANAGED_BY) == n.MANAGED_BY


def client_config_patch(current: dict[str, Any], wanted: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """JSON patch pointing a configuration someone else owns (the chart's: Helm or kubectl) at us.

    Only the `clientConfig` (URL + caBundle) of each of our webhooks changes, matched by name;
    labels, annotations, rules, selectors and policies stay the owner's. Guarded by the
    resourceVersion read, so a concurrent change fails the patch instead of being overwritten.
    Raises LookupError when one of our webhooks is missing: its checks would silently not run.
    """
    hooks = current.get("webhooks") or []
    index = {hook.get("name"): i for i, hook in enumerate(hooks)}
    missing = [hook["name"] for hook in wanted if hook["name"] not in index]
    if missing:
        raise LookupError(
            f"MutatingWebhookConfiguration {current['metadata']['name']} has no webhook named "
            f"{', '.join(missing)}; render it from the chart or `oshu-operator --print-webhook-config`"
        )
    ops = [
        {"op": "replace", "path": f"/webhooks/{index[hook['name']]}/clientConfig", "value": hook["clientConfig"]}
        for hook in wanted
        if hooks[index[hook["name"]]].get("clientConfig") != hook["clientConfig"]
    ]
    if not ops:
        return []
    return [{"op": "test", "path": "/metadata/resourceVersion", "value": current["metadata"]["resourceVersion"]}, *ops]


def ca_bundle_patch(current: dict[str, Any], ca_pem: bytes) -> list[dict[str, Any]]:
    """JSON patch setting caBundle on every webhook of an existing configuration (chart-owned)."""
    value = base64.b64encode(ca_pem).decode("ascii")
    ops = []
    for i, hook in enumerate(current.get("webhooks") or []):
        if (hook.get("clientConfig") or {}).get("caBundle") != value:
            ops.append({"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": value})
    return ops
