"""`enforcement: redirect` as pure functions: spec parsing, what the injection adds (the rules' init
container first, the sidecar's transparent listener), and the refusals that keep every other
container inside the rules, for every container kind. test_admission_redirect.py replays the
essentials through the API server; tests/pods/test_redirect_pods.py runs them on the node.

Assertions are on rule ids (stable), never on message text.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from oshu_contract.session import new_sealed_token
from oshu_operator import names as n
from oshu_operator import redirect, rules
from oshu_operator.cli import build_parser, config_from_args
from oshu_operator.config import OperatorConfig, SidecarConfig
from oshu_operator.injection import plan, sidecar_container, subject
from oshu_operator.rules import Refused, SessionView
from oshu_operator.spec import RedirectSpec, SpecError, parse_enforcement, parse_spec

CFG = OperatorConfig(sidecar=SidecarConfig(image="registry.test/oshu-sidecar:1"))
CFG_REDIRECT = OperatorConfig(sidecar=CFG.sidecar, default_enforcement=n.ENFORCEMENT_REDIRECT)
TOKEN = new_sealed_token()
REDIRECT_RULES = ("redirect-capabilities", "redirect-privileged", "redirect-run-as-user", "redirect-uid-switch")


def session(**over: Any) -> SessionView:
    base: dict[str, Any] = dict(
        namespace="agents",
        name="claude",
        uid="u",
        env_names=("ANTHROPIC_API_KEY",),
        tokens={"ANTHROPIC_API_KEY": TOKEN},
        source_secrets={"anthropic": "ANTHROPIC_API_KEY"},
        phase=n.PHASE_READY,
        enforcement=n.ENFORCEMENT_REDIRECT,
    )
    base.update(over)
    return SessionView(**base)


RESTRICTED = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def good_pod() -> dict[str, Any]:
    """A pod the redirect rules admit: a pod-wide non-proxy uid, every container restricted."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "agents", "labels": {n.LABEL_SESSION: "claude"}},
        "spec": {
            "securityContext": {"runAsUser": 1000, "runAsNonRoot": True},
            "initContainers": [{"name": "clone", "image": "git:1", "securityContext": dict(RESTRICTED)}],
            "containers": [{"name": "agent", "image": "agent:1", "securityContext": dict(RESTRICTED)}],
        },
    }


def injected(pod: dict[str, Any], view: SessionView | None = None, cfg: OperatorConfig = CFG) -> dict[str, Any]:
    out = copy.deepcopy(pod)
    plan(out, view or session(), cfg).apply(out)
    return out


def refusal(pod: dict[str, Any], view: SessionView | None = None) -> tuple[str, ...]:
    try:
        plan(pod, view or session(), CFG)
    except Refused as e:
        return e.rule_ids
    return ()


# --- spec --------------------------------------------------------------------------------------


def test_spec_enforcement_and_redirect_are_parsed_and_normalised() -> None:
    secret = {"name": "K", "secretKeyRef": {"name": "s", "key": "k"}, "hosts": ["api.example.com"]}
    parsed = parse_spec({"secrets": [secret]})
    assert parsed.enforcement is None and parsed.redirect == RedirectSpec()
    parsed = parse_spec(
        {
            "secrets": [secret],
            "enforcement": "redirect",
            "redirect": {"excludeCIDRs": ["10.0.0.0/8", "fd00::/8", "10.0.0.0/8"], "excludePorts": [5432, 5432]},
        }
    )
    assert parsed.enforcement == n.ENFORCEMENT_REDIRECT
    assert parsed.redirect == RedirectSpec(("10.0.0.0/8", "fd00::/8"), (5432,), False)
    assert parse_enforcement({"enforcement": "proxy", "redirect": {"allowMetadata": True}}) == (
        "proxy",
        RedirectSpec(allow_metadata=True),
    )


@pytest.mark.parametrize(
    "spec",
    [
        {"enforcement": "iptables"},
        {"redirect": []},
        {"redirect": {"excludeCIDRs": ["10.1.2.3/8"]}},  # host bits set: the user meant something else
        {"redirect": {"excludeCIDRs": ["example.com"]}},
        {"redirect": {"excludeCIDRs": ["0.0.0.0/0"]}},  # the rules command refuses it: enforcement off
        {"redirect": {"excludeCIDRs": ["::/0"]}},
        {"redirect": {"excludePorts": [0]}},
        {"redirect": {"excludePorts": [65536]}},
        {"redirect": {"excludePorts": [True]}},
        {"redirect": {"excludePorts": "443"}},
        {"redirect": {"allowMetadata": "yes"}},
    ],
)
def test_bad_enforcement_specs_are_refused(spec: dict[str, Any]) -> None:
    with pytest.raises(SpecError, match=r"spec\.(enforcement|redirect)"):
        parse_enforcement(spec)


def test_session_view_reads_enforcement_and_an_unreadable_one_makes_it_invalid() -> None:
    body: dict[str, Any] = {
        "metadata": {"namespace": "a", "name": "s"},
        "spec": {"enforcement": "redirect", "redirect": {"excludePorts": [53]}},
        "status": {"phase": n.PHASE_READY},
    }
    view = SessionView.from_body(body)
    assert (view.enforcement, view.redirect.exclude_ports, view.phase) == ("redirect", (53,), n.PHASE_READY)
    body["spec"]["enforcement"] = "nope"
    view = SessionView.from_body(body)
    assert view.phase == n.PHASE_INVALID and view.enforcement is None
    with pytest.raises(Refused) as e:
        view.check_usable()
    assert e.value.rule_ids == ("session-invalid",)


def test_default_enforcement_flag_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert config_from_args(build_parser().parse_args([])).default_enforcement == n.ENFORCEMENT_PROXY
    argv = ["--default-enforcement", "redirect"]
    assert config_from_args(build_parser().parse_args(argv)).default_enforcement == n.ENFORCEMENT_REDIRECT
    monkeypatch.setenv("OSHU_DEFAULT_ENFORCEMENT", "redirect")
    assert config_from_args(build_parser().parse_args([])).default_enforcement == n.ENFORCEMENT_REDIRECT
    monkeypatch.setenv("OSHU_DEFAULT_ENFORCEMENT", "iptables")
    with pytest.raises(SystemExit):
        config_from_args(build_parser().parse_args([]))
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--default-enforcement", "iptables"])


@pytest.mark.parametrize("flag", ["--sidecar-proxy-port", "--sidecar-admin-port"])
def test_the_transparent_port_is_not_given_to_another_listener(flag: str) -> None:
    with pytest.raises(SystemExit, match="transparent"):
        config_from_args(build_parser().parse_args([flag, str(n.SIDECAR_TRANSPARENT_PORT)]))


# --- what is injected ---------------------------------------------------------------------------


def test_redirect_injects_the_rules_container_first_and_the_transparent_listener() -> None:
    view = session(redirect=RedirectSpec(("10.0.0.0/8",), (5432, 6379), True))
    out = injected(good_pod(), view)
    netrules, sidecar, clone = out["spec"]["initContainers"]
    assert (netrules["name"], sidecar["name"], clone["name"]) == (n.NETRULES_CONTAINER, n.SIDECAR_CONTAINER, "clone")
    assert netrules["image"] == sidecar["image"] == CFG.sidecar.image
    assert netrules["command"] == [n.NETRULES_COMMAND]
    assert netrules["args"] == [
        "--proxy-uid",
        str(n.SIDECAR_UID),
        "--transparent-port",
        str(n.SIDECAR_TRANSPARENT_PORT),
        "--exclude-cidr",
        "10.0.0.0/8",
        "--exclude-port",
        "5432",
        "--exclude-port",
        "6379",
        "--allow-metadata",
    ]
    assert netrules["securityContext"] == {
        "runAsUser": 0,
        "runAsGroup": 0,
        "runAsNonRoot": False,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert "restartPolicy" not in netrules  # a plain init container: runs to completion, first
    assert "volumeMounts" not in netrules and "env" not in netrules  # no session, no token, no key
    assert sidecar == sidecar_container(CFG.sidecar, redirected=True)
    port = n.SIDECAR_TRANSPARENT_PORT
    assert sidecar["args"][-5:] == [
        "--transparent-listen",
        f"127.0.0.1:{port}",
        "--transparent-listen",
        f"[::1]:{port}",
        "--require-redirect",
    ]
    assert sidecar["securityContext"]["runAsUser"] == n.SIDECAR_UID  # the uid the rules exempt
    # The proxy variables stay: explicit proxying keeps working under redirect.
    env = {e["name"]: e["value"] for e in out["spec"]["containers"][0]["env"]}
    assert env["HTTPS_PROXY"] == CFG.sidecar.proxy_url and env["ANTHROPIC_API_KEY"] == TOKEN
    record = json.loads(out["metadata"]["annotations"][n.ANNOTATION_INJECTED])
    assert record["enforcement"] == n.ENFORCEMENT_REDIRECT


def test_redirect_injection_is_idempotent_and_replaces_a_forged_rules_container() -> None:
    once = injected(good_pod())
    assert injected(once) == once
    forged = copy.deepcopy(once)
    forged["spec"]["initContainers"][0]["args"] = ["--exclude-cidr", "0.0.0.0/0"]
    forged["spec"]["initContainers"][0]["image"] = "attacker.example/rules:1"
    assert injected(forged) == once


def test_without_redirect_nothing_changes() -> None:
    for view, cfg in ((session(enforcement=None), CFG), (session(enforcement=n.ENFORCEMENT_PROXY), CFG_REDIRECT)):
        out = injected(good_pod(), view, cfg)
        sidecar, clone = out["spec"]["initContainers"]
        assert sidecar == sidecar_container(CFG.sidecar) and clone["name"] == "clone"
        assert not any(a.startswith("--transparent") or a == "--require-redirect" for a in sidecar["args"])
        assert "enforcement" not in json.loads(out["metadata"]["annotations"][n.ANNOTATION_INJECTED])


def test_the_operator_default_applies_when_the_session_says_nothing() -> None:
    out = injected(good_pod(), session(enforcement=None), CFG_REDIRECT)
    assert [c["name"] for c in out["spec"]["initContainers"]][:2] == [n.NETRULES_CONTAINER, n.SIDECAR_CONTAINER]
    assert redirect.enforcement_of(None, CFG_REDIRECT) == n.ENFORCEMENT_REDIRECT
    assert redirect.enforcement_of(n.ENFORCEMENT_PROXY, CFG_REDIRECT) == n.ENFORCEMENT_PROXY


def test_the_operator_port_constant_is_the_sidecars() -> None:
    from oshu_sidecar import config as sidecar_config

    assert n.SIDECAR_TRANSPARENT_PORT == sidecar_config.TRANSPARENT_PORT


# --- refusals: one case per rule, on every container kind --------------------------------------

Change = Callable[[dict[str, Any]], None]


def _sc(**kw: Any) -> Change:
    def change(c: dict[str, Any]) -> None:
        c["securityContext"] = {**c.get("securityContext", {}), **kw}

    return change


#: rule -> (a change to one container that breaks that rule and no other)
ONE_PER_RULE: dict[str, list[Change]] = {
    "redirect-capabilities": [
        _sc(capabilities={"drop": ["ALL"], "add": ["NET_ADMIN"]}),
        _sc(capabilities={"drop": ["ALL"], "add": ["CAP_NET_RAW"]}),
        _sc(capabilities={"drop": ["ALL"], "add": ["sys_admin"]}),
    ],
    "redirect-privileged": [_sc(privileged=True)],
    "redirect-run-as-user": [_sc(runAsUser=n.SIDECAR_UID)],
    "redirect-uid-switch": [
        _sc(allowPrivilegeEscalation=True),
        lambda c: c["securityContext"].pop("allowPrivilegeEscalation"),
        _sc(runAsUser=0, capabilities={"drop": ["NET_ADMIN"]}),
        _sc(capabilities={"drop": ["ALL"], "add": ["SETUID"]}),
    ],
}
CASES = [(rule, i) for rule, changes in ONE_PER_RULE.items() for i in range(len(changes))]


def test_every_redirect_rule_has_a_case() -> None:
    assert tuple(ONE_PER_RULE) == REDIRECT_RULES
    assert [r.id for r in rules.SPEC_RULES if r.id.startswith("redirect-")] == list(REDIRECT_RULES)


def test_a_restricted_pod_and_root_without_setuid_are_admitted() -> None:
    assert refusal(good_pod()) == ()
    pod = good_pod()
    _sc(runAsUser=0, runAsNonRoot=False)(pod["spec"]["containers"][0])  # root, all capabilities dropped
    assert refusal(pod) == ()


@pytest.mark.parametrize(("rule", "case"), CASES)
@pytest.mark.parametrize("kind", ["containers", "initContainers"])
def test_each_redirect_rule_alone_on_each_container_kind(rule: str, case: int, kind: str) -> None:
    pod = good_pod()
    ONE_PER_RULE[rule][case](pod["spec"][kind][0])
    assert refusal(pod) == (rule,)
    assert refusal(pod, session(enforcement=n.ENFORCEMENT_PROXY)) == ()  # proxy: no such rule


@pytest.mark.parametrize(("rule", "case"), CASES)
def test_each_redirect_rule_on_a_debug_container(rule: str, case: int) -> None:
    pod = injected(good_pod())
    debug = {"name": "debug", "image": "busybox", "securityContext": dict(RESTRICTED)}
    ONE_PER_RULE[rule][case](debug)
    pod["spec"][rules.KIND_EPHEMERAL] = [debug]
    subj = rules.Subject(pod, "agents", "claude", session(), enforcement=n.ENFORCEMENT_REDIRECT)
    assert [f.rule.id for f in rules.ephemeral_findings(subj, ["debug"])] == [rule]
    ok = dict(debug, securityContext=dict(RESTRICTED))
    pod["spec"][rules.KIND_EPHEMERAL] = [ok]
    assert rules.ephemeral_findings(subj, ["debug"]) == []


def test_run_as_user_unset_everywhere_is_refused_and_the_container_wins_over_the_pod() -> None:
    pod = good_pod()
    del pod["spec"]["securityContext"]["runAsUser"]
    assert refusal(pod) == ("redirect-run-as-user",)
    for c in (*pod["spec"]["containers"], *pod["spec"]["initContainers"]):
        c["securityContext"]["runAsUser"] = 1000
    assert refusal(pod) == ()
    pod["spec"]["securityContext"]["runAsUser"] = n.SIDECAR_UID  # overridden by every container
    assert refusal(pod) == ()


def test_the_injected_containers_are_exempt_only_as_injected() -> None:
    """The proxy runs as 65532 and the rules' container with NET_ADMIN: that is the injection's own
    doing. After injection the pod passes every rule (plan() checks it again), and the exemption
    is by name and kind: an app container of either name is refused."""
    out = injected(good_pod())
    assert rules.evaluate(subject(out, session(), n.ENFORCEMENT_REDIRECT)) == []
    for name in (n.NETRULES_CONTAINER, n.SIDECAR_CONTAINER):
        pod = good_pod()
        pod["spec"]["containers"].append({"name": name, "image": "x", "securityContext": dict(RESTRICTED)})
        assert refusal(pod) == ("reserved-container-name",)


def test_a_rules_container_of_ones_own_is_refused_without_redirect() -> None:
    pod = good_pod()
    pod["spec"]["initContainers"].insert(0, {"name": n.NETRULES_CONTAINER, "image": "x"})
    assert refusal(pod, session(enforcement=n.ENFORCEMENT_PROXY)) == ("reserved-container-name",)


@pytest.mark.parametrize(
    ("change", "refused"),
    [
        (lambda spec: spec["initContainers"][0].update(image="attacker.example/rules:1"), True),
        (lambda spec: spec["initContainers"][0]["args"].append("--allow-metadata"), True),
        (lambda spec: spec["initContainers"].pop(0), True),
        (lambda spec: spec["containers"][0].update(image="agent:2"), False),
    ],
)
def test_an_update_may_not_change_the_rules_container(change: Change, refused: bool) -> None:
    old = injected(good_pod())
    new = copy.deepcopy(old)
    change(new["spec"])
    subj = rules.Subject(new, "agents", "claude", None, old=old)
    assert [f.rule.id for f in rules.update_findings(subj)] == (["proxy-container-changed"] if refused else [])


def test_the_commands_accept_what_the_operator_injects() -> None:
    """The interfaces between the operator and the sidecar image: the rules command renders a ruleset
    from the init container's args, the sidecar's parser takes the redirect flags."""
    from oshu_sidecar.config import load_config

    out = injected(good_pod(), session(redirect=RedirectSpec(("10.0.0.0/8",), (5432,), True)))
    netrules_c, sidecar = out["spec"]["initContainers"][:2]
    argv = [*netrules_c["args"], "--dns-server", "10.96.0.10", "--dry-run"]
    dry = subprocess.run(
        [sys.executable, "-m", "oshu_sidecar.netrules", *argv], capture_output=True, text=True, timeout=60
    )
    assert dry.returncode == 0, dry.stderr
    script = dry.stdout
    for expected in ("skuid 65532", f"redirect to :{n.SIDECAR_TRANSPARENT_PORT}", "10.0.0.0/8", "5432"):
        assert expected in script, expected
    assert "169.254.169.254" not in script  # --allow-metadata reached it
    parsed = load_config(sidecar["args"], environ={})
    port = n.SIDECAR_TRANSPARENT_PORT
    assert set(parsed.transparent_listen) == {("127.0.0.1", port), ("::1", port)}
    assert parsed.require_redirect is True
