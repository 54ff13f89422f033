"""Issue 12's admission cases, reproduced through the real API server with kubectl.

Setup as in the issue: Secret `anthropic` (key `api-key`), VaultSession `claude` using it for
api.anthropic.com, the operator's webhooks registered. Each case was admitted before the rules
became one registry; each must now be refused with its rule id, and the pod (or debug
container) must not exist afterwards. test_admission_rules.py covers every combination without
a cluster; these are the exact cases, end to end.
"""

from __future__ import annotations

import json
import re

import pytest

from oshu_operator import names as n
from oshu_testkit.kube import pod, wait_for

SESSION_SECRET = n.session_secret_name("claude")


@pytest.fixture
def session(kube, ns, real):
    kube.secret(ns, "anthropic", {"api-key": real()})
    kube.secret(ns, "corp-config", {"setting": "not-a-key"})
    kube.session(
        ns,
        "claude",
        [
            {
                "name": "ANTHROPIC_API_KEY",
                "secretKeyRef": {"name": "anthropic", "key": "api-key"},
                "hosts": ["api.anthropic.com"],
            }
        ],
    )
    return kube.wait_phase(ns, "claude", n.PHASE_READY)


def rule_ids(error: str) -> list[str]:
    return re.findall(r"\[([a-z]+(?:-[a-z]+)*)\]", error)


STEAL = {"name": n.VOLUME_SESSION, "mountPath": "/steal"}

#: (id, pod) for issue 12 item 1: the reserved session volume mounted by name, no such volume.
ITEM_1 = [
    (
        "app container",
        lambda: pod(
            "steal",
            "claude",
            [{"name": "app", "image": "busybox", "volumeMounts": [STEAL]}],
            automountServiceAccountToken=False,
        ),
    ),
    (
        "app container, service account token automounted",
        lambda: pod("steal", "claude", [{"name": "app", "image": "busybox", "volumeMounts": [STEAL]}]),
    ),
    (
        "plain init container",
        lambda: pod(
            "steal",
            "claude",
            [{"name": "app", "image": "busybox"}],
            automountServiceAccountToken=False,
            initContainers=[{"name": "init", "image": "busybox", "volumeMounts": [STEAL]}],
        ),
    ),
    (
        "container left out by the containers annotation",
        lambda: pod(
            "steal",
            "claude",
            [{"name": "app", "image": "busybox"}, {"name": "other", "image": "busybox", "volumeMounts": [STEAL]}],
            annotations={n.ANNOTATION_CONTAINERS: "app"},
            automountServiceAccountToken=False,
        ),
    ),
    (
        "subPath to the session file",
        lambda: pod(
            "steal",
            "claude",
            [
                {
                    "name": "app",
                    "image": "busybox",
                    "volumeMounts": [{"name": n.VOLUME_SESSION, "mountPath": "/s.json", "subPath": n.KEY_SESSION_FILE}],
                }
            ],
            automountServiceAccountToken=False,
        ),
    ),
    (
        "opted in by the annotation alone",
        lambda: pod(
            "steal",
            None,
            [{"name": "app", "image": "busybox", "volumeMounts": [STEAL]}],
            annotations={n.ANNOTATION_SESSION: "claude"},
            automountServiceAccountToken=False,
        ),
    ),
]


@pytest.mark.parametrize("what, make", ITEM_1, ids=[c[0] for c in ITEM_1])
def test_mount_of_the_session_volume_by_name_is_refused(kube, ns, session, operator, what, make):
    made = kube.create(make(), "-n", ns)
    assert not made.ok, json.dumps(made.obj and made.obj["spec"])
    assert 'admission webhook "inject.pods.vault.oshu.dev" denied the request' in made.error
    assert "proxy-volume-use" in rule_ids(made.error), made.error
    assert kube.get("pod", "steal", ns) is None


@pytest.mark.parametrize(
    "source",
    [
        {"csi": {"driver": "secrets-store.csi.k8s.io", "nodePublishSecretRef": {"name": "anthropic"}}},
        {"projected": {"sources": [{"secret": {"name": "anthropic"}}]}},
        {"secret": {"secretName": "anthropic"}},
    ],
    ids=["csi nodePublishSecretRef", "projected", "secret"],
)
def test_volume_sources_naming_the_real_secret_are_refused(kube, ns, session, source):
    made = kube.create(
        pod("steal", "claude", [{"name": "app", "image": "busybox"}], volumes=[{"name": "v", **source}]), "-n", ns
    )
    assert not made.ok and rule_ids(made.error) == ["source-secret-reference"], made.error


def test_image_pull_secrets_naming_the_session_secret_are_refused(kube, ns, session):
    made = kube.create(pod("steal", "claude", imagePullSecrets=[{"name": SESSION_SECRET}]), "-n", ns)
    assert not made.ok and rule_ids(made.error) == ["session-secret-reference"], made.error


# --- issue 12 item 2: ephemeral containers ------------------------------------------------------


@pytest.fixture
def agent(kube, ns, session):
    made = kube.create(pod("agent", "claude", automountServiceAccountToken=False), "-n", ns)
    assert made.ok, made.error
    return made.obj


def add_debug(kube, ns, container: dict):
    """`kubectl patch pod agent --subresource=ephemeralcontainers`, exactly as in the issue."""
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


def debug_names(kube, ns) -> list[str]:
    return [c["name"] for c in kube.get("pod", "agent", ns)["spec"].get("ephemeralContainers", [])]


ITEM_2 = [
    ("envFrom the session Secret", {"envFrom": [{"secretRef": {"name": SESSION_SECRET}}]}, "session-secret-reference"),
    (
        "env from the real Secret",
        {"env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "anthropic", "key": "api-key"}}}]},
        "source-secret-reference",
    ),
    ("envFrom the real Secret", {"envFrom": [{"secretRef": {"name": "anthropic"}}]}, "source-secret-reference"),
    (
        "env from the session file",
        {"env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": SESSION_SECRET, "key": n.KEY_SESSION_FILE}}}]},
        "session-secret-reference",
    ),
    (
        "mounts the session volume",
        {"volumeMounts": [{"name": n.VOLUME_SESSION, "mountPath": "/s"}]},
        "proxy-volume-use",
    ),
    (
        "mounts the proxy's scratch volume",
        {"volumeMounts": [{"name": n.VOLUME_TMP, "mountPath": "/t"}]},
        "proxy-volume-use",
    ),
    ("targets the proxy", {"targetContainerName": n.SIDECAR_CONTAINER}, "ephemeral-targets-proxy"),
]


@pytest.mark.parametrize("what, fields, rule", ITEM_2, ids=[c[0] for c in ITEM_2])
def test_debug_container_reaching_a_secret_is_refused(kube, ns, agent, operator, what, fields, rule):
    before = operator.metric("oshu_vault_admission_refusals_total", rule=rule)
    r = add_debug(kube, ns, {"name": "debug", "image": "busybox", **fields})
    assert r.returncode != 0, r.stdout
    assert 'admission webhook "ephemeral.pods.vault.oshu.dev" denied the request' in r.stderr, r.stderr
    assert rule in rule_ids(r.stderr), r.stderr
    assert debug_names(kube, ns) == []
    assert operator.metric("oshu_vault_admission_refusals_total", rule=rule) == before + 1


def test_ordinary_debug_containers_are_admitted(kube, ns, agent):
    r = add_debug(
        kube,
        ns,
        {
            "name": "debug",
            "image": "busybox",
            "targetContainerName": "agent",
            "envFrom": [{"secretRef": {"name": "corp-config"}}],
            "volumeMounts": [{"name": n.VOLUME_CA, "mountPath": "/ca"}],
        },
    )
    assert r.returncode == 0, r.stderr
    wait_for(lambda: debug_names(kube, ns) == ["debug"], 10, "the debug container added")
    # A later one is judged alone: the first stays, the second is refused.
    r = add_debug(kube, ns, {"name": "debug2", "image": "busybox", "envFrom": [{"secretRef": {"name": "anthropic"}}]})
    assert r.returncode != 0 and rule_ids(r.stderr) == ["source-secret-reference"], r.stderr
    assert debug_names(kube, ns) == ["debug"]


def test_removing_the_opt_in_label_does_not_open_the_pod_to_debug_containers(kube, ns, agent):
    """Labels are mutable, the injected proxy is not: the ephemeral webhook still sees the pod, and
    the session is read from the pod's session volume."""
    kube.kubectl("label", "pod", "agent", "-n", ns, f"{n.LABEL_SESSION}-")
    assert n.LABEL_SESSION not in (kube.get("pod", "agent", ns)["metadata"].get("labels") or {})
    r = add_debug(kube, ns, {"name": "debug", "image": "busybox", "envFrom": [{"secretRef": {"name": "anthropic"}}]})
    assert r.returncode != 0 and rule_ids(r.stderr) == ["source-secret-reference"], r.stderr
    assert debug_names(kube, ns) == []


# --- siblings: in-place updates of an injected pod -----------------------------------------------


def test_an_update_may_not_swap_the_proxy_image(kube, ns, agent, operator):
    """`kubectl set image` may change container images of a running pod; the proxy's would then run
    an image of the updater's choosing with the session Secret mounted."""
    r = kube.kubectl(
        "set", "image", "pod/agent", "-n", ns, f"{n.SIDECAR_CONTAINER}=attacker.example/steal:1", check=False
    )
    assert r.returncode != 0 and rule_ids(r.stderr) == ["proxy-container-changed"], r.stderr
    stored = kube.get("pod", "agent", ns)["spec"]["initContainers"][0]
    assert stored == agent["spec"]["initContainers"][0]
    # App images, labels and annotations may still change.
    r = kube.kubectl("set", "image", "pod/agent", "-n", ns, "agent=agent:2", check=False)
    assert r.returncode == 0, r.stderr
    r = kube.kubectl("label", "pod", "agent", "-n", ns, "team=a", check=False)
    assert r.returncode == 0, r.stderr
    assert kube.get("pod", "agent", ns)["spec"]["containers"][0]["image"] == "agent:2"
