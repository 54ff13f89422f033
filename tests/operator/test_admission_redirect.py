"""`enforcement: redirect` through the real API server: the CRD's validation, the stored pod (the
rules' init container first, exactly as planned, with no service account token even after
re-invocation), and the refusals for app, init and debug containers and in-place updates.
test_redirect_rules.py has every combination as pure functions."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from oshu_operator import names as n
from oshu_operator.injection import sidecar_container
from oshu_operator.redirect import netrules_container
from oshu_operator.spec import RedirectSpec
from oshu_testkit.kube import SIDECAR, pod

RESTRICTED = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
SECRETS = [{"name": "ANTHROPIC_API_KEY", "secretKeyRef": {"name": "anthropic", "key": "api-key"}, "hosts": ["a.test"]}]


def rule_ids(error: str) -> list[str]:
    return re.findall(r"\[([a-z]+(?:-[a-z]+)*)\]", error)


@pytest.fixture
def session(kube: Any, ns: str, real: Any) -> dict[str, Any]:
    kube.secret(ns, "anthropic", {"api-key": real()})
    kube.session(
        ns,
        "claude",
        SECRETS,
        enforcement="redirect",
        redirect={"excludeCIDRs": ["10.0.0.0/8"], "excludePorts": [5432]},
    )
    return kube.wait_phase(ns, "claude", n.PHASE_READY)


def agent_pod(name: str = "agent", **container: Any) -> dict[str, Any]:
    """Restricted, with a pod-wide uid that is not the proxy's; the service account token is
    automounted (the API server's plugin would add it to every container, ours included)."""
    c = {"name": "agent", "image": "agent:1", "securityContext": dict(RESTRICTED), **container}
    return pod(name, "claude", [c], securityContext={"runAsUser": 1000, "runAsNonRoot": True})


def test_the_crd_validates_enforcement_and_redirect(kube: Any, ns: str) -> None:
    for spec, field in (
        ({"enforcement": "iptables"}, "spec.enforcement"),
        ({"redirect": {"excludeCIDRs": ["10.1.2.3/8"]}}, "spec.redirect.excludeCIDRs[0]"),
        ({"redirect": {"excludeCIDRs": ["not-a-cidr"]}}, "spec.redirect.excludeCIDRs[0]"),
        ({"redirect": {"excludeCIDRs": ["10.0.0.0/8", "0.0.0.0/0"]}}, "spec.redirect.excludeCIDRs[1]"),
        ({"redirect": {"excludePorts": [0]}}, "spec.redirect.excludePorts[0]"),
    ):
        body = {
            "apiVersion": n.API_VERSION,
            "kind": n.KIND,
            "metadata": {"name": "bad"},
            "spec": {"secrets": SECRETS, **spec},
        }
        made = kube.create(body, "-n", ns)
        assert not made.ok and field in made.error, (spec, made.error)
    ok = {
        "apiVersion": n.API_VERSION,
        "kind": n.KIND,
        "metadata": {"name": "ok"},
        "spec": {
            "secrets": SECRETS,
            "enforcement": "redirect",
            "redirect": {"excludeCIDRs": ["10.0.0.0/8", "fd00::/8"], "excludePorts": [443], "allowMetadata": True},
        },
    }
    made = kube.create(ok, "-n", ns)
    assert made.ok, made.error


def test_the_stored_pod_runs_the_rules_first_exactly_as_planned(kube: Any, ns: str, session: Any) -> None:
    made = kube.create(agent_pod(), "-n", ns)
    assert made.ok, made.error
    netrules, sidecar = made.obj["spec"]["initContainers"]
    # Compared whole: re-invocation put back our containers after the ServiceAccount plugin
    # mounted the API token into them (the agent has it: automount is on).
    assert netrules == netrules_container(SIDECAR, RedirectSpec(("10.0.0.0/8",), (5432,)))
    assert sidecar == sidecar_container(SIDECAR, redirected=True)
    (agent,) = made.obj["spec"]["containers"]
    assert any(m["mountPath"].startswith("/var/run/secrets/kubernetes.io") for m in agent["volumeMounts"])
    record = json.loads(made.obj["metadata"]["annotations"][n.ANNOTATION_INJECTED])
    assert record["enforcement"] == n.ENFORCEMENT_REDIRECT


@pytest.mark.parametrize(
    ("what", "security", "rule"),
    [
        ("NET_ADMIN", {**RESTRICTED, "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]}}, "redirect-capabilities"),
        ("privileged", {"privileged": True}, "redirect-privileged"),
        ("the proxy's uid", {**RESTRICTED, "runAsUser": n.SIDECAR_UID}, "redirect-run-as-user"),
        ("privilege escalation", {"allowPrivilegeEscalation": True}, "redirect-uid-switch"),
    ],
)
@pytest.mark.parametrize("kind", ["containers", "initContainers"])
def test_containers_that_could_leave_the_rules_are_refused(
    kube: Any, ns: str, session: Any, operator: Any, what: str, security: dict[str, Any], rule: str, kind: str
) -> None:
    body = agent_pod()
    if kind == "initContainers":
        body["spec"]["initContainers"] = [{"name": "setup", "image": "x", "securityContext": security}]
    else:
        body["spec"]["containers"][0]["securityContext"] = security
    before = operator.metric("oshu_vault_admission_refusals_total", rule=rule) or 0
    made = kube.create(body, "-n", ns)
    assert not made.ok and rule in rule_ids(made.error), (what, made.error)
    assert 'admission webhook "inject.pods.vault.oshu.dev" denied the request' in made.error
    assert kube.get("pod", "agent", ns) is None
    assert operator.metric("oshu_vault_admission_refusals_total", rule=rule) == before + 1


def _debug(kube: Any, ns: str, container: dict[str, Any]) -> Any:
    patch = json.dumps({"spec": {"ephemeralContainers": [container]}})
    return kube.kubectl(
        "patch",
        "pod",
        "agent",
        "-n",
        ns,
        "--subresource=ephemeralcontainers",
        "--type=strategic",
        "-p",
        patch,
        check=False,
    )


def test_debug_containers_and_updates_stay_inside_the_rules(kube: Any, ns: str, session: Any) -> None:
    made = kube.create(agent_pod(), "-n", ns)
    assert made.ok, made.error
    r = _debug(kube, ns, {"name": "debug", "image": "busybox", "securityContext": {"privileged": True}})
    assert r.returncode != 0 and "redirect-privileged" in rule_ids(r.stderr), r.stderr
    assert 'admission webhook "ephemeral.pods.vault.oshu.dev" denied the request' in r.stderr
    r = _debug(kube, ns, {"name": "debug", "image": "busybox", "securityContext": dict(RESTRICTED)})
    assert r.returncode == 0, r.stderr
    r = kube.kubectl("set", "image", "pod/agent", "-n", ns, f"{n.NETRULES_CONTAINER}=attacker.example/x:1", check=False)
    assert r.returncode != 0 and rule_ids(r.stderr) == ["proxy-container-changed"], r.stderr
    assert kube.get("pod", "agent", ns)["spec"]["initContainers"][0] == made.obj["spec"]["initContainers"][0]


def test_a_proxy_session_injects_no_rules_and_refuses_a_rules_container(kube: Any, ns: str, real: Any) -> None:
    kube.secret(ns, "anthropic", {"api-key": real()})
    kube.session(ns, "claude", SECRETS, enforcement="proxy")
    kube.wait_phase(ns, "claude", n.PHASE_READY)
    made = kube.create(agent_pod(securityContext={"privileged": True}), "-n", ns)
    assert made.ok, made.error  # no redirect, no redirect rules
    assert [c["name"] for c in made.obj["spec"]["initContainers"]] == [n.SIDECAR_CONTAINER]
    assert made.obj["spec"]["initContainers"][0] == sidecar_container(SIDECAR)
    forged = agent_pod("forged")
    forged["spec"]["initContainers"] = [{"name": n.NETRULES_CONTAINER, "image": "x"}]
    made = kube.create(forged, "-n", ns)
    assert not made.ok and rule_ids(made.error) == ["reserved-container-name"], made.error
