"""The chart, rendered: lint, labels, hardening, least-privilege RBAC, agreement with the operator.

No cluster needed. The operator's own CLI parser and webhook builder are the references the
chart must agree with, so a renamed flag or a changed selector fails here, not in a cluster.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from oshu_e2e import chart
from oshu_e2e.paths import CHART_DIR
from oshu_operator import names as n
from oshu_operator.cli import build_parser, config_from_args
from oshu_operator.config import DEFAULT_NO_PROXY, OperatorConfig, SidecarConfig
from oshu_operator.webhookconfig import webhooks

NAMESPACED = {"watchNamespaces": ["team-a", "team-b"]}
CERT_MANAGER = {"webhook": {"tls": {"mode": "cert-manager"}}}
EVERYTHING = {
    "webhook": {
        "tls": {"mode": "cert-manager", "certManager": {"issuerRef": {"name": "corp", "kind": "ClusterIssuer"}}},
        "failurePolicy": "Ignore",
        "timeoutSeconds": 5,
    },
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
    "watchNamespaces": ["agents"],
    "operator": {"image": {"repository": "registry.example/oshu-vault-operator", "digest": "sha256:" + "a" * 64}},
    "sidecar": {"proxyPort": 16080, "adminPort": 16090, "logLevel": "debug"},
}
VARIANTS: dict[str, dict[str, Any] | None] = {
    "defaults": None,
    "namespaced": NAMESPACED,
    "cert-manager": CERT_MANAGER,
    "everything": EVERYTHING,
}

STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/component",
    "helm.sh/chart",
)

#: Every permission the operator gets, and the call that needs it (docs/install.md, "RBAC").
EXPECTED_SESSION_RULES = [
    {"apiGroups": ["vault.oshu.dev"], "resources": ["vaultsessions"], "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": ["vault.oshu.dev"], "resources": ["vaultsessions/status"], "verbs": ["patch"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch", "create", "update", "delete"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
]


def _values(render, values) -> list[chart.Doc]:
    return render(values, release="oshu-vault", namespace="oshu-system", tests=True)


def _pod_specs(docs: list[chart.Doc]) -> list[tuple[str, dict]]:
    out = []
    for doc in docs:
        if doc["kind"] == "Deployment":
            out.append((doc["metadata"]["name"], doc["spec"]["template"]["spec"]))
        elif doc["kind"] == "Pod":
            out.append((doc["metadata"]["name"], doc["spec"]))
    return out


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_helm_lint_strict(helm: Path, tmp_path: Path, variant: str) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(VARIANTS[variant] or {}))
    proc = subprocess.run(
        [str(helm), "lint", "--strict", str(CHART_DIR), "--values", str(values)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_object_has_the_standard_labels(render, variant: str) -> None:
    for doc in _values(render, VARIANTS[variant]):
        if doc["kind"] == "CustomResourceDefinition":
            continue  # crds/ is installed verbatim by Helm, never templated
        labels = doc["metadata"].get("labels") or {}
        missing = [k for k in STANDARD_LABELS if k not in labels]
        assert not missing, f"{doc['kind']} {doc['metadata']['name']} lacks {missing}"
        assert labels["app.kubernetes.io/instance"] == "oshu-vault"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_pod_is_hardened(render, variant: str) -> None:
    specs = _pod_specs(_values(render, VARIANTS[variant]))
    assert {name for name, _ in specs} == {"oshu-vault", "oshu-vault-test"}
    for name, spec in specs:
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] > 0, name
        assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec["enableServiceLinks"] is False, name
        for container in spec["containers"] + spec.get("initContainers", []):
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["privileged"] is False, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert container["resources"]["requests"] and container["resources"]["limits"]["memory"], name


def test_operator_runs_as_the_images_user(render) -> None:
    """The numeric user of the pod, the images and the injected sidecar are one and the same."""
    spec = chart.find(render(), "Deployment")["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsUser"] == n.SIDECAR_UID == spec["securityContext"]["runAsGroup"]
    for dockerfile in ("Dockerfile.sidecar", "Dockerfile.operator"):
        text = (CHART_DIR.parents[1] / dockerfile).read_text()
        assert f"USER {n.SIDECAR_UID}:{n.SIDECAR_UID}" in text, dockerfile


def _rules(doc: chart.Doc) -> list[dict]:
    return [{k: v for k, v in rule.items()} for rule in doc["rules"]]


def test_rbac_has_no_wildcards_in_any_variant(render) -> None:
    for values in VARIANTS.values():
        for doc in _values(render, values):
            if doc["kind"] in ("Role", "ClusterRole"):
                for rule in doc["rules"]:
                    for key in ("apiGroups", "resources", "verbs", "resourceNames"):
                        assert "*" not in rule.get(key, []), f"{doc['metadata']['name']}: wildcard in {key}"
                    assert not any("*" in r for r in rule["resources"]), doc["metadata"]["name"]


def test_rbac_cluster_wide_is_exactly_what_the_operator_calls(render) -> None:
    docs = render()
    roles = {d["metadata"]["name"]: d for d in chart.find_all(docs, "ClusterRole")}
    assert set(roles) == {"oshu-vault", "oshu-vault-webhook"}
    assert not chart.find_all(docs, "Role")
    assert _rules(roles["oshu-vault"]) == EXPECTED_SESSION_RULES
    assert _rules(roles["oshu-vault-webhook"]) == [
        {
            "apiGroups": ["admissionregistration.k8s.io"],
            "resources": ["mutatingwebhookconfigurations"],
            "resourceNames": ["oshu-vault"],
            "verbs": ["get", "patch"],
        }
    ]
    bindings = {d["metadata"]["name"]: d for d in chart.find_all(docs, "ClusterRoleBinding")}
    for name, binding in bindings.items():
        assert binding["roleRef"]["name"] == name
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "oshu-vault", "namespace": "oshu-system"}]


def test_rbac_namespaced_grants_nothing_cluster_wide_but_the_webhook_configuration(render) -> None:
    docs = render(NAMESPACED)
    assert [d["metadata"]["name"] for d in chart.find_all(docs, "ClusterRole")] == ["oshu-vault-webhook"]
    roles = {(d["metadata"]["namespace"], d["metadata"]["name"]): d for d in chart.find_all(docs, "Role")}
    assert set(roles) == {("team-a", "oshu-vault"), ("team-b", "oshu-vault"), ("oshu-system", "oshu-vault-webhook-tls")}
    assert _rules(roles[("team-a", "oshu-vault")]) == EXPECTED_SESSION_RULES
    assert _rules(roles[("oshu-system", "oshu-vault-webhook-tls")]) == [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["oshu-vault-webhook-tls"],
            "verbs": ["get", "update"],
        },
    ]


def test_rbac_cert_manager_mode_needs_no_webhook_or_tls_permissions(render) -> None:
    docs = render({**NAMESPACED, **CERT_MANAGER})
    assert not chart.find_all(docs, "ClusterRole")
    assert {d["metadata"]["namespace"] for d in chart.find_all(docs, "Role")} == {"team-a", "team-b"}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_deployment_args_are_what_the_operator_cli_accepts(render, variant: str) -> None:
    values = VARIANTS[variant] or {}
    docs = render(values)
    args = chart.operator_container(docs)["args"]
    config = config_from_args(build_parser().parse_args(args))
    assert config.namespaces == tuple(values.get("watchNamespaces", ()))
    assert config.sidecar.image == "oshu-vault-sidecar:0.1.0"
    assert config.no_proxy == DEFAULT_NO_PROXY
    assert (config.sidecar.cpu_request, config.sidecar.memory_limit) == ("50m", "256Mi")
    sidecar = values.get("sidecar") or {}
    assert (config.sidecar.proxy_port, config.sidecar.admin_port, config.sidecar.log_level) == (
        sidecar.get("proxyPort", n.SIDECAR_PROXY_PORT),
        sidecar.get("adminPort", n.SIDECAR_ADMIN_PORT),
        sidecar.get("logLevel", "info"),
    )
    if (values.get("webhook") or {}).get("tls", {}).get("mode") == "cert-manager":
        assert config.webhook_cert_file and config.webhook_tls_secret is None and config.webhook_config_name is None
        deployment = chart.find(docs, "Deployment")["spec"]["template"]["spec"]
        mounted = {v["name"]: v for v in deployment["volumes"]}
        assert mounted["webhook-tls"]["secret"]["secretName"] == "oshu-vault-webhook-tls"
    else:
        assert config.webhook_tls_secret == "oshu-system/oshu-vault-webhook-tls"
        assert config.webhook_service == "oshu-system/oshu-vault-webhook"
        assert config.webhook_config_name == chart.webhook_config_name(docs)


def test_default_no_proxy_is_the_operators() -> None:
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    assert tuple(values["sidecar"]["noProxy"]) == DEFAULT_NO_PROXY


def test_default_sidecar_ports_and_log_level_are_the_operators() -> None:
    sidecar = yaml.safe_load((CHART_DIR / "values.yaml").read_text())["sidecar"]
    default = SidecarConfig()
    assert (sidecar["proxyPort"], sidecar["adminPort"], sidecar["logLevel"]) == (
        default.proxy_port,
        default.admin_port,
        default.log_level,
    )
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())["properties"]["sidecar"]["properties"]
    assert tuple(schema["logLevel"]["enum"]) == n.SIDECAR_LOG_LEVELS
    for port in ("proxyPort", "adminPort"):
        assert (schema[port]["minimum"], schema[port]["maximum"]) == n.SIDECAR_PORT_RANGE


@pytest.mark.parametrize("ports", [("proxyPort", "adminPort"), ("adminPort", "proxyPort")])
def test_the_sidecar_ports_must_differ(helm: Path, ports: tuple[str, str]) -> None:
    with pytest.raises(chart.RenderError) as failure:
        chart.template(
            helm,
            release="oshu-vault",
            namespace="oshu-system",
            set_values=[f"sidecar.{ports[0]}=15090", f"sidecar.{ports[1]}=15090"],
        )
    assert "sidecar.proxyPort and sidecar.adminPort are both 15090" in str(failure.value), str(failure.value)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_webhook_configuration_is_the_one_the_operator_builds(render, variant: str) -> None:
    values = VARIANTS[variant] or {}
    docs = render(values)
    rendered = chart.find(docs, "MutatingWebhookConfiguration")
    webhook = values.get("webhook") or {}
    config = OperatorConfig(
        own_namespace="oshu-system",
        namespaces=tuple(sorted(values.get("watchNamespaces", ()))),
        failure_policy=webhook.get("failurePolicy", "Fail"),
    )
    expected = webhooks(
        config, {"service": {"name": "oshu-vault-webhook", "namespace": "oshu-system", "port": 443}}, None
    )
    for hook in expected:
        hook["timeoutSeconds"] = webhook.get("timeoutSeconds", hook["timeoutSeconds"])
    assert rendered["webhooks"] == expected
    assert {h["name"] for h in rendered["webhooks"]} >= {n.WEBHOOK_NAME}
    annotations = rendered["metadata"].get("annotations") or {}
    if webhook.get("tls", {}).get("mode") == "cert-manager":
        assert annotations["cert-manager.io/inject-ca-from"] == "oshu-system/oshu-vault-webhook-tls"
    else:
        assert not annotations


def test_webhook_service_targets_the_operator_pods(render) -> None:
    docs = render()
    service = chart.find(docs, "Service")
    pod_labels = chart.find(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels.get(k) == v for k, v in service["spec"]["selector"].items())
    test_pod = chart.find(render(tests=True), "Pod")
    assert not all(test_pod["metadata"]["labels"].get(k) == v for k, v in service["spec"]["selector"].items()), (
        "the helm test pod must not be selected by the webhook Service"
    )
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["webhook"]["port"] == 443 and ports["webhook"]["targetPort"] == "webhook"
    hook = chart.find(docs, "MutatingWebhookConfiguration")["webhooks"][0]["clientConfig"]["service"]
    assert (hook["name"], hook["path"]) == (service["metadata"]["name"], n.WEBHOOK_PATH)


def test_single_replica_never_overlaps(render) -> None:
    deployment = chart.find(render(), "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pdb = chart.find(render(), "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_optional_objects(render) -> None:
    kinds = {d["kind"] for d in render()}
    assert not kinds & {"ServiceMonitor", "Certificate", "Issuer"}
    docs = render(EVERYTHING)
    monitor = chart.find(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    certificate = chart.find(docs, "Certificate")
    assert certificate["spec"]["issuerRef"] == {"name": "corp", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    assert certificate["spec"]["dnsNames"][0] == "oshu-vault-webhook.oshu-system.svc"
    assert not chart.find_all(docs, "Issuer"), "an issuerRef was given: no self-signed Issuer"
    assert chart.find(render(CERT_MANAGER), "Issuer")["spec"] == {"selfSigned": {}}
    image = chart.operator_container(docs)["image"]
    assert image == "registry.example/oshu-vault-operator@sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("operator.replicas=2", "at '/operator/replicas': value must be 1"),
        ("webhook.failurePolicy=Maybe", "at '/webhook/failurePolicy': value must be one of 'Fail', 'Ignore'"),
        ("webhook.tls.mode=vault", "at '/webhook/tls/mode': value must be one of 'operator', 'cert-manager'"),
        ("webhook.timeoutSeconds=60", "at '/webhook/timeoutSeconds'"),
        ("operator.image.digest=abc", "at '/operator/image/digest': 'abc' does not match pattern"),
        ("operator.replica=1", "at '/operator': additional properties 'replica' not allowed"),
        ("operator.logLevel=verbose", "at '/operator/logLevel': value must be one of"),
        (
            "securityContext.allowPrivilegeEscalation=true",
            "at '/securityContext/allowPrivilegeEscalation': value must be false",
        ),
        ("podSecurityContext.runAsNonRoot=false", "at '/podSecurityContext/runAsNonRoot': value must be true"),
        ("sessions.caValidity=30 days", "at '/sessions/caValidity': '30 days' does not match pattern"),
        ("watchNamespaces={Bad_NS}", "at '/watchNamespaces/0': 'Bad_NS' does not match pattern"),
        ("sidecar.resources.limits.cpu=lots", "at '/sidecar/resources/limits/cpu'"),
        ("metrics.port=70000", "at '/metrics/port'"),
        ("sidecar.proxyPort=80", "at '/sidecar/proxyPort': minimum: got 80, want 1,024"),
        ("sidecar.adminPort=65536", "at '/sidecar/adminPort': maximum: got 65,536, want 65,535"),
        ("sidecar.proxyPort=http", "at '/sidecar/proxyPort': got string, want integer"),
        (
            "sidecar.logLevel=verbose",
            "at '/sidecar/logLevel': value must be one of 'debug', 'info', 'warning', 'error'",
        ),
    ],
)
def test_schema_rejects_bad_values_readably(helm: Path, setting: str, message: str) -> None:
    with pytest.raises(chart.RenderError) as failure:
        chart.template(helm, release="oshu-vault", namespace="oshu-system", set_values=[setting])
    assert "values don't meet the specifications of the schema" in str(failure.value)
    assert message in str(failure.value), str(failure.value)


def test_schema_accepts_the_documented_values_file(helm: Path) -> None:
    chart.template(
        helm,
        release="oshu-vault",
        namespace="oshu-system",
        values=yaml.safe_load((CHART_DIR / "values.yaml").read_text()),
    )
