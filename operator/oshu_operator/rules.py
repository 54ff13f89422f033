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
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import names as n

KIND_INIT = "initContainers"
KIND_APP = "containers"
KIND_EPHEMERAL = "ephemeralContainers"
#: Every list of containers a pod spec has; every container rule sees all of them.
CONTAINER_KINDS = (KIND_INIT, KIND_APP, KIND_EPHEMERAL)
_KIND_WORD = {KIND_INIT: "init container", KIND_APP: "container", KIND_EPHEMERAL: "ephemeral container"}
#: Volumes only the proxy may use: the session Secret (session file, CA key) and its scratch space.
PROXY_VOLUMES = (n.VOLUME_SESSION, n.VOLUME_TMP)


# --- the session, as admission sees it -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionView:
    """What admission needs from a VaultSession: tokens and names, no real values."""

    namespace: str
    name: str
    uid: str
    env_names: tuple[str, ...]
    tokens: Mapping[str, str]
    source_secrets: Mapping[str, str]  # real Secret name -> one env name it backs
    phase: str | None = None
    message: str | None = None
    deleting: bool = False

    @property
    def session_secret(self) -> str:
        return n.session_secret_name(self.name)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> SessionView:
        meta = body.get("metadata") or {}
        spec = body.get("spec") or {}
        status = body.get("status") or {}
        entries = [s for s in spec.get("secrets") or [] if isinstance(s, Mapping) and isinstance(s.get("name"), str)]
        sources: dict[str, str] = {}
        for s in entries:
            ref = s.get("secretKeyRef") or {}
            if isinstance(ref.get("name"), str):
                sources.setdefault(ref["name"], s["name"])
        cond: Mapping[str, Any] = next(
            (c for c in status.get("conditions") or [] if c.get("type") == n.CONDITION_READY), {}
        )
        return cls(
            namespace=meta.get("namespace", ""),
            name=meta.get("name", ""),
            uid=meta.get("uid", ""),
            env_names=tuple(s["name"] for s in entries),
            tokens=dict(status.get("tokens") or {}),
            source_secrets=sources,
            phase=status.get("phase"),
            message=cond.get("message"),
            deleting=bool(meta.get("deletionTimestamp")),
        )

    def check_usable(self) -> None:
        """Raise Refused (deleted, expired, invalid) or NotReady (tokens not minted yet)."""
        check_session(self.namespace, self.name, self)


# --- what the rules look at ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Container:
    kind: str  # one of CONTAINER_KINDS
    name: str
    body: Mapping[str, Any]

    @property
    def label(self) -> str:
        return f"{_KIND_WORD[self.kind]} {self.name}"

    @property
    def is_proxy(self) -> bool:
        """The injected sidecar (an init container of the reserved name; apply() replaces any other)."""
        return self.kind == KIND_INIT and self.name == n.SIDECAR_CONTAINER


@dataclass(frozen=True, slots=True)
class SecretRef:
    secret: str
    where: str  # e.g. "volume steal (csi.nodePublishSecretRef)", "ephemeral container debug envFrom"
    container: Container | None = None
    volume: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class VolumeUse:
    container: Container
    volume: str
    how: str  # e.g. "mounts volume x at /steal"
    path: str | None = None  # mountPath, for mounts


@dataclass(frozen=True, slots=True)
class Subject:
    """A pod and the session it opts into: everything a rule may look at."""

    pod: Mapping[str, Any]
    namespace: str
    session_name: str
    session: SessionView | None  # None: unknown (e.g. deleted); every Secret then counts as a real key's
    injected_volumes: Sequence[Mapping[str, Any]] = ()  # what the reserved volume names must hold
    old: Mapping[str, Any] | None = None  # the pod before an update (None at creation)

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
class Hit:
    """One violation of a rule: where it is, and the container responsible (None: the pod)."""

    where: str
    container: Container | None = None


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


# --- walking a pod spec ----------------------------------------------------------------------


def containers(spec: Mapping[str, Any]) -> Iterator[Container]:
    """Every container of every kind, the injected proxy included (rules exempt it by `is_proxy`)."""
    for kind in CONTAINER_KINDS:
        for c in spec.get(kind) or []:
            if isinstance(c, Mapping):
                yield Container(kind, str(c.get("name", "")), c)


def volume_secret_names(source: Mapping[str, Any], path: str = "") -> Iterator[tuple[str, str]]:
    """(field path, Secret name) for every field of a volume that names a Secret.

    Walks the whole volume by the API's naming conventions rather than a list of volume types,
    so sources added later are covered too: `secretName` (secret, azureFile), `*secretRef` /
    `*SecretRef` objects (csi.nodePublishSecretRef, cephfs, cinder, flexVolume, iscsi, rbd,
    scaleIO, storageos), and `secret: {name}` (projected sources).
    """
    for key, value in source.items():
        here = f"{path}.{key}" if path else key
        if key == "secretName" and isinstance(value, str):
            yield here, value
        elif isinstance(value, Mapping):
            if (key.lower().endswith("secretref") or key == "secret") and isinstance(value.get("name"), str):
                yield f"{here}.name", value["name"]
            yield from volume_secret_names(value, here)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, Mapping):
                    yield from volume_secret_names(item, f"{here}[{i}]")


def secret_refs(spec: Mapping[str, Any]) -> Iterator[SecretRef]:
    """Every reference to a Secret in a pod spec: volumes, imagePullSecrets, env and envFrom of every container."""
    for vol in spec.get("volumes") or []:
        source = {k: v for k, v in vol.items() if k != "name"}
        for where, name in volume_secret_names(source):
            yield SecretRef(name, f"volume {vol.get('name')} ({where})", volume=vol)
    for ref in spec.get("imagePullSecrets") or []:
        if isinstance(ref, Mapping) and isinstance(ref.get("name"), str):
            yield SecretRef(ref["name"], "imagePullSecrets")
    for c in containers(spec):
        for e in c.body.get("env") or []:
            secret = ((e.get("valueFrom") or {}).get("secretKeyRef") or {}).get("name")
            if isinstance(secret, str):
                yield SecretRef(secret, f"{c.label} env {e.get('name')} (valueFrom.secretKeyRef)", container=c)
        for ef in c.body.get("envFrom") or []:
            secret = (ef.get("secretRef") or {}).get("name")
            if isinstance(secret, str):
                yield SecretRef(secret, f"{c.label} envFrom (secretRef)", container=c)


def volume_uses(spec: Mapping[str, Any]) -> Iterator[VolumeUse]:
    """Every use of a volume by name, by any container: mounts, block devices and env files."""
    for c in containers(spec):
        for m in c.body.get("volumeMounts") or []:
            path = m.get("mountPath")
            yield VolumeUse(
                c,
                str(m.get("name")),
                f"mounts volume {m.get('name')} at {path}",
                path if isinstance(path, str) else None,
            )
        for d in c.body.get("volumeDevices") or []:
            yield VolumeUse(c, str(d.get("name")), f"uses volume {d.get('name')} as device {d.get('devicePath')}")
        for e in c.body.get("env") or []:
            ref = (e.get("valueFrom") or {}).get("fileKeyRef") or {}
            if isinstance(ref.get("volumeName"), str):
                yield VolumeUse(c, ref["volumeName"], f"reads env {e.get('name')} from volume {ref['volumeName']}")


def injection_targets(pod: Mapping[str, Any]) -> tuple[list[str], list[str] | None]:
    """(containers to inject, names the containers annotation gives that match none; None without it)."""
    spec = pod.get("spec") or {}
    app = [str(c.get("name")) for c in spec.get(KIND_APP) or []]
    init = [str(c.get("name")) for c in spec.get(KIND_INIT) or [] if c.get("name") != n.SIDECAR_CONTAINER]
    raw = ((pod.get("metadata") or {}).get("annotations") or {}).get(n.ANNOTATION_CONTAINERS)
    if raw is None:
        return app, None
    named = [x.strip() for x in str(raw).split(",") if x.strip()]
    return named, [t for t in named if t not in app and t not in init]


def _is_ours(subject: Subject, vol: Mapping[str, Any] | None) -> bool:
    return vol is not None and any(vol == mine for mine in subject.injected_volumes)


def _volumes_by_name(spec: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {str(v.get("name")): v for v in spec.get("volumes") or [] if isinstance(v, Mapping)}


# --- the rules -----------------------------------------------------------------------------


def _session_missing(s: Subject) -> Iterator[Hit]:
    if s.session is None:
        yield Hit(s.where)


def _session_deleting(s: Subject) -> Iterator[Hit]:
    if s.session is not None and s.session.deleting:
        yield Hit(s.where)


def _session_expired(s: Subject) -> Iterator[Hit]:
    if s.session is not None and not s.session.deleting and s.session.phase == n.PHASE_EXPIRED:
        yield Hit(s.where)


def _session_invalid(s: Subject) -> Iterator[Hit]:
    if s.session is not None and not s.session.deleting and s.session.phase == n.PHASE_INVALID:
        yield Hit(f"{s.where} is invalid: {s.session.message}")


def _session_not_ready(s: Subject) -> Iterator[Hit]:
    if s.session is None or s.session.deleting or s.session.phase in (n.PHASE_EXPIRED, n.PHASE_INVALID):
        return
    missing = [name for name in s.session.env_names if name not in s.session.tokens]
    if missing:
        yield Hit(f"{s.where} has no sealed token yet for {', '.join(missing)}")


def _opt_in_mismatch(s: Subject) -> Iterator[Hit]:
    meta = s.pod.get("metadata") or {}
    label = (meta.get("labels") or {}).get(n.LABEL_SESSION)
    annotation = (meta.get("annotations") or {}).get(n.ANNOTATION_SESSION)
    if label and annotation and label != annotation:
        yield Hit(f"label {n.LABEL_SESSION}={label!r} and annotation {n.ANNOTATION_SESSION}={annotation!r}")


def _containers_annotation_unknown(s: Subject) -> Iterator[Hit]:
    named, unknown = injection_targets(s.pod)
    if unknown is None:
        return
    if unknown or not named:
        yield Hit(f"annotation {n.ANNOTATION_CONTAINERS} names {', '.join(unknown) or 'nothing'}")


def _flag(key: str) -> Callable[[Subject], Iterator[Hit]]:
    def check(s: Subject) -> Iterator[Hit]:
        if s.spec.get(key):
            yield Hit(f"{key}: true")

    return check


def _reserved_container_name(s: Subject) -> Iterator[Hit]:
    for c in containers(s.spec):
        if c.name == n.SIDECAR_CONTAINER and c.kind != KIND_INIT:
            yield Hit(c.label, c)


def _reserved_volume_name(s: Subject) -> Iterator[Hit]:
    ours = {str(v["name"]): v for v in s.injected_volumes}
    for vol in s.spec.get("volumes") or []:
        want = ours.get(str(vol.get("name")))
        if want is not None and vol != want:
            yield Hit(f"volume {vol.get('name')}")


def _proxy_volume_use(s: Subject) -> Iterator[Hit]:
    for use in volume_uses(s.spec):
        if use.volume in PROXY_VOLUMES and not use.container.is_proxy:
            yield Hit(f"{use.container.label} {use.how}", use.container)


def _sensitive(s: Subject, secret: str) -> bool:
    """A session Secret, or a Secret behind one of the session's secrets (any Secret if the session is unknown)."""
    return secret.startswith(n.SESSION_SECRET_PREFIX) or s.session is None or secret in s.session.source_secrets


def _secret_volume_use(s: Subject) -> Iterator[Hit]:
    """By resolution (use -> volume -> Secret): sees what a use becomes once the volumes are final,
    and catches a debug container using a volume whose Secret joined the session after the pod."""
    vols = _volumes_by_name(s.spec)
    for use in volume_uses(s.spec):
        vol = vols.get(use.volume)
        if vol is None or use.container.is_proxy or (vol.get("name") == n.VOLUME_CA and _is_ours(s, vol)):
            continue
        source = {k: v for k, v in vol.items() if k != "name"}
        secrets = sorted({name for _, name in volume_secret_names(source) if _sensitive(s, name)})
        if secrets:
            yield Hit(f"{use.container.label} {use.how}, which holds Secret {', '.join(secrets)}", use.container)


def _session_secret_reference(s: Subject) -> Iterator[Hit]:
    for ref in secret_refs(s.spec):
        if ref.secret.startswith(n.SESSION_SECRET_PREFIX) and not _is_ours(s, ref.volume):
            yield Hit(f"{ref.where} references the session Secret {ref.secret}", ref.container)


def _source_secret_reference(s: Subject) -> Iterator[Hit]:
    for ref in secret_refs(s.spec):
        if ref.secret.startswith(n.SESSION_SECRET_PREFIX):
            continue  # the rule above
        if s.session is None:
            yield Hit(
                f"{ref.where} references Secret {ref.secret}, and {s.where} cannot be read to tell "
                "whether it holds one of the session's real keys",
                ref.container,
            )
        elif ref.secret in s.session.source_secrets:
            yield Hit(
                f"{ref.where} references Secret {ref.secret}, which holds the real value behind "
                f"{s.session.source_secrets[ref.secret]} in {s.where}",
                ref.container,
            )


def _ca_mount_path(s: Subject) -> Iterator[Hit]:
    for use in volume_uses(s.spec):
        if use.path is None or use.volume == n.VOLUME_CA:
            continue
        path = posixpath.normpath("/" + use.path.lstrip("/"))
        if path == n.CA_MOUNT_DIR or path.startswith(n.CA_MOUNT_DIR + "/"):
            yield Hit(f"{use.container.label} {use.how}", use.container)


def _session_env_set(s: Subject) -> Iterator[Hit]:
    if s.session is None:
        return
    targets, _ = injection_targets(s.pod)
    for c in containers(s.spec):
        if c.kind == KIND_EPHEMERAL or c.is_proxy or c.name not in targets:
            continue
        for e in c.body.get("env") or []:
            var = e.get("name")
            if var in s.session.tokens and (e.get("valueFrom") is not None or e.get("value") != s.session.tokens[var]):
                yield Hit(f"{c.label} sets {var} itself, but {s.where} provides it as a sealed token", c)


def _proxy_container_changed(s: Subject) -> Iterator[Hit]:
    """An update may change container images: the proxy's would run any image with the session mounted."""
    if s.old is None:
        return
    before = next((c for c in containers(s.old.get("spec") or {}) if c.is_proxy), None)
    after = next((c for c in containers(s.spec) if c.is_proxy), None)
    if before is not None and (after is None or after.body != before.body):
        changed = sorted(
            k
            for k in {*before.body, *(after.body if after else {})}
            if (after.body if after else {}).get(k) != before.body.get(k)
        )
        yield Hit(f"an update changes the {n.SIDECAR_CONTAINER} init container ({', '.join(changed)})", after or before)


def _ephemeral_targets_proxy(s: Subject) -> Iterator[Hit]:
    for c in containers(s.spec):
        if c.kind == KIND_EPHEMERAL and c.body.get("targetContainerName") == n.SIDECAR_CONTAINER:
            yield Hit(f"{c.label} targets the {n.SIDECAR_CONTAINER} container", c)


#: The session's state: checked first, before the pod spec.
SESSION_RULES: tuple[Rule, ...] = (
    Rule(
        "session-missing",
        "the pod names a VaultSession that does not exist",
        f"does not exist; create it first (kubectl get {n.SHORT_NAMES[0]} lists the sessions)",
        _session_missing,
    ),
    Rule(
        "session-deleting", "the session is being deleted", "is being deleted; its keys are revoked", _session_deleting
    ),
    Rule(
        "session-expired",
        "the session has expired",
        "has expired; create a new session or extend its spec.ttl",
        _session_expired,
    ),
    Rule("session-invalid", "the session's spec is Invalid", "; fix the VaultSession's spec", _session_invalid),
    Rule(
        "session-not-ready",
        "the session's tokens are not minted within `--token-wait`",
        "; retry in a few seconds",
        _session_not_ready,
    ),
)

#: The pod spec: run on the pod as submitted, on the pod as injected, and on ephemeral containers.
SPEC_RULES: tuple[Rule, ...] = (
    Rule(
        "opt-in-mismatch",
        "the session label and annotation name different sessions",
        "name different sessions; set one, or make them agree",
        _opt_in_mismatch,
    ),
    Rule(
        "containers-annotation-unknown",
        "the containers annotation names no container of the pod",
        "; it must name app or init containers of this pod",
        _containers_annotation_unknown,
    ),
    Rule(
        "shared-process-namespace",
        "`shareProcessNamespace: true`",
        "is not allowed with a VaultSession: app containers could read the proxy's memory, and with it the real keys",
        _flag("shareProcessNamespace"),
    ),
    Rule(
        "host-pid",
        "`hostPID: true`",
        "is not allowed with a VaultSession: app containers could read the proxy's memory, and with it the real keys",
        _flag("hostPID"),
    ),
    Rule(
        "host-network",
        "`hostNetwork: true`",
        "is not allowed with a VaultSession: the proxy's loopback port would be the node's, so every process and "
        "host-network pod on the node could use the session's keys",
        _flag("hostNetwork"),
    ),
    Rule(
        "reserved-container-name",
        f"an app or ephemeral container named `{n.SIDECAR_CONTAINER}`",
        f"uses the name {n.SIDECAR_CONTAINER}, which is reserved for the oshu-vault proxy; rename it",
        _reserved_container_name,
    ),
    Rule(
        "reserved-volume-name",
        "a volume named `oshu-vault-session`, `oshu-vault-ca` or `oshu-vault-tmp` with other content than the injection's",
        "uses a name reserved for the oshu-vault injection; rename it",
        _reserved_volume_name,
    ),
    Rule(
        "proxy-volume-use",
        f"any container but the proxy using `{n.VOLUME_SESSION}` or `{n.VOLUME_TMP}` by name (mount, device, "
        "env file), whether or not the volume exists yet",
        ", which is reserved for the oshu-vault proxy: the session volume holds the real keys and the CA key; "
        "only the proxy may use it",
        _proxy_volume_use,
    ),
    Rule(
        "secret-volume-use",
        "any container but the proxy using (mount, device, env file) a volume that holds a session Secret or a "
        "Secret behind the session's secrets",
        ", which holds real keys; only the oshu-vault proxy may have them",
        _secret_volume_use,
    ),
    Rule(
        "session-secret-reference",
        f"any reference to a session Secret (`{n.SESSION_SECRET_PREFIX}*`: volume source of any type, env, envFrom, "
        "imagePullSecrets) other than the injected volumes",
        ", which holds real keys; only the oshu-vault proxy may read it",
        _session_secret_reference,
    ),
    Rule(
        "source-secret-reference",
        "any reference (volume source of any type, env, envFrom, imagePullSecrets) to a Secret behind one of the "
        "session's secrets",
        "; that would hand the agent the real key. Remove the reference: the pod gets a sealed token instead",
        _source_secret_reference,
    ),
    Rule(
        "ca-mount-path",
        f"a mount at or under `{n.CA_MOUNT_DIR}` of anything but the session CA",
        ", inside the path reserved for the session CA; mount it elsewhere",
        _ca_mount_path,
    ),
    Rule(
        "session-env-set",
        "an injected container setting one of the session's secret names itself",
        "; remove it from the pod spec",
        _session_env_set,
    ),
    Rule(
        "proxy-container-changed",
        f"an update of an injected pod changing the `{n.SIDECAR_CONTAINER}` container "
        "(e.g. its image: it runs with the session mounted)",
        "; the proxy runs with the session's real keys mounted, so it stays as injected. Recreate the pod instead",
        _proxy_container_changed,
    ),
    Rule(
        "ephemeral-targets-proxy",
        f"an ephemeral (debug) container targeting `{n.SIDECAR_CONTAINER}`",
        ", whose memory holds the real keys; debug an app container instead",
        _ephemeral_targets_proxy,
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
