"""Injection as pure functions on pod dicts: what is added, what is refused, idempotence."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from oshu_contract.session import new_sealed_token
from oshu_operator import names as n
from oshu_operator.config import OperatorConfig, SidecarConfig
from oshu_operator.injection import (
    NotReady,
    Refused,
    SessionView,
    infra_env,
    plan,
    session_name_of,
    sidecar_container,
    volumes,
)

CFG = OperatorConfig(sidecar=SidecarConfig(image="registry.test/oshu-sidecar:1"), no_proxy=("localhost", ".svc"))
TOKEN_A = new_sealed_token()
TOKEN_B = new_sealed_token()


def session(**over) -> SessionView:
    base: dict[str, Any] = dict(
        namespace="agents",
        name="claude",
        uid="uid-1",
        env_names=("ANTHROPIC_API_KEY", "GITHUB_TOKEN"),
        tokens={"ANTHROPIC_API_KEY": TOKEN_A, "GITHUB_TOKEN": TOKEN_B},
        source_secrets={"anthropic": "ANTHROPIC_API_KEY", "github": "GITHUB_TOKEN"},
        phase=n.PHASE_READY,
    )
    base.update(over)
    return SessionView(**base)


def pod(**spec_over) -> dict:
    spec = {
        "containers": [
            {"name": "agent", "image": "agent:1", "env": [{"name": "FOO", "value": "bar"}]},
            {"name": "helper", "image": "helper:1"},
        ]
    }
    spec.update(spec_over)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "agents", "labels": {n.LABEL_SESSION: "claude"}},
        "spec": spec,
    }


def injected(p: dict, s: SessionView | None = None) -> tuple[dict, list[str]]:
    out = copy.deepcopy(p)
    result = plan(out, s or session(), CFG)
    result.apply(out)
    return out, result.warnings


def env_of(p: dict, container: str) -> dict[str, str]:
    c = next(c for c in p["spec"]["containers"] + p["spec"].get("initContainers", []) if c["name"] == container)
    return {e["name"]: e.get("value") for e in c.get("env", [])}


def test_sidecar_volumes_env_and_record_are_exactly_as_designed():
    out, warnings = injected(pod())
    assert warnings == []
    spec = out["spec"]
    assert spec["initContainers"] == [sidecar_container(CFG.sidecar)]
    side = spec["initContainers"][0]
    assert side["restartPolicy"] == "Always"
    assert side["securityContext"]["runAsNonRoot"] and side["securityContext"]["readOnlyRootFilesystem"]
    assert side["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert side["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert side["startupProbe"]["httpGet"]["port"] == n.SIDECAR_ADMIN_PORT
    assert "--listen" in side["args"] and f"127.0.0.1:{n.SIDECAR_PROXY_PORT}" in side["args"]
    assert side["args"][-2:] == ["--log-level", "info"]
    assert side["resources"]["limits"] and side["resources"]["requests"]
    assert spec["volumes"] == volumes(n.SESSION_SECRET_PREFIX + "claude")
    ca_vol = next(v for v in spec["volumes"] if v["name"] == n.VOLUME_CA)
    assert [i["key"] for i in ca_vol["secret"]["items"]] == [n.KEY_CA_CERT, n.KEY_CA_BUNDLE]  # never the key
    for cname in ("agent", "helper"):
        env = env_of(out, cname)
        assert env["ANTHROPIC_API_KEY"] == TOKEN_A and env["GITHUB_TOKEN"] == TOKEN_B
        for var in n.ENV_PROXY_VARS:
            assert env[var] == f"http://127.0.0.1:{n.SIDECAR_PROXY_PORT}"
        assert env["NO_PROXY"] == env["no_proxy"] == "localhost,.svc"
        assert env[n.ENV_NODE_EXTRA_CA] == n.CA_CERT_PATH and env[n.ENV_NODE_USE_ENV_PROXY] == "1"
        for var in n.ENV_CA_BUNDLE_VARS:
            assert env[var] == n.CA_BUNDLE_PATH
        c = next(c for c in spec["containers"] if c["name"] == cname)
        assert c["volumeMounts"] == [{"name": n.VOLUME_CA, "mountPath": n.CA_MOUNT_DIR, "readOnly": True}]
    assert env_of(out, "agent")["FOO"] == "bar"  # existing env kept, in front
    record = json.loads(out["metadata"]["annotations"][n.ANNOTATION_INJECTED])
    assert record == {
        "session": "claude",
        "uid": "uid-1",
        "containers": ["agent", "helper"],
        "secrets": ["ANTHROPIC_API_KEY", "GITHUB_TOKEN"],
        "sidecar": "registry.test/oshu-sidecar:1",
    }
    # The session Secret reaches the sidecar only.
    assert [m["name"] for m in side["volumeMounts"]] == [n.VOLUME_SESSION, n.VOLUME_TMP]


def test_injection_is_idempotent():
    once, _ = injected(pod())
    twice, warnings = injected(once)
    assert twice == once and warnings == []


def test_existing_init_containers_run_after_the_proxy():
    out, _ = injected(pod(initContainers=[{"name": "clone", "image": "git:1"}]))
    assert [c["name"] for c in out["spec"]["initContainers"]] == [n.SIDECAR_CONTAINER, "clone"]
    assert "ANTHROPIC_API_KEY" not in env_of(out, "clone")  # only app containers by default


def test_containers_annotation_selects_targets_including_init_containers():
    p = pod(initContainers=[{"name": "clone", "image": "git:1"}])
    p["metadata"]["annotations"] = {n.ANNOTATION_CONTAINERS: "agent, clone"}
    out, _ = injected(p)
    assert "ANTHROPIC_API_KEY" in env_of(out, "agent") and "ANTHROPIC_API_KEY" in env_of(out, "clone")
    assert "ANTHROPIC_API_KEY" not in env_of(out, "helper")
    assert "volumeMounts" not in next(c for c in out["spec"]["containers"] if c["name"] == "helper")


@pytest.mark.parametrize("value", ["nope", "", " , ", "agent,nope"])
def test_containers_annotation_naming_nothing_is_refused(value):
    p = pod()
    p["metadata"]["annotations"] = {n.ANNOTATION_CONTAINERS: value}
    with pytest.raises(Refused) as e:
        plan(p, session(), CFG)
    assert e.value.rule_ids == ("containers-annotation-unknown",)


def test_proxy_and_ca_variables_the_pod_sets_are_kept_with_a_warning():
    p = pod()
    p["spec"]["containers"][0]["env"] += [
        {"name": "HTTPS_PROXY", "value": "http://corp:3128"},
        {"name": "SSL_CERT_FILE", "value": "/etc/corp.pem"},
    ]
    out, warnings = injected(p)
    env = env_of(out, "agent")
    assert env["HTTPS_PROXY"] == "http://corp:3128" and env["SSL_CERT_FILE"] == "/etc/corp.pem"
    names = [e["name"] for e in next(c for c in out["spec"]["containers"] if c["name"] == "agent")["env"]]
    assert names.count("HTTPS_PROXY") == 1 and names.count("SSL_CERT_FILE") == 1
    assert len(warnings) == 1 and "HTTPS_PROXY" in warnings[0] and "SSL_CERT_FILE" in warnings[0]
    assert json.loads(out["metadata"]["annotations"][n.ANNOTATION_INJECTED])["kept"] == {
        "agent": ["HTTPS_PROXY", "SSL_CERT_FILE"]
    }
    again, warnings2 = injected(out)
    assert again == out and warnings2 == warnings


def refused_rules(p: dict, s: SessionView | None = None) -> tuple[str, ...]:
    with pytest.raises(Refused) as e:
        plan(p, s or session(), CFG)
    return e.value.rule_ids


@pytest.mark.parametrize(
    "entry",
    [
        {"name": "ANTHROPIC_API_KEY", "value": "sk-literal"},
        {"name": "ANTHROPIC_API_KEY", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}},
    ],
)
def test_pod_setting_a_session_secret_name_itself_is_refused(entry):
    p = pod()
    p["spec"]["containers"][0]["env"].append(entry)
    assert refused_rules(p) == ("session-env-set",)


@pytest.mark.parametrize(
    "mutate, rule",
    [
        (lambda s: s.update(shareProcessNamespace=True), "shared-process-namespace"),
        (lambda s: s.update(hostPID=True), "host-pid"),
        (lambda s: s["containers"].append({"name": n.SIDECAR_CONTAINER, "image": "evil"}), "reserved-container-name"),
        (lambda s: s.update(volumes=[{"name": n.VOLUME_SESSION, "hostPath": {"path": "/"}}]), "reserved-volume-name"),
        (
            lambda s: (
                s.update(volumes=[{"name": "steal", "secret": {"secretName": "oshu-vault-session-claude"}}]),
                s["containers"][0].update(volumeMounts=[{"name": "steal", "mountPath": "/x"}]),
            ),
            "secret-volume-use",
        ),
        (
            lambda s: (
                s.update(
                    volumes=[
                        {"name": "steal", "projected": {"sources": [{"secret": {"name": "oshu-vault-session-claude"}}]}}
                    ]
                ),
                s["containers"][1].update(volumeMounts=[{"name": "steal", "mountPath": "/x"}]),
            ),
            "session-secret-reference",
        ),
        (
            lambda s: s["containers"][0]["env"].append(
                {
                    "name": "X",
                    "valueFrom": {"secretKeyRef": {"name": "oshu-vault-session-claude", "key": "session.json"}},
                }
            ),
            "session-secret-reference",
        ),
        (
            lambda s: s["containers"][1].update(envFrom=[{"secretRef": {"name": "anthropic"}}]),
            "source-secret-reference",
        ),
        (
            lambda s: s["containers"][0]["env"].append(
                {"name": "K", "valueFrom": {"secretKeyRef": {"name": "github", "key": "token"}}}
            ),
            "source-secret-reference",
        ),
        (lambda s: s.update(volumes=[{"name": "g", "secret": {"secretName": "github"}}]), "source-secret-reference"),
        (
            lambda s: s["containers"][0].update(volumeMounts=[{"name": "other", "mountPath": n.CA_MOUNT_DIR}]),
            "ca-mount-path",
        ),
    ],
)
def test_refusals(mutate, rule):
    p = pod()
    mutate(p["spec"])
    assert rule in refused_rules(p)


def test_label_and_annotation_must_agree():
    p = pod()
    assert session_name_of(p) == "claude"
    p["metadata"]["annotations"] = {n.ANNOTATION_SESSION: "claude"}
    assert session_name_of(p) == "claude"
    p["metadata"]["annotations"] = {n.ANNOTATION_SESSION: "other"}
    with pytest.raises(Refused) as e:
        session_name_of(p)
    assert e.value.rule_ids == ("opt-in-mismatch",)
    del p["metadata"]["labels"]
    assert session_name_of(p) == "other"
    assert session_name_of({"metadata": {}}) is None


@pytest.mark.parametrize(
    "view, rule",
    [
        (session(phase=n.PHASE_EXPIRED), "session-expired"),
        (session(deleting=True), "session-deleting"),
        (session(deleting=True, phase=n.PHASE_EXPIRED), "session-deleting"),
        (session(phase=n.PHASE_INVALID, message="bad"), "session-invalid"),
    ],
)
def test_unusable_sessions_are_refused(view, rule):
    with pytest.raises(Refused) as e:
        view.check_usable()
    assert not isinstance(e.value, NotReady) and e.value.rule_ids == (rule,)


def test_session_states():
    session(phase=n.PHASE_READY).check_usable()
    session(phase=n.PHASE_PENDING, message="Secret x not found").check_usable()  # tokens exist: admit
    with pytest.raises(NotReady, match="GITHUB_TOKEN") as e:
        session(tokens={"ANTHROPIC_API_KEY": TOKEN_A}, phase=None).check_usable()
    assert e.value.rule_ids == ("session-not-ready",)


def test_pending_session_injects_with_a_warning():
    _, warnings = injected(pod(), session(phase=n.PHASE_PENDING, message="Secret github not found"))
    assert any("Secret github not found" in w for w in warnings)


def test_session_view_reads_a_vaultsession_body():
    body = {
        "metadata": {"namespace": "agents", "name": "claude", "uid": "u"},
        "spec": {
            "secrets": [
                {"name": "A", "secretKeyRef": {"name": "s1", "key": "k"}, "hosts": ["x.test"]},
                {"name": "B", "secretKeyRef": {"name": "s1", "key": "k2"}, "hosts": ["y.test"]},
            ]
        },
        "status": {
            "phase": "Ready",
            "tokens": {"A": TOKEN_A, "B": TOKEN_B},
            "conditions": [{"type": "Ready", "status": "True", "message": "ok"}],
        },
    }
    view = SessionView.from_body(body)
    assert view.env_names == ("A", "B") and view.tokens == {"A": TOKEN_A, "B": TOKEN_B}
    assert view.source_secrets == {"s1": "A"} and view.session_secret == "oshu-vault-session-claude"
    assert view.message == "ok" and not view.deleting


def test_infra_env_covers_every_reserved_name():
    assert {k for k, _ in infra_env(["localhost"], CFG.sidecar.proxy_url)} == set(n.RESERVED_ENV_NAMES)


def test_injected_args_are_a_valid_sidecar_command_line():
    from oshu_sidecar.config import load_config

    cfg = load_config(sidecar_container(CFG.sidecar)["args"], environ={})
    assert cfg.listen == ("127.0.0.1", n.SIDECAR_PROXY_PORT)
    assert cfg.admin_listen == ("0.0.0.0", n.SIDECAR_ADMIN_PORT)
    assert (cfg.session_file, cfg.ca_cert, cfg.ca_key) == (
        n.SESSION_FILE_PATH,
        n.SESSION_CA_CERT_PATH,
        n.SESSION_CA_KEY_PATH,
    )
    # The sidecar's own defaults agree with the ports the webhook wires up.
    defaults = load_config(["--session-file", "s", "--ca-cert", "c", "--ca-key", "k"], environ={})
    assert defaults.listen[1] == n.SIDECAR_PROXY_PORT and defaults.admin_listen[1] == n.SIDECAR_ADMIN_PORT


def test_configured_ports_and_log_level_reach_args_probes_and_env():
    """Non-default --sidecar-proxy-port/--sidecar-admin-port/--sidecar-log-level, end to end in the plan."""
    from dataclasses import replace

    from oshu_sidecar.config import load_config

    cfg = replace(CFG, sidecar=replace(CFG.sidecar, proxy_port=16080, admin_port=16090, log_level="debug"))
    out = copy.deepcopy(pod())
    plan(out, session(), cfg).apply(out)
    (side,) = out["spec"]["initContainers"]
    parsed = load_config(side["args"], environ={})
    assert parsed.listen == ("127.0.0.1", 16080) and parsed.admin_listen == ("0.0.0.0", 16090)
    assert parsed.log_level == "debug"
    for probe in ("startupProbe", "readinessProbe"):
        assert side[probe]["httpGet"]["port"] == 16090
    assert side["ports"] == [{"name": n.SIDECAR_ADMIN_PORT_NAME, "containerPort": 16090, "protocol": "TCP"}]
    for cname in ("agent", "helper"):
        env = env_of(out, cname)
        assert all(env[var] == "http://127.0.0.1:16080" for var in n.ENV_PROXY_VARS)
    assert "15080" not in json.dumps(out) and "15090" not in json.dumps(out)
