"""Admission rules: one registry of refusals, each a stable id, a pure check and a message.

Why one registry: checks written inline for pods and copied for debug containers drift apart
(the ephemeral copy once looked at mounts only, so `envFrom` of the session Secret went
through). Here every rule sees the same view of a pod: every container of every kind (app,
init, ephemeral), every reference to a Secret (each volume source field that can name one,
env `valueFrom`, `envFrom`, `imagePullSecrets`) and every use of a volume by name (mounts,
devices, env files), whether or not a volume of that name exists yet. The webhook runs the
rules on the pod as submitted and again on the pod as it will be stored (after injection);
an ephemeral-container update runs the same rules and keeps what its new containers did.

Rule ids are stable: they label `oshu_vault_admission_refusals_total`, end every refusal
message (`[rule-id]`), and docs/operator.md lists them (a test compares that table with
`RULES`).

Here: the pod as the rules see it, the registry and its evaluation. The session as admission
sees it is in session_view.py, the pod walkers in podspec.py, one check function per rule in
rule_checks.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import names as n
from . import rule_checks as checks
from .podspec import KIND_EPHEMERAL, Hit, injection_targets
from .session_view import SessionView

__all__ = [
    "BY_ID",
    "KIND_EPHEMERAL",
    "MAX_FINDINGS_SHOWN",
    "RULES",
    "SESSION_RULES",
    "SPEC_RULES",
    "Finding",
    "Hit",
    "NotReady",
    "Refused",
    "Rule",
    "SessionView",
    "Subject",
    "check_session",
    "check_spec",
    "ephemeral_findings",
    "evaluate",
    "injection_targets",
    "update_findings",
]


# --- what the rules look at ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Subject:
    """A pod and the session it opts into: everything a rule may look at."""

    pod: Mapping[str, Any]
    namespace: str
    session_name: str
    session: SessionView | None  # None: unknown (e.g. deleted); every Secret then counts as a real key's
    injected_volumes: Sequence[Mapping[str, Any]] = ()  # what the reserved volume names must hold
    old: Mapping[str, Any] | None = None  # the pod before an update (None at creation)
    enforcement: str = n.ENFORCEMENT_PROXY  # redirect: the rules that keep agents inside the redirect apply

    @property
    def spec(self) -> Mapping[str, Any]:
        return self.pod.get("spec") or {}

    @property
    def session_secret(self) -> str:
        return n.session_secret_name(self.session_name)

    @property
    def where(self) -> str:
        return f"VaultSession {self.namespace}/{self.session_name}"


@dataclass(frozen=True, slots=True)
class Rule:
    id: str  # stable: metric label, message suffix, docs table, tests
    summary: str  # what it refuses, one line (the docs table)
    message: str  # follows the hit's `where`: why, and what to do
    check: Callable[[Subject], Iterable[Hit]] = field(repr=False)


@dataclass(frozen=True, slots=True)
class Finding:
    rule: Rule
    hit: Hit

    @property
    def text(self) -> str:
        sep = "" if self.rule.message[:1] in (",", ";") else " "
        return f"{self.hit.where}{sep}{self.rule.message} [{self.rule.id}]"


class Refused(Exception):
    """The pod must not be admitted; `findings` say which rules and where."""

    def __init__(self, findings: Sequence[Finding]) -> None:
        self.findings = tuple(findings)
        super().__init__(message(self.findings))

    @property
    def rule_ids(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f.rule.id for f in self.findings))


class NotReady(Refused):
    """The session exists but cannot be injected yet (tokens not minted): retry, then refuse."""


#: At most this many findings are spelled out in one refusal; the rest are counted.
MAX_FINDINGS_SHOWN = 5


def message(findings: Sequence[Finding]) -> str:
    shown = [f.text for f in findings[:MAX_FINDINGS_SHOWN]]
    rest = len(findings) - len(shown)
    return "; ".join(shown) + (f"; and {rest} more" if rest > 0 else "")


# --- the registry ---------------------------------------------------------------------------


#: The session's state: checked first, before the pod spec.
SESSION_RULES: tuple[Rule, ...] = (
    Rule(
        "session-missing",
        "the pod names a VaultSession that does not exist",
        f"does not exist; create it first (kubectl get {n.SHORT_NAMES[0]} lists the sessions)",
        checks.session_missing,
    ),
    Rule(
        "session-deleting",
        "the session is being deleted",
        "is being deleted; its keys are revoked",
        checks.session_deleting,
    ),
    Rule(
        "session-expired",
        "the session has expired",
        "has expired; create a new session or extend its spec.ttl",
        checks.session_expired,
    ),
    Rule("session-invalid", "the session's spec is Invalid", "; fix the VaultSession's spec", checks.session_invalid),
    Rule(
        "session-not-ready",
        "the session's tokens are not minted within `--token-wait`",
        "; retry in a few seconds",
        checks.session_not_ready,
    ),
)

#: The pod spec: run on the pod as submitted, on the pod as injected, and on ephemeral containers.
SPEC_RULES: tuple[Rule, ...] = (
    Rule(
        "opt-in-mismatch",
        "the session label and annotation name different sessions",
        "name different sessions; set one, or make them agree",
        checks.opt_in_mismatch,
    ),
    Rule(
        "containers-annotation-unknown",
        "the containers annotation names no container of the pod",
        "; it must name app or init containers of this pod",
        checks.containers_annotation_unknown,
    ),
    Rule(
        "shared-process-namespace",
        "`shareProcessNamespace: true`",
        "is not allowed with a VaultSession: app containers could read the proxy's memory, and with it the real keys",
        checks.flag("shareProcessNamespace"),
    ),
    Rule(
        "host-pid",
        "`hostPID: true`",
        "is not allowed with a VaultSession: app containers could read the proxy's memory, and with it the real keys",
        checks.flag("hostPID"),
    ),
    Rule(
        "host-network",
        "`hostNetwork: true`",
        "is not allowed with a VaultSession: the proxy's loopback port would be the node's, so every process and "
        "host-network pod on the node could use the session's keys",
        checks.flag("hostNetwork"),
    ),
    Rule(
        "reserved-container-name",
        f"an app or ephemeral container named `{n.SIDECAR_CONTAINER}` or `{n.NETRULES_CONTAINER}`, or an init "
        f"container named `{n.NETRULES_CONTAINER}` without `enforcement: redirect`",
        "uses a name reserved for the oshu-vault injection; rename it",
        checks.reserved_container_name,
    ),
    Rule(
        "reserved-volume-name",
        "a volume named `oshu-vault-session`, `oshu-vault-ca` or `oshu-vault-tmp` with other content than the injection's",
        "uses a name reserved for the oshu-vault injection; rename it",
        checks.reserved_volume_name,
    ),
    Rule(
        "proxy-volume-use",
        f"any container but the proxy using `{n.VOLUME_SESSION}` or `{n.VOLUME_TMP}` by name (mount, device, "
        "env file), whether or not the volume exists yet",
        ", which is reserved for the oshu-vault proxy: the session volume holds the real keys and the CA key; "
        "only the proxy may use it",
        checks.proxy_volume_use,
    ),
    Rule(
        "secret-volume-use",
        "any container but the proxy using (mount, device, env file) a volume that holds a session Secret or a "
        "Secret behind the session's secrets",
        ", which holds real keys; only the oshu-vault proxy may have them",
        checks.secret_volume_use,
    ),
    Rule(
        "session-secret-reference",
        f"any reference to a session Secret (`{n.SESSION_SECRET_PREFIX}*`: volume source of any type, env, envFrom, "
        "imagePullSecrets) other than the injected volumes",
        ", which holds real keys; only the oshu-vault proxy may read it",
        checks.session_secret_reference,
    ),
    Rule(
        "source-secret-reference",
        "any reference (volume source of any type, env, envFrom, imagePullSecrets) to a Secret behind one of the "
        "session's secrets",
        "; that would hand the agent the real key. Remove the reference: the pod gets a sealed token instead",
        checks.source_secret_reference,
    ),
    Rule(
        "ca-mount-path",
        f"a mount at or under `{n.CA_MOUNT_DIR}` of anything but the session CA",
        ", inside the path reserved for the session CA; mount it elsewhere",
        checks.ca_mount_path,
    ),
    Rule(
        "session-env-set",
        "an injected container setting one of the session's secret names itself",
        "; remove it from the pod spec",
        checks.session_env_set,
    ),
    Rule(
        "proxy-container-changed",
        f"an update of an injected pod changing the `{n.SIDECAR_CONTAINER}` or `{n.NETRULES_CONTAINER}` container "
        "(e.g. its image: one runs with the session mounted, the other as root with NET_ADMIN)",
        "; the injected containers hold the real keys or set the redirect rules, so they stay as injected. "
        "Recreate the pod instead",
        checks.proxy_container_changed,
    ),
    Rule(
        "ephemeral-targets-proxy",
        f"an ephemeral (debug) container targeting `{n.SIDECAR_CONTAINER}`",
        ", whose memory holds the real keys; debug an app container instead",
        checks.ephemeral_targets_proxy,
    ),
    # enforcement: redirect (any container kind but the two injected ones)
    Rule(
        "redirect-capabilities",
        "under `enforcement: redirect`, a container adding `NET_ADMIN`, `NET_RAW`, `SYS_ADMIN` or `ALL`",
        "; with them it could change or go around the redirect rules. Remove them",
        checks.redirect_capabilities,
    ),
    Rule(
        "redirect-privileged",
        "under `enforcement: redirect`, a privileged container",
        "; a privileged container could change the redirect rules. Remove privileged: true",
        checks.redirect_privileged,
    ),
    Rule(
        "redirect-run-as-user",
        f"under `enforcement: redirect`, a container whose effective `runAsUser` is unset or {n.SIDECAR_UID}",
        f"; the redirect rules let uid {n.SIDECAR_UID} (the proxy's) out directly. Set runAsUser (pod or "
        "container) to another uid",
        checks.redirect_run_as_user,
    ),
    Rule(
        "redirect-uid-switch",
        "under `enforcement: redirect`, a container without `allowPrivilegeEscalation: false`, or one keeping "
        "`SETUID` (added, or root without dropping it)",
        f"; it could switch to uid {n.SIDECAR_UID}, which the redirect rules let out directly. Set "
        "allowPrivilegeEscalation: false and drop ALL capabilities",
        checks.redirect_uid_switch,
    ),
)

RULES: tuple[Rule, ...] = SESSION_RULES + SPEC_RULES
BY_ID: Mapping[str, Rule] = {r.id: r for r in RULES}
assert len(BY_ID) == len(RULES), "rule ids must be unique"


def evaluate(subject: Subject, rules: Iterable[Rule] | None = None) -> list[Finding]:
    """Every violation of `rules` (default: SPEC_RULES) by `subject`, in registry order. Pure."""
    return [Finding(rule, hit) for rule in (SPEC_RULES if rules is None else rules) for hit in rule.check(subject)]


def update_findings(subject: Subject) -> list[Finding]:
    """An update of an injected pod (not a subresource): only what an update can change is judged."""
    return evaluate(subject, [BY_ID["proxy-container-changed"]])


def ephemeral_findings(subject: Subject, added: Iterable[str]) -> list[Finding]:
    """The spec rules' findings about the ephemeral containers named `added` (those an update adds)."""
    names = set(added)
    return [
        f
        for f in evaluate(subject)
        if f.hit.container is not None and f.hit.container.kind == KIND_EPHEMERAL and f.hit.container.name in names
    ]


def check_session(namespace: str, name: str, session: SessionView | None) -> None:
    """Raise Refused for a session the pod cannot use, NotReady for one whose tokens are not minted yet."""
    subject = Subject(pod={}, namespace=namespace, session_name=name, session=session)
    findings = evaluate(subject, SESSION_RULES)
    final = [f for f in findings if f.rule.id != "session-not-ready"]
    if final:
        raise Refused(final)
    if findings:
        raise NotReady(findings)


def check_spec(subject: Subject) -> None:
    findings = evaluate(subject)
    if findings:
        raise Refused(findings)
