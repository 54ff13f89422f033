"""The reconciler's decisions as pure functions: what a VaultSession's Secret and status should be.

`Reconciler` reads (the VaultSession, its session Secret, the Secrets it references), asks
`plan()` what they should become and writes that; revocation goes through `revocation_step()`.
Every choice between the reads and the writes is made here, so it is tested table-driven
without an API server (tests/operator/test_reconcile_plan.py); the real-apiserver tests
(tests/operator/test_reconcile.py) cover the calls. Minting a session CA is pure as well (a
new key pair), so it happens here too. Messages name secrets and keys, never values.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from oshu_contract.hosts import HostPattern
from oshu_contract.kinds import Kind
from oshu_contract.session import (
    Session,
    format_time,
    new_session,
    parse_time,
    recorded_tokens,
)

from . import material
from . import names as n
from .config import OperatorConfig, revocation_grace_problem
from .resolve import Resolved, resolve, token_names
from .spec import SessionSpec, SpecError, check_session_name, parse_spec
from .status import Outcome, ready_condition

#: Added to the delay until expiry, so the reconcile woken for it finds the session expired.
EXPIRY_MARGIN = 0.05

Obj = Mapping[str, Any]
WriteAction = Literal["create", "replace"]


@dataclass(frozen=True, slots=True)
class Plan:
    """What one reconcile converges to: the session Secret, the status outcome, the next wake-ups."""

    outcome: Outcome
    secret: dict[str, Any]  # the desired session Secret, without resourceVersion
    ca_minted: bool
    expires_at: datetime | None
    #: Ready or Pending: wake again at expiry and after the resync interval (Invalid and Expired wait
    #: for a change of the VaultSession).
    schedule: bool


@dataclass(frozen=True, slots=True)
class RevocationStep:
    """One step of revoking a session: mark its Secret, wait out the grace, delete it."""

    marked: dict[str, Any] | None  # the Secret to write: revoked session file, revoked-at annotation
    remaining: float  # seconds to wait before the Secret may go (<= 0: now)
    delete: bool  # a Secret exists and its grace is over


def session_id(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def owned_by(secret: Obj, uid: str) -> bool:
    return any(o.get("uid") == uid for o in (secret.get("metadata") or {}).get("ownerReferences") or [])


def reusable(existing: Obj | None, uid: str) -> Obj | None:
    """The session Secret as far as it may be reused: one left over from an earlier session of the
    same name (another uid) keeps its metadata (for the replace) but none of its data."""
    if existing is not None and not owned_by(existing, uid):
        return dict(existing, data={})
    return existing


def revoked_message(secret_name: str, grace: timedelta) -> str:
    """The Revoked event: when the Secret goes, and a warning when that may beat the kubelet."""
    problem = revocation_grace_problem(grace)
    return f"session revoked; Secret {secret_name} is deleted after {int(grace.total_seconds())}s" + (
        f" (warning: {problem})" if problem else ""
    )


# --- what to read ---------------------------------------------------------------------------


def _parse(body: Obj) -> SessionSpec | SpecError:
    try:
        check_session_name(body["metadata"]["name"])
        return parse_spec(body.get("spec"))
    except SpecError as e:
        return e


def _expiry(body: Obj, spec: SessionSpec) -> datetime | None:
    if spec.ttl is None:
        return None
    return parse_time(body["metadata"]["creationTimestamp"], "creationTimestamp") + spec.ttl


def secrets_to_read(body: Obj, now: datetime) -> list[str]:
    """The referenced Secrets `plan()` needs, in spec order: none for an invalid or expired session."""
    spec = _parse(body)
    if isinstance(spec, SpecError):
        return []
    expires_at = _expiry(body, spec)
    if expires_at is not None and now >= expires_at:
        return []
    return list(dict.fromkeys(s.secret_name for s in spec.secrets))


# --- the plan ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Inputs:
    body: Obj
    existing: Obj | None  # already through reusable()
    now: datetime
    config: OperatorConfig

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return str(self.body["metadata"]["namespace"])

    @property
    def status(self) -> Obj:
        return self.body.get("status") or {}


def desired_secret(body: Obj, data: dict[str, str]) -> dict[str, Any]:
    """The session Secret: typed, labelled, owned (garbage-collected) by its VaultSession."""
    meta = body["metadata"]
    name = meta["name"]
    owner = {"apiVersion": n.API_VERSION, "kind": n.KIND, "name": name, "uid": meta["uid"], "controller": True}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": n.SESSION_SECRET_TYPE,
        "metadata": {
            "name": n.session_secret_name(name),
            "namespace": meta["namespace"],
            "labels": {n.LABEL_MANAGED_BY: n.MANAGED_BY, n.LABEL_SESSION_OWNER: name},
            "ownerReferences": [owner],
        },
        "data": data,
    }


def _secret(
    inp: _Inputs,
    session: Session,
    hosts: tuple[HostPattern, ...],
    expires_at: datetime | None,
    files: Mapping[str, bytes] | None = None,
) -> tuple[dict[str, Any], material.CAState]:
    """The desired Secret around `session` (and the agent `files`), with the stored CA kept or a new
    one minted."""
    ca = material.choose_ca(
        material.stored_ca((inp.existing or {}).get("data")),
        common_name=f"oshu-vault session {inp.namespace}/{inp.name}",
        hosts=hosts,
        expires_at=expires_at,
        now=inp.now,
        default_validity=inp.config.ca_validity,
    )
    data = material.secret_data(session.to_json(), ca.pair, inp.config.sidecar.upstream_ca_pem, files)
    return desired_secret(inp.body, data), ca


def _invalid(inp: _Inputs, error: SpecError) -> Plan:
    """An unusable spec: a session file with no secrets; the status keeps the tokens it had."""
    tokens = {k: v for k, v in (inp.status.get("tokens") or {}).items() if isinstance(v, str)}
    declared = len((inp.body.get("spec") or {}).get("secrets") or [])
    session = Session(session=session_id(inp.namespace, inp.name), secrets=(), revoked=False)
    secret, ca = _secret(inp, session, (), None)
    outcome = Outcome(
        n.PHASE_INVALID,
        "InvalidSpec",
        str(error),
        tokens=tokens,
        secret_name=n.session_secret_name(inp.name),
        declared=declared,
    )
    return Plan(outcome, secret, ca.minted, None, schedule=False)


def _expired(inp: _Inputs, spec: SessionSpec, tokens: dict[str, str], expires_at: datetime) -> Plan:
    """Past its ttl: a revoked session file without values; the tokens stay in the status."""
    session = Session(
        session=session_id(inp.namespace, inp.name), secrets=(), expires_at=expires_at, egress=spec.egress, revoked=True
    )
    secret, ca = _secret(inp, session, spec.intercepted_hosts, expires_at)
    outcome = Outcome(
        n.PHASE_EXPIRED,
        "Expired",
        f"session expired at {format_time(expires_at)} (ttl {spec.ttl})",
        tokens=tokens,
        secret_name=n.session_secret_name(inp.name),
        expires_at=expires_at,
        ca_expires_at=ca.not_after,
        resolved=0,
        declared=len(spec.secrets),
    )
    return Plan(outcome, secret, ca.minted, expires_at, schedule=False)


def _ca_hosts(spec: SessionSpec, session: Session) -> tuple[HostPattern, ...]:
    """What the session CA must sign for: every entry's hosts, and a gcp entry's token endpoint
    (the sidecar intercepts the agent's JWT exchange there)."""
    extra = {b.token_endpoint for b in session.of_kind(Kind.GCP)} - {None}
    return tuple(sorted({*spec.intercepted_hosts, *(h for h in extra if h is not None)}, key=str))


def _active(inp: _Inputs, spec: SessionSpec, tokens: dict[str, str], resolved: Resolved) -> Plan:
    """Ready when every reference resolved, else Pending naming the first problem's reason."""
    expires_at = _expiry(inp.body, spec)
    session = new_session(
        session_id(inp.namespace, inp.name), resolved.bindings, expires_at=expires_at, egress=spec.egress
    )
    secret, ca = _secret(inp, session, _ca_hosts(spec, session), expires_at, resolved.files)
    secret_name = n.session_secret_name(inp.name)
    if resolved.problems:
        phase, reason = n.PHASE_PENDING, resolved.problems[0][0]
        message = "; ".join(m for _, m in resolved.problems)
    else:
        phase, reason = n.PHASE_READY, "SessionReady"
        message = f"{len(spec.secrets)} sealed secret(s) ready in Secret {secret_name}"
    outcome = Outcome(
        phase,
        reason,
        message,
        tokens=tokens,
        secret_name=secret_name,
        expires_at=expires_at,
        ca_expires_at=ca.not_after,
        resolved=len(resolved.bindings),
        declared=len(spec.secrets),
    )
    return Plan(outcome, secret, ca.minted, expires_at, schedule=True)


def plan(
    body: Obj, existing: Obj | None, referenced: Mapping[str, Obj | None], now: datetime, config: OperatorConfig
) -> Plan:
    """The session Secret and status a VaultSession should have.

    `existing` is the current session Secret (None when absent), `referenced` the Secrets named
    by `secrets_to_read()` (None when absent). Tokens come from the status, else from the stored
    session file, else are minted: a lost status or a lost Secret alone never changes one.
    """
    uid = body["metadata"]["uid"]
    inp = _Inputs(body, reusable(existing, uid), now, config)
    spec = _parse(body)
    if isinstance(spec, SpecError):
        return _invalid(inp, spec)
    old_file = material.decode_data((inp.existing or {}).get("data"), n.KEY_SESSION_FILE)
    names = token_names(spec, referenced, inp.status.get("tokens"))
    tokens = material.stable_tokens(names, inp.status.get("tokens"), recorded_tokens(old_file))
    expires_at = _expiry(body, spec)
    if expires_at is not None and now >= expires_at:
        return _expired(inp, spec, tokens, expires_at)
    previous = (inp.existing or {}).get("data")
    return _active(inp, spec, tokens, resolve(spec, referenced, tokens, previous))


# --- writes, events, wake-ups ------------------------------------------------------------------


def secret_write(existing: Obj | None, desired: dict[str, Any], uid: str) -> tuple[WriteAction | None, dict[str, Any]]:
    """Create when absent; replace (at the read resourceVersion) when data, owner label or owner
    differ; else nothing. A Secret of an earlier session of the same name is always replaced."""
    if existing is None:
        return "create", desired
    if not owned_by(existing, uid):
        existing = dict(existing, data={})
    emeta = existing.get("metadata") or {}
    owner = desired["metadata"]["labels"][n.LABEL_SESSION_OWNER]
    same = (
        (existing.get("data") or {}) == desired["data"]
        and (emeta.get("labels") or {}).get(n.LABEL_SESSION_OWNER) == owner
        and owned_by(existing, uid)
    )
    if same:
        return None, desired
    body = dict(desired, metadata=dict(desired["metadata"], resourceVersion=emeta.get("resourceVersion")))
    return "replace", body


def event_for(old_status: Obj | None, outcome: Outcome) -> tuple[str, str, str] | None:
    """(type, reason, message) of the Event to post: only when the Ready reason or message changed."""
    prev = ready_condition(old_status) or {}
    if (prev.get("reason"), prev.get("message")) == (outcome.reason, outcome.message):
        return None
    return ("Normal" if outcome.ready else "Warning", outcome.reason, outcome.message)


def requeue_delays(p: Plan, now: datetime, resync: timedelta) -> list[float]:
    """Seconds until the next reconciles: just after expiry, and the level-triggered resync (also
    where a CA with a third of its life left is renewed). None for Invalid and Expired sessions."""
    if not p.schedule:
        return []
    delays = []
    if p.expires_at is not None:
        delays.append((p.expires_at - now).total_seconds() + EXPIRY_MARGIN)
    delays.append(resync.total_seconds())
    return delays


def revocation_step(existing: Obj | None, namespace: str, name: str, now: datetime, grace: timedelta) -> RevocationStep:
    """Mark the session file revoked (once: the revoked-at annotation records when), then keep the
    Secret for `grace` so kubelets sync the revoked file into running pods, then delete it."""
    if existing is None:
        return RevocationStep(None, 0.0, delete=False)
    ann = (existing.get("metadata") or {}).get("annotations") or {}
    revoked_at = ann.get(n.ANNOTATION_REVOKED_AT)
    marked = None
    if revoked_at is None:
        data = dict(existing.get("data") or {})
        session = Session(session=session_id(namespace, name), secrets=(), revoked=True)
        data[n.KEY_SESSION_FILE] = base64.b64encode(session.to_json()).decode("ascii")
        annotations = {**ann, n.ANNOTATION_REVOKED_AT: format_time(now)}
        marked = dict(existing, data=data, metadata=dict(existing["metadata"], annotations=annotations))
        revoked = now
    else:
        revoked = parse_time(revoked_at, n.ANNOTATION_REVOKED_AT)
    remaining = (revoked + grace - now).total_seconds()
    return RevocationStep(marked, remaining, delete=remaining <= 0)
