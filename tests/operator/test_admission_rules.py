"""The admission rules registry, as pure functions: every container kind x every way to reference a
Secret or a reserved volume x which Secret, on the pod as submitted, as injected, and on debug
containers added later. No cluster: test_admission.py replays the same cases through the API server.

Assertions are on rule ids (stable), never on message text.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from oshu_contract.session import new_sealed_token
from oshu_operator import names as n
from oshu_operator import rules
from oshu_operator.config import OperatorConfig, SidecarConfig
from oshu_operator.injection import plan, subject, volumes
from oshu_operator.metrics import Metrics
from oshu_operator.rules import Refused, SessionView

CFG = OperatorConfig(sidecar=SidecarConfig(image="registry.test/oshu-sidecar:1"))
TOKEN = new_sealed_token()
OWN_SESSION_SECRET = n.session_secret_name("claude")
DOCS = Path(__file__).resolve().parents[2] / "docs" / "operator.md"


def session(**over) -> SessionView:
    base: dict[str, Any] = dict(
        namespace="agents",
        name="claude",
        uid="u",
        env_names=("ANTHROPIC_API_KEY",),
        tokens={"ANTHROPIC_API_KEY": TOKEN},
        source_secrets={"anthropic": "ANTHROPIC_API_KEY"},
        phase=n.PHASE_READY,
    )
    base.update(over)
    return SessionView(**base)


def base_pod() -> dict:
    """agent (injected), helper (left out by the containers annotation), clone (init container)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "p",
            "namespace": "agents",
            "labels": {n.LABEL_SESSION: "claude"},
            "annotations": {n.ANNOTATION_CONTAINERS: "agent"},
        },
        "spec": {
            "automountServiceAccountToken": False,
            "initContainers": [{"name": "clone", "image": "git:1"}],
            "containers": [{"name": "agent", "image": "agent:1"}, {"name": "helper", "image": "helper:1"}],
        },
    }


def refusal(pod: dict, view: SessionView | None = None) -> tuple[str, ...]:
    """The rule ids plan() refuses the pod with; () when it is admitted (and then checked after injection)."""
    try:
        result = plan(pod, view or session(), CFG)
    except Refused as e:
        return e.rule_ids
    after = copy.deepcopy(pod)
    result.apply(after)
    assert rules.evaluate(subject(after, view or session())) == []
    return ()


def injected_pod() -> dict:
    pod = base_pod()
    plan(pod, session(), CFG).apply(pod)
    return pod


def ephemeral_refusal(pod: dict, container: dict, view: SessionView | None = None) -> tuple[str, ...]:
    """The rule ids an ephemeral-container update adding `container` to an injected pod is refused with."""
    after = copy.deepcopy(pod)
    after["spec"].setdefault(rules.KIND_EPHEMERAL, []).append(container)
    subj = rules.Subject(after, "agents", "claude", view, injected_volumes=volumes(OWN_SESSION_SECRET))
    return tuple(dict.fromkeys(f.rule.id for f in rules.ephemeral_findings(subj, {container["name"]})))


# --- the table ---------------------------------------------------------------------------------

#: Every volume source type that can name a Secret, with the Secret in it.
VOLUME_SOURCES = {
    "secret": lambda s: {"secret": {"secretName": s}},
    "secret-items": lambda s: {"secret": {"secretName": s, "items": [{"key": n.KEY_CA_CERT, "path": "c"}]}},
    "projected": lambda s: {"projected": {"sources": [{"configMap": {"name": "cm"}}, {"secret": {"name": s}}]}},
    "csi": lambda s: {"csi": {"driver": "secrets-store.csi.k8s.io", "nodePublishSecretRef": {"name": s}}},
    "azureFile": lambda s: {"azureFile": {"secretName": s, "shareName": "share"}},
    "cephfs": lambda s: {"cephfs": {"monitors": ["10.0.0.1:6789"], "secretRef": {"name": s}}},
    "cinder": lambda s: {"cinder": {"volumeID": "v", "secretRef": {"name": s}}},
    "flexVolume": lambda s: {"flexVolume": {"driver": "example/flex", "secretRef": {"name": s}}},
    "iscsi": lambda s: {
        "iscsi": {
            "targetPortal": "10.0.0.1:3260",
            "iqn": "iqn.2001-04.com.example:x",
            "lun": 0,
            "secretRef": {"name": s},
        }
    },
    "rbd": lambda s: {"rbd": {"monitors": ["10.0.0.1:6789"], "image": "i", "secretRef": {"name": s}}},
    "scaleIO": lambda s: {"scaleIO": {"gateway": "https://g", "system": "s", "secretRef": {"name": s}}},
    "storageos": lambda s: {"storageos": {"volumeName": "v", "secretRef": {"name": s}}},
}

#: Which Secret, and the rule a reference to it breaks (None: an ordinary Secret, admitted).
SECRETS = {
    "own session Secret": (OWN_SESSION_SECRET, "session-secret-reference"),
    "another session's Secret": (n.session_secret_name("gpt"), "session-secret-reference"),
    "Secret behind a sealed key": ("anthropic", "source-secret-reference"),
    "unrelated Secret": ("corp-config", None),
}


def _mounted(make: Callable[[str], dict]) -> Callable[[str], tuple[dict, dict]]:
    def ref(secret: str) -> tuple[dict, dict]:
        return {"name": "vol", **make(secret)}, {"volumeMounts": [{"name": "vol", "mountPath": "/x"}]}

    return ref


def _unmounted(make: Callable[[str], dict]) -> Callable[[dict, str], None]:
    def add(spec: dict, secret: str) -> None:
        spec.setdefault("volumes", []).append({"name": "vol", **make(secret)})

    return add


#: How a container references a Secret: (pod spec edit, edit of the container). A mounted volume is
#: referenced twice: by the volume (pod level) and by the use (secret-volume-use, which debug
#: containers can reach).
CONTAINER_REFS: dict[str, Callable[[str], tuple[Any, dict[str, Any]]]] = {
    "env valueFrom.secretKeyRef": lambda s: (
        None,
        {"env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": s, "key": "k"}}}]},
    ),
    "envFrom secretRef": lambda s: (None, {"envFrom": [{"secretRef": {"name": s}}]}),
    **{f"mounted {kind} volume": _mounted(make) for kind, make in VOLUME_SOURCES.items()},
    "volume used as an env file": lambda s: (
        {"name": "vol", **VOLUME_SOURCES["secret"](s)},
        {"env": [{"name": "K", "valueFrom": {"fileKeyRef": {"volumeName": "vol", "path": "f", "key": "k"}}}]},
    ),
}
#: Pod-level references: no container involved.
POD_REFS = {
    **{f"unmounted {kind} volume": _unmounted(make) for kind, make in VOLUME_SOURCES.items()},
    "imagePullSecrets": lambda spec, s: spec.setdefault("imagePullSecrets", []).append({"name": s}),
}
#: Uses of the proxy's reserved volumes by name, whether or not the volume exists yet.
RESERVED_USES: dict[str, dict[str, Any]] = {
    "mount of the session volume": {"volumeMounts": [{"name": n.VOLUME_SESSION, "mountPath": "/steal"}]},
    "subPath mount of the session file": {
        "volumeMounts": [{"name": n.VOLUME_SESSION, "mountPath": "/steal.json", "subPath": n.KEY_SESSION_FILE}]
    },
    "subPathExpr mount of the session volume": {
        "volumeMounts": [{"name": n.VOLUME_SESSION, "mountPath": "/s", "subPathExpr": "$(POD_NAME)"}]
    },
    "read-only mount of the session volume": {
        "volumeMounts": [{"name": n.VOLUME_SESSION, "mountPath": "/s", "readOnly": True}]
    },
    "session volume as a block device": {"volumeDevices": [{"name": n.VOLUME_SESSION, "devicePath": "/dev/s"}]},
    "mount of the proxy's scratch volume": {"volumeMounts": [{"name": n.VOLUME_TMP, "mountPath": "/t"}]},
    "env file from the proxy's scratch volume": {
        "env": [{"name": "K", "valueFrom": {"fileKeyRef": {"volumeName": n.VOLUME_TMP, "path": "f", "key": "k"}}}]
    },
}
#: Where the container sits at pod creation: (list, name).
CREATE_KINDS = {
    "app container": ("containers", "agent"),
    "init container": ("initContainers", "clone"),
    "container left out of injection": ("containers", "helper"),
}


def pod_with(kind: str, spec_volume: dict | None, container_edit: dict) -> dict:
    pod = base_pod()
    key, name = CREATE_KINDS[kind]
    container = next(c for c in pod["spec"][key] if c["name"] == name)
    container.update(copy.deepcopy(container_edit))
    if spec_volume is not None:
        pod["spec"].setdefault("volumes", []).append(copy.deepcopy(spec_volume))
    return pod


@pytest.mark.parametrize("secret", sorted(SECRETS))
@pytest.mark.parametrize("ref", sorted(CONTAINER_REFS))
@pytest.mark.parametrize("kind", sorted(CREATE_KINDS))
def test_container_references_at_creation(kind: str, ref: str, secret: str) -> None:
    name, rule = SECRETS[secret]
    volume, edit = CONTAINER_REFS[ref](name)
    got = refusal(pod_with(kind, volume, edit))
    if rule is None:
        assert got == ()
    else:
        assert rule in got, got
        if volume is not None:
            assert "secret-volume-use" in got, got


@pytest.mark.parametrize("secret", sorted(SECRETS))
@pytest.mark.parametrize("ref", sorted(POD_REFS))
def test_pod_level_references_at_creation(ref: str, secret: str) -> None:
    name, rule = SECRETS[secret]
    pod = base_pod()
    POD_REFS[ref](pod["spec"], name)
    assert refusal(pod) == (() if rule is None else (rule,))


@pytest.mark.parametrize("secret", sorted(SECRETS))
@pytest.mark.parametrize("ref", sorted(CONTAINER_REFS))
def test_ephemeral_container_references(ref: str, secret: str) -> None:
    """A debug container gets the same rules: env and envFrom directly; volumes it can only mount,
    so a stored pod holding such a volume (its Secret joined the session later) is built here."""
    name, rule = SECRETS[secret]
    volume, edit = CONTAINER_REFS[ref](name)
    pod = injected_pod()
    if volume is not None:
        pod["spec"]["volumes"].append(volume)
        rule = None if rule is None else "secret-volume-use"
    got = ephemeral_refusal(pod, {"name": "debug", "image": "busybox", **edit}, session())
    assert got == (() if rule is None else (rule,))


@pytest.mark.parametrize("ref", sorted(CONTAINER_REFS))
def test_ephemeral_container_with_the_session_unreadable_fails_closed(ref: str) -> None:
    """The session is gone (deleted): which Secrets hold real keys is unknown, so none may be read."""
    volume, edit = CONTAINER_REFS[ref]("corp-config")
    pod = injected_pod()
    if volume is not None:
        pod["spec"]["volumes"].append(volume)
    got = ephemeral_refusal(pod, {"name": "debug", "image": "busybox", **edit}, view=None)
    assert got == (("secret-volume-use",) if volume is not None else ("source-secret-reference",))
    assert (
        ephemeral_refusal(pod, {"name": "debug", "image": "busybox", "env": [{"name": "A", "value": "b"}]}, view=None)
        == ()
    )


@pytest.mark.parametrize("use", sorted(RESERVED_USES))
@pytest.mark.parametrize("kind", sorted(CREATE_KINDS))
def test_reserved_volume_uses_at_creation(kind: str, use: str) -> None:
    """Issue 12 item 1: the use names a volume only the injection adds; refused before it exists."""
    assert "proxy-volume-use" in refusal(pod_with(kind, None, RESERVED_USES[use]))


@pytest.mark.parametrize("use", sorted(RESERVED_USES))
def test_reserved_volume_uses_by_ephemeral_containers(use: str) -> None:
    got = ephemeral_refusal(injected_pod(), {"name": "debug", "image": "busybox", **RESERVED_USES[use]}, session())
    assert "proxy-volume-use" in got


@pytest.mark.parametrize("kind", sorted(CREATE_KINDS))
def test_the_ca_volume_may_be_used_by_any_container(kind: str) -> None:
    edit = {"volumeMounts": [{"name": n.VOLUME_CA, "mountPath": "/ca", "readOnly": True}]}
    assert refusal(pod_with(kind, None, edit)) == ()
    assert ephemeral_refusal(injected_pod(), {"name": "debug", "image": "busybox", **edit}, session()) == ()


def test_the_check_after_injection_sees_what_a_mount_becomes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the by-name rule, the pod as submitted passes (its mount names no volume) and the
    pod as injected is refused by resolution: the two checks are independent."""
    pod = pod_with("app container", None, RESERVED_USES["mount of the session volume"])
    without = tuple(r for r in rules.SPEC_RULES if r.id != "proxy-volume-use")
    assert rules.evaluate(subject(pod, session()), without) == []
    monkeypatch.setattr(rules, "SPEC_RULES", without)
    assert refusal(pod) == ("secret-volume-use",)


def test_issue_12_item_1_exact_pod() -> None:
    """A labelled pod with automountServiceAccountToken: false, mounting oshu-vault-session at /steal."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "steal", "labels": {n.LABEL_SESSION: "claude"}},
        "spec": {
            "automountServiceAccountToken": False,
            "containers": [
                {"name": "app", "image": "busybox", "volumeMounts": [{"name": n.VOLUME_SESSION, "mountPath": "/steal"}]}
            ],
        },
    }
    assert refusal(pod) == ("proxy-volume-use",)


@pytest.mark.parametrize(
    "path, refused",
    [
        (n.CA_MOUNT_DIR, True),
        (n.CA_MOUNT_DIR + "/", True),
        (n.CA_MOUNT_DIR + "/ca.crt", True),
        ("/var/run/oshu-vault//ca", True),
        ("/var/run/oshu-vault/x/../ca", True),
        (n.CA_MOUNT_DIR.lstrip("/"), True),
        (n.CA_MOUNT_DIR + "b", False),
        ("/var/run/oshu-vault", False),
        ("/data", False),
    ],
)
def test_ca_mount_path(path: str, refused: bool) -> None:
    pod = pod_with(
        "app container", {"name": "data", "emptyDir": {}}, {"volumeMounts": [{"name": "data", "mountPath": path}]}
    )
    assert refusal(pod) == (("ca-mount-path",) if refused else ())


def test_debug_container_targets() -> None:
    pod = injected_pod()
    assert ephemeral_refusal(
        pod, {"name": "d", "image": "b", "targetContainerName": n.SIDECAR_CONTAINER}, session()
    ) == ("ephemeral-targets-proxy",)
    assert ephemeral_refusal(pod, {"name": "d", "image": "b", "targetContainerName": "agent"}, session()) == ()


@pytest.mark.parametrize(
    "change, refused",
    [
        (lambda spec: spec["initContainers"][0].update(image="attacker.example/steal:1"), True),
        (lambda spec: spec["initContainers"][0]["args"].append("--log-level=debug"), True),
        (lambda spec: spec["initContainers"][0].update(imagePullPolicy="Always"), True),
        (lambda spec: spec["containers"][0].update(image="agent:2"), False),
        (lambda spec: spec["initContainers"][1].update(image="git:2"), False),
        (lambda spec: spec.update(activeDeadlineSeconds=60), False),
    ],
)
def test_an_update_may_not_change_the_proxy(change, refused: bool) -> None:
    old = injected_pod()
    new = copy.deepcopy(old)
    change(new["spec"])
    subj = rules.Subject(new, "agents", "claude", None, old=old)
    assert [f.rule.id for f in rules.update_findings(subj)] == (["proxy-container-changed"] if refused else [])
    # At creation (no old pod) the rule never fires.
    assert (
        rules.evaluate(rules.Subject(new, "agents", "claude", session()), [rules.BY_ID["proxy-container-changed"]])
        == []
    )


def test_earlier_ephemeral_containers_are_not_judged_again() -> None:
    """Findings about anything but the added containers are left out (the rest cannot change here)."""
    pod = injected_pod()
    pod["spec"][rules.KIND_EPHEMERAL] = [
        {"name": "old", "image": "b", "envFrom": [{"secretRef": {"name": "anthropic"}}]}
    ]
    assert ephemeral_refusal(pod, {"name": "new", "image": "b"}, session()) == ()


# --- the registry itself ---------------------------------------------------------------------


def _spec(**kw) -> dict:
    pod = base_pod()
    pod["spec"].update(kw)
    return pod


def _container(**kw) -> dict:
    pod = base_pod()
    pod["spec"]["containers"][0].update(kw)
    return pod


#: For each spec rule, a pod that breaks it and no other.
ONE_PER_RULE: dict[str, Callable[[], dict[str, Any]] | None] = {
    "opt-in-mismatch": lambda: {
        **base_pod(),
        "metadata": {**base_pod()["metadata"], "annotations": {n.ANNOTATION_SESSION: "other"}},
    },
    "containers-annotation-unknown": lambda: {
        **base_pod(),
        "metadata": {**base_pod()["metadata"], "annotations": {n.ANNOTATION_CONTAINERS: "nope"}},
    },
    "shared-process-namespace": lambda: _spec(shareProcessNamespace=True),
    "host-pid": lambda: _spec(hostPID=True),
    "host-network": lambda: _spec(hostNetwork=True),
    "reserved-container-name": lambda: _spec(
        containers=[{"name": "agent", "image": "a"}, {"name": n.SIDECAR_CONTAINER, "image": "x"}]
    ),
    "reserved-volume-name": lambda: _spec(volumes=[{"name": n.VOLUME_CA, "emptyDir": {}}]),
    "proxy-volume-use": lambda: _container(volumeMounts=[{"name": n.VOLUME_TMP, "mountPath": "/t"}]),
    "secret-volume-use": None,  # always with a reference rule at creation: see test_the_check_after_injection...
    "session-secret-reference": lambda: _spec(imagePullSecrets=[{"name": OWN_SESSION_SECRET}]),
    "source-secret-reference": lambda: _container(envFrom=[{"secretRef": {"name": "anthropic"}}]),
    "ca-mount-path": lambda: _spec(
        volumes=[{"name": "d", "emptyDir": {}}],
        containers=[{"name": "agent", "image": "a", "volumeMounts": [{"name": "d", "mountPath": n.CA_MOUNT_DIR}]}],
    ),
    "session-env-set": lambda: _container(env=[{"name": "ANTHROPIC_API_KEY", "value": "sk-literal"}]),
    "proxy-container-changed": None,  # updates only: test_an_update_may_not_change_the_proxy
    "ephemeral-targets-proxy": None,  # ephemeral containers only: test_debug_container_targets
    # enforcement: redirect only: tests/operator/test_redirect_rules.py (one case per rule there)
    "redirect-capabilities": None,
    "redirect-privileged": None,
    "redirect-run-as-user": None,
    "redirect-uid-switch": None,
}
ONE_SESSION_PER_RULE = {
    "session-missing": None,
    "session-deleting": session(deleting=True),
    "session-expired": session(phase=n.PHASE_EXPIRED),
    "session-invalid": session(phase=n.PHASE_INVALID, message="bad"),
    "session-not-ready": session(tokens={}, phase=None),
}


def test_every_spec_rule_has_a_case() -> None:
    assert list(ONE_PER_RULE) == [r.id for r in rules.SPEC_RULES]
    assert list(ONE_SESSION_PER_RULE) == [r.id for r in rules.SESSION_RULES]


@pytest.mark.parametrize("rule", [k for k, v in ONE_PER_RULE.items() if v is not None])
def test_each_spec_rule_alone(rule: str) -> None:
    make = ONE_PER_RULE[rule]
    assert make is not None
    assert refusal(make()) == (rule,)


@pytest.mark.parametrize("rule", list(ONE_SESSION_PER_RULE))
def test_each_session_rule_alone(rule: str) -> None:
    with pytest.raises(Refused) as e:
        rules.check_session("agents", "claude", ONE_SESSION_PER_RULE[rule])
    assert e.value.rule_ids == (rule,)
    assert isinstance(e.value, rules.NotReady) == (rule == "session-not-ready")


def test_every_message_ends_with_its_rule_id() -> None:
    pod = _spec(hostPID=True, shareProcessNamespace=True)
    with pytest.raises(Refused) as e:
        plan(pod, session(), CFG)
    assert re.findall(r"\[([a-z-]+)\]", str(e.value)) == ["shared-process-namespace", "host-pid"]


def test_rule_ids_are_stable_slugs() -> None:
    for rule in rules.RULES:
        assert re.fullmatch(r"[a-z]+(-[a-z]+)*", rule.id), rule.id
        assert rule.summary and rule.message


def test_every_rule_is_a_metric_label() -> None:
    metrics = Metrics()
    labels = {
        s.labels["rule"]
        for m in metrics.registry.collect()
        if m.name == "oshu_vault_admission_refusals"
        for s in m.samples
        if s.name.endswith("_total")
    }
    assert labels == set(rules.BY_ID)


def test_docs_table_is_the_registry() -> None:
    """docs/operator.md lists the rules between markers: ids and summaries, in registry order."""
    text = DOCS.read_text()
    table = text.split("<!-- rules:begin -->", 1)[1].split("<!-- rules:end -->", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    parsed = [tuple(cell.strip() for cell in row.strip("|").split(" | ", 1)) for row in rows]
    assert parsed == [(f"`{r.id}`", r.summary) for r in rules.RULES]


def test_a_long_list_of_findings_is_capped() -> None:
    pod = base_pod()
    pod["spec"]["containers"][0]["envFrom"] = [{"secretRef": {"name": "anthropic"}}] * 9
    with pytest.raises(Refused) as e:
        plan(pod, session(), CFG)
    assert str(e.value).count("[source-secret-reference]") == rules.MAX_FINDINGS_SHOWN
    assert str(e.value).endswith("and 4 more")
