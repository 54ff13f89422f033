"""The injection webhook, called by the real API server: exact mutation, refusals, filters."""

from __future__ import annotations

import copy
import json

import pytest

from oshu_operator import names as n
from oshu_operator.config import DEFAULT_NO_PROXY
from oshu_operator.injection import CA_MOUNT, infra_env, sidecar_container, volumes
from oshu_testkit.kube import SIDECAR, SIDECAR_IMAGE, pod, wait_for


@pytest.fixture
def session(kube, ns, real):
    """A Ready session `claude` with ANTHROPIC_API_KEY backed by Secret `anthropic`."""
    kube.secret(ns, "anthropic", {"api-key": real()})
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


def create(kube, ns, obj, *extra):
    return kube.create(obj, "-n", ns, *extra)


def test_annotated_pod_gets_exactly_the_sidecar_env_and_volumes(kube, ns, session):
    spec_env = [{"name": "FOO", "value": "bar"}]
    made = create(
        kube,
        ns,
        pod(
            "agent",
            "claude",
            [{"name": "agent", "image": "agent:1", "env": spec_env}, {"name": "tool", "image": "tool:1"}],
        ),
    )
    assert made.ok, made.error
    assert made.warnings == []
    spec = made.obj["spec"]
    assert spec["initContainers"] == [sidecar_container(SIDECAR)]
    ours = volumes("oshu-vault-session-claude")
    assert [v for v in spec["volumes"] if v["name"].startswith("oshu-vault")] == ours
    token = session["tokens"]["ANTHROPIC_API_KEY"]
    want_env = [{"name": "ANTHROPIC_API_KEY", "value": token}] + [
        {"name": k, "value": v} for k, v in infra_env(DEFAULT_NO_PROXY, SIDECAR.proxy_url)
    ]
    for c in spec["containers"]:
        before = spec_env if c["name"] == "agent" else []
        assert c["env"] == before + want_env
        assert [m for m in c["volumeMounts"] if m["name"].startswith("oshu-vault")] == [CA_MOUNT]
        assert not any(m["name"] == n.VOLUME_SESSION for m in c["volumeMounts"])
    record = json.loads(made.obj["metadata"]["annotations"][n.ANNOTATION_INJECTED])
    assert record["session"] == "claude" and record["containers"] == ["agent", "tool"]
    assert record["secrets"] == ["ANTHROPIC_API_KEY"] and record["sidecar"] == SIDECAR_IMAGE


def test_stored_pod_has_the_configured_sidecar_ports_and_log_level(kube, ns, session):
    """The operator runs with --sidecar-proxy-port/--sidecar-admin-port/--sidecar-log-level (conftest)."""
    from oshu_sidecar.config import load_config

    made = create(kube, ns, pod("agent", "claude"))
    assert made.ok, made.error
    (side,) = made.obj["spec"]["initContainers"]
    parsed = load_config(side["args"], environ={})  # the sidecar's own parser takes the stored args
    assert parsed.listen == ("127.0.0.1", SIDECAR.proxy_port) and parsed.admin_listen[1] == SIDECAR.admin_port
    assert parsed.log_level == SIDECAR.log_level
    assert side["startupProbe"]["httpGet"]["port"] == side["readinessProbe"]["httpGet"]["port"] == SIDECAR.admin_port
    assert side["ports"][0]["containerPort"] == SIDECAR.admin_port
    env = {e["name"]: e["value"] for e in made.obj["spec"]["containers"][0]["env"]}
    assert {env[var] for var in n.ENV_PROXY_VARS} == {f"http://127.0.0.1:{SIDECAR.proxy_port}"}
    assert SIDECAR.proxy_port != n.SIDECAR_PROXY_PORT and SIDECAR.admin_port != n.SIDECAR_ADMIN_PORT


def test_injection_is_idempotent_through_the_api(kube, ns, session):
    first = create(kube, ns, pod("agent", "claude"))
    assert first.ok, first.error
    again = copy.deepcopy(first.obj)
    again["metadata"] = {k: v for k, v in again["metadata"].items() if k in ("labels", "annotations")} | {
        "name": "agent-copy"
    }
    again.pop("status", None)
    second = create(kube, ns, again)
    assert second.ok, second.error
    assert second.obj["spec"]["initContainers"] == first.obj["spec"]["initContainers"]
    assert second.obj["spec"]["containers"] == first.obj["spec"]["containers"]
    assert [v for v in second.obj["spec"]["volumes"] if v["name"].startswith("oshu")] == [
        v for v in first.obj["spec"]["volumes"] if v["name"].startswith("oshu")
    ]


def test_dry_run_is_injected_and_leaves_nothing(kube, ns, session):
    made = create(kube, ns, pod("dry", "claude"), "--dry-run=server")
    assert made.ok, made.error
    assert made.obj["spec"]["initContainers"][0]["name"] == n.SIDECAR_CONTAINER
    assert kube.get("pod", "dry", ns) is None


def test_pod_not_opted_in_is_untouched_and_never_reaches_the_webhook(kube, ns, session, operator):
    before = operator.metric("oshu_vault_admission_duration_seconds_count") or 0
    plain = create(kube, ns, pod("plain", None))
    # Other labels and annotations, even under our group, do not opt in: the matchConditions filter.
    other = create(kube, ns, pod("other", None, annotations={n.ANNOTATION_CONTAINERS: "agent", "x": "claude"}))
    for made in (plain, other):
        assert made.ok, made.error
        assert "initContainers" not in made.obj["spec"]
        assert not any(v["name"].startswith("oshu-vault") for v in made.obj["spec"].get("volumes", []))
        assert n.ANNOTATION_INJECTED not in made.obj["metadata"].get("annotations", {})
        assert "env" not in made.obj["spec"]["containers"][0]
    assert (operator.metric("oshu_vault_admission_duration_seconds_count") or 0) == before


def test_the_annotation_alone_opts_in_like_the_label(kube, ns, session, operator):
    """Issue 12 item 11: the annotation opts in (matchConditions send the pod), injected exactly as labelled."""
    labelled = create(kube, ns, pod("labelled", "claude"))
    annotated = create(kube, ns, pod("annotated", None, annotations={n.ANNOTATION_SESSION: "claude"}))
    assert labelled.ok and annotated.ok, (labelled.error, annotated.error)
    assert annotated.obj["spec"]["initContainers"] == labelled.obj["spec"]["initContainers"]

    def ours(spec):  # the service account token volume has a random name: compare what we inject
        return (
            [
                (c["env"], [m for m in c["volumeMounts"] if m["name"].startswith("oshu-vault")])
                for c in spec["containers"]
            ],
            [v for v in spec["volumes"] if v["name"].startswith("oshu-vault")],
        )

    assert ours(annotated.obj["spec"]) == ours(labelled.obj["spec"])
    record = json.loads(annotated.obj["metadata"]["annotations"][n.ANNOTATION_INJECTED])
    assert record["session"] == "claude"
    missing = create(kube, ns, pod("p", None, annotations={n.ANNOTATION_SESSION: "no-such-session"}))
    assert not missing.ok and "[session-missing]" in missing.error, missing.error


def test_the_registered_webhooks_filter_with_match_conditions(kube, operator):
    from oshu_operator.webhookconfig import match_conditions

    stored = kube.get("mutatingwebhookconfiguration", operator.webhook_config)
    hooks = {h["name"]: h for h in stored["webhooks"]}
    assert hooks[n.WEBHOOK_NAME]["matchConditions"] == match_conditions()
    assert hooks[n.EPHEMERAL_WEBHOOK_NAME]["matchConditions"] == match_conditions(ephemeral=True)
    assert all(h["objectSelector"] == {} for h in hooks.values())


def test_system_namespaces_are_never_touched(kube, operator):
    made = kube.create(pod("oshu-system-ns-check", "no-such-session"), "-n", "kube-public")
    try:
        assert made.ok, made.error  # not refused: the webhook is never called there
        assert "initContainers" not in made.obj["spec"]
    finally:
        kube.delete("pod", "oshu-system-ns-check", "kube-public")


def test_existing_proxy_and_ca_variables_are_kept_with_a_warning(kube, ns, session):
    made = create(
        kube,
        ns,
        pod(
            "agent",
            "claude",
            [
                {
                    "name": "agent",
                    "image": "agent:1",
                    "env": [
                        {"name": "HTTPS_PROXY", "value": "http://corp-proxy:3128"},
                        {"name": "REQUESTS_CA_BUNDLE", "value": "/etc/corp/ca.pem"},
                    ],
                }
            ],
        ),
    )
    assert made.ok, made.error
    env = {e["name"]: e["value"] for e in made.obj["spec"]["containers"][0]["env"]}
    assert env["HTTPS_PROXY"] == "http://corp-proxy:3128" and env["REQUESTS_CA_BUNDLE"] == "/etc/corp/ca.pem"
    assert env["https_proxy"] == SIDECAR.proxy_url
    assert any("HTTPS_PROXY" in w and "REQUESTS_CA_BUNDLE" in w and "kept" in w for w in made.warnings), made.warnings


def test_containers_annotation_limits_injection(kube, ns, session):
    made = create(
        kube,
        ns,
        pod(
            "agent",
            "claude",
            [{"name": "agent", "image": "a"}, {"name": "db", "image": "d"}],
            annotations={n.ANNOTATION_CONTAINERS: "agent"},
        ),
    )
    assert made.ok, made.error
    agent, db = made.obj["spec"]["containers"]
    assert any(e["name"] == "ANTHROPIC_API_KEY" for e in agent["env"])
    assert "env" not in db and not any(m["name"].startswith("oshu") for m in db.get("volumeMounts", []))


def test_pending_session_admits_with_a_warning(kube, ns, real):
    kube.session(ns, "later", [{"name": "K", "secretKeyRef": {"name": "not-yet", "key": "k"}, "hosts": ["a.test"]}])
    kube.wait_phase(ns, "later", n.PHASE_PENDING)
    made = create(kube, ns, pod("agent", "later"))
    assert made.ok, made.error
    assert any("not Ready" in w and "Secret not-yet" in w for w in made.warnings), made.warnings


def test_pod_applied_together_with_its_session_waits_for_the_tokens(kube, ns, real):
    kube.secret(ns, "anthropic", {"api-key": real()})
    kube.session(
        ns, "fresh", [{"name": "K", "secretKeyRef": {"name": "anthropic", "key": "api-key"}, "hosts": ["a.test"]}]
    )
    made = create(kube, ns, pod("agent", "fresh"))  # no wait for Ready in between
    assert made.ok, made.error
    token = kube.status(ns, "fresh")["tokens"]["K"]
    assert {"name": "K", "value": token} in made.obj["spec"]["containers"][0]["env"]


REFUSALS = [
    ("missing session", lambda: pod("p", "no-such-session"), "session-missing"),
    ("shared process namespace", lambda: pod("p", "claude", shareProcessNamespace=True), "shared-process-namespace"),
    ("host network", lambda: pod("p", "claude", hostNetwork=True), "host-network"),
    (
        "session Secret in an app container",
        lambda: pod(
            "p",
            "claude",
            [{"name": "agent", "image": "a", "volumeMounts": [{"name": "s", "mountPath": "/s"}]}],
            volumes=[{"name": "s", "secret": {"secretName": "oshu-vault-session-claude"}}],
        ),
        "secret-volume-use",
    ),
    (
        "sets a session secret name itself",
        lambda: pod(
            "p", "claude", [{"name": "agent", "image": "a", "env": [{"name": "ANTHROPIC_API_KEY", "value": "x"}]}]
        ),
        "session-env-set",
    ),
    (
        "takes the real Secret",
        lambda: pod(
            "p",
            "claude",
            [
                {
                    "name": "agent",
                    "image": "a",
                    "env": [{"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "anthropic", "key": "api-key"}}}],
                }
            ],
        ),
        "source-secret-reference",
    ),
    (
        "label and annotation disagree",
        lambda: pod("p", "claude", annotations={n.ANNOTATION_SESSION: "other"}),
        "opt-in-mismatch",
    ),
    (
        "reserved container name",
        lambda: pod("p", "claude", [{"name": n.SIDECAR_CONTAINER, "image": "evil"}]),
        "reserved-container-name",
    ),
]


@pytest.mark.parametrize("what, make, rule", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals_name_their_rule(kube, ns, session, operator, what, make, rule):
    before = operator.metric("oshu_vault_admission_refusals_total", rule=rule)
    made = create(kube, ns, make())
    assert not made.ok
    assert 'admission webhook "inject.pods.vault.oshu.dev" denied the request' in made.error
    assert f"[{rule}]" in made.error, made.error
    assert operator.metric("oshu_vault_admission_refusals_total", rule=rule) == before + 1
    assert kube.get("pod", "p", ns) is None
    assert operator.get("/healthz")[0] == 200  # and the operator keeps serving


def test_refusals_are_logged_as_info_not_as_errors(kube, ns, session, operator):
    """A refusal is the webhook working: one INFO record of ours, kopf's own record at DEBUG."""
    made = create(kube, ns, pod("refused-for-log", "claude", shareProcessNamespace=True))
    assert not made.ok
    mine = wait_for(
        lambda: operator.find_log(lambda r: r.get("msg") == "pod refused" and r.get("pod") == "refused-for-log"),
        10,
        "the refusal logged",
    )
    assert mine["level"] == "info" and mine["namespace"] == ns and "shareProcessNamespace" in mine["detail"]
    assert mine["rules"] == ["shared-process-namespace"]
    kopfs = [
        r
        for r in operator.log_records()
        if "refused-for-log" in str(r.get("object")) and "failed permanently" in str(r.get("msg"))
    ]
    assert [r["level"] for r in kopfs] == ["debug"], kopfs  # the operator under test logs at DEBUG
    assert not [r for r in operator.log_records() if r.get("level") == "error" and "failed permanently" in r["msg"]]


def test_expired_session_is_refused(kube, ns, real):
    kube.secret(ns, "anthropic", {"api-key": real()})
    kube.session(
        ns,
        "short",
        [{"name": "K", "secretKeyRef": {"name": "anthropic", "key": "api-key"}, "hosts": ["a.test"]}],
        ttl="2s",
    )
    kube.wait_phase(ns, "short", n.PHASE_EXPIRED, timeout=20)
    made = create(kube, ns, pod("p", "short"))
    assert not made.ok and "[session-expired]" in made.error, made.error


def test_debug_container_targeting_the_proxy_is_refused(kube, ns, session):
    made = create(kube, ns, pod("agent", "claude"))
    assert made.ok, made.error
    live = kube.get("pod", "agent", ns)

    def add_ephemeral(container):
        body = copy.deepcopy(live)
        body["spec"]["ephemeralContainers"] = [container]
        return kube.kubectl(
            "replace", "--subresource=ephemeralcontainers", "-n", ns, "-f", "-", input=json.dumps(body), check=False
        )

    r = add_ephemeral({"name": "debug", "image": "busybox", "targetContainerName": n.SIDECAR_CONTAINER})
    assert r.returncode != 0 and "[ephemeral-targets-proxy]" in r.stderr, r.stderr
    r = add_ephemeral(
        {"name": "debug2", "image": "busybox", "volumeMounts": [{"name": n.VOLUME_SESSION, "mountPath": "/s"}]}
    )
    assert r.returncode != 0 and "[proxy-volume-use]" in r.stderr, r.stderr
    r = add_ephemeral({"name": "debug3", "image": "busybox", "targetContainerName": "agent"})
    assert r.returncode == 0, r.stderr
    wait_for(lambda: kube.get("pod", "agent", ns)["spec"].get("ephemeralContainers"), 10, "debug container added")


def test_injection_metrics(kube, ns, session, operator):
    before = operator.metric("oshu_vault_injections_total", result="injected") or 0
    assert create(kube, ns, pod("agent", "claude")).ok
    assert not create(kube, ns, pod("p", "no-such-session")).ok
    assert operator.metric("oshu_vault_injections_total", result="injected") >= before + 1
    assert operator.metric("oshu_vault_injections_total", result="refused") >= 1
    assert operator.metric("oshu_vault_admission_duration_seconds_count") >= 2
