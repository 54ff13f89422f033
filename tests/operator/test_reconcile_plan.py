"""The reconciler's decisions without a cluster (oshu_operator.reconcile_plan), table-driven, and the
Reconciler's orchestration over an in-memory API (a test double of `Kube` for decision coverage; the
real-apiserver tests in test_reconcile.py exercise the real calls).

Every scenario's status and event messages are checked for the real values it used.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from kubernetes_asyncio.client.exceptions import ApiException

from oshu_contract.pki import new_ca
from oshu_contract.session import format_time, loads_session
from oshu_operator import material
from oshu_operator import names as n
from oshu_operator import reconcile_plan as rp
from oshu_operator.config import OperatorConfig, SidecarConfig
from oshu_operator.kube import Kube
from oshu_operator.metrics import Metrics
from oshu_operator.reconciler import Reconciler, RetryLater
from oshu_operator.status import Outcome, status_patch

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
CFG = OperatorConfig()
NS, NAME, UID = "team", "claude", "uid-1"
REAL = "sk-real-plan-value-0123456789abcdef"
OTHER = "sk-real-plan-other-fedcba9876543210"
SECRET_NAME = n.session_secret_name(NAME)


def b64(value: str | bytes) -> str:
    raw = value.encode() if isinstance(value, str) else value
    return base64.b64encode(raw).decode("ascii")


def entry(name: str = "API_KEY", secret: str = "anthropic", key: str = "api-key", host: str = "api.anthropic.com"):
    return {"name": name, "secretKeyRef": {"name": secret, "key": key}, "hosts": [host]}


def session_body(
    *entries: dict[str, Any],
    ttl: str | None = None,
    status: dict[str, Any] | None = None,
    created: datetime = NOW,
    name: str = NAME,
    uid: str = UID,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"secrets": list(entries or [entry()])}
    if ttl is not None:
        spec["ttl"] = ttl
    body: dict[str, Any] = {
        "apiVersion": n.API_VERSION,
        "kind": n.KIND,
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": uid,
            "generation": 1,
            "creationTimestamp": format_time(created),
        },
        "spec": spec,
    }
    if status is not None:
        body["status"] = status
    return body


def user_secret(name: str = "anthropic", **data: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": NS}, "data": {k: b64(v) for k, v in data.items()}}


REFS = {"anthropic": user_secret(**{"api-key": REAL})}


def session_file(p: rp.Plan) -> dict[str, Any]:
    return json.loads(base64.b64decode(p.secret["data"][n.KEY_SESSION_FILE]))


def ca_cert(p: rp.Plan) -> x509.Certificate:
    return x509.load_pem_x509_certificate(base64.b64decode(p.secret["data"][n.KEY_CA_CERT]))


def stored(p: rp.Plan) -> dict[str, Any]:
    """The Secret as the API would return it after the plan's write."""
    return dict(copy.deepcopy(p.secret), metadata={**p.secret["metadata"], "resourceVersion": "7"})


def with_status(body: dict[str, Any], p: rp.Plan, now: datetime = NOW) -> dict[str, Any]:
    """The VaultSession as it reads after the plan's status patch (tokens without the nulls)."""
    patch = status_patch(body.get("status"), p.outcome, 1, now)
    patch["tokens"] = {k: v for k, v in (patch["tokens"] or {}).items() if v is not None}
    return dict(body, status=patch)


def no_value_in_words(p: rp.Plan, *values: str) -> None:
    """The status patch and the event a plan leads to never carry a real value."""
    words = json.dumps(status_patch({}, p.outcome, 1, NOW)) + json.dumps(rp.event_for({}, p.outcome))
    for value in values:
        assert value not in words


# --- missing and unusable references ------------------------------------------------------------

PROBLEMS = {
    "no Secret": ({}, "SecretNotFound", "Secret anthropic (for API_KEY) not found"),
    "no key": ({"anthropic": user_secret(other=REAL)}, "SecretKeyNotFound", "Secret anthropic has no key api-key"),
    "not UTF-8": (
        {"anthropic": {"data": {"api-key": base64.b64encode(b"\xff\xfe" + REAL.encode()).decode()}}},
        "SecretValueInvalid",
        "Secret anthropic key api-key (for API_KEY) is not UTF-8 text",
    ),
    "not base64": ({"anthropic": {"data": {"api-key": "!!" + REAL}}}, "SecretValueInvalid", "is not UTF-8 text"),
    "too short for the contract": (
        {"anthropic": user_secret(**{"api-key": "k7Qz"})},
        "SecretValueInvalid",
        "Secret anthropic key api-key: ",
    ),
}


@pytest.mark.parametrize("referenced, reason, words", PROBLEMS.values(), ids=PROBLEMS.keys())
def test_unusable_reference_is_pending_naming_it(referenced, reason, words):
    p = rp.plan(session_body(), None, referenced, NOW, CFG)
    assert (p.outcome.phase, p.outcome.reason, p.outcome.ready) == (n.PHASE_PENDING, reason, False)
    assert words in p.outcome.message
    assert (p.outcome.resolved, p.outcome.declared) == (0, 1)
    assert session_file(p)["secrets"] == []  # nothing half-made reaches the sidecar
    assert p.outcome.tokens["API_KEY"].startswith("SEALED_")  # the token exists before the value does
    no_value_in_words(p, REAL, "k7Qz")
    assert rp.event_for({}, p.outcome) == ("Warning", reason, p.outcome.message)


def test_problems_are_all_named_and_the_first_gives_the_reason():
    body = session_body(entry("A", "gone"), entry("B", "anthropic", "nokey"), entry("C"))
    p = rp.plan(body, None, {"gone": None, **REFS}, NOW, CFG)
    assert p.outcome.reason == "SecretNotFound" and p.outcome.phase == n.PHASE_PENDING
    assert "Secret gone (for A) not found" in p.outcome.message and "no key nokey (for B)" in p.outcome.message
    assert (p.outcome.resolved, p.outcome.declared) == (1, 3)
    assert [s["name"] for s in session_file(p)["secrets"]] == ["C"]  # the usable one is served meanwhile


def test_ready_session_file_holds_the_value_status_only_the_token():
    p = rp.plan(session_body(), None, REFS, NOW, CFG)
    assert (p.outcome.phase, p.outcome.reason) == (n.PHASE_READY, "SessionReady")
    assert p.outcome.message == f"1 sealed secret(s) ready in Secret {SECRET_NAME}"
    (sec,) = session_file(p)["secrets"]
    assert sec == {
        "name": "API_KEY",
        "sealed": p.outcome.tokens["API_KEY"],
        "value": REAL,
        "hosts": ["api.anthropic.com"],
    }
    assert loads_session(base64.b64decode(p.secret["data"][n.KEY_SESSION_FILE])).session == f"{NS}/{NAME}"
    meta = p.secret["metadata"]
    assert meta["name"] == SECRET_NAME and meta["labels"][n.LABEL_SESSION_OWNER] == NAME
    assert meta["ownerReferences"][0]["uid"] == UID and p.secret["type"] == n.SESSION_SECRET_TYPE
    no_value_in_words(p, REAL)


def test_trailing_newline_of_a_file_secret_is_dropped():
    p = rp.plan(session_body(), None, {"anthropic": user_secret(**{"api-key": REAL + "\r\n"})}, NOW, CFG)
    assert session_file(p)["secrets"][0]["value"] == REAL


def test_each_referenced_secret_is_read_once_in_spec_order():
    body = session_body(entry("A", "s2"), entry("B", "s1"), entry("C", "s2", "other"))
    assert rp.secrets_to_read(body, NOW) == ["s2", "s1"]


# --- tokens ----------------------------------------------------------------------------------------


def test_tokens_stay_across_reconciles_and_nothing_is_rewritten():
    body = session_body()
    first = rp.plan(body, None, REFS, NOW, CFG)
    assert rp.secret_write(None, first.secret, UID)[0] == "create"
    later = NOW + timedelta(minutes=5)
    again = rp.plan(with_status(body, first), stored(first), REFS, later, CFG)
    assert again.outcome.tokens == first.outcome.tokens
    assert not again.ca_minted and again.secret["data"] == first.secret["data"]
    assert rp.secret_write(stored(first), again.secret, UID) == (None, again.secret)
    assert rp.event_for(with_status(body, first)["status"], again.outcome) is None  # no repeated event


LOSSES = {
    "status lost (recovered from the stored session file)": (False, True),
    "Secret lost (recovered from the status)": (True, False),
}


@pytest.mark.parametrize("keep_status, keep_secret", LOSSES.values(), ids=LOSSES.keys())
def test_a_lost_status_or_a_lost_secret_alone_keeps_the_tokens(keep_status, keep_secret):
    body = session_body(entry("A"), entry("B", key="b"))
    refs = {"anthropic": user_secret(**{"api-key": REAL, "b": OTHER})}
    first = rp.plan(body, None, refs, NOW, CFG)
    p = rp.plan(
        with_status(body, first) if keep_status else body, stored(first) if keep_secret else None, refs, NOW, CFG
    )
    assert p.outcome.tokens == first.outcome.tokens
    assert {s["name"]: s["sealed"] for s in session_file(p)["secrets"]} == first.outcome.tokens


def test_both_lost_mints_new_tokens():
    first = rp.plan(session_body(), None, REFS, NOW, CFG)
    again = rp.plan(session_body(), None, REFS, NOW, CFG)
    assert again.outcome.tokens["API_KEY"] != first.outcome.tokens["API_KEY"]


def test_a_secret_left_by_an_earlier_session_of_the_same_name_gives_nothing():
    earlier = rp.plan(session_body(uid="uid-0"), None, REFS, NOW, CFG)
    p = rp.plan(session_body(), stored(earlier), REFS, NOW, CFG)
    assert p.outcome.tokens != earlier.outcome.tokens and p.ca_minted
    action, body = rp.secret_write(stored(earlier), p.secret, UID)
    assert action == "replace" and body["metadata"]["resourceVersion"] == "7"
    assert body["metadata"]["ownerReferences"][0]["uid"] == UID


def test_rotation_changes_the_value_not_the_token():
    body = session_body()
    first = rp.plan(body, None, REFS, NOW, CFG)
    p = rp.plan(with_status(body, first), stored(first), {"anthropic": user_secret(**{"api-key": OTHER})}, NOW, CFG)
    (sec,) = session_file(p)["secrets"]
    assert sec["value"] == OTHER and sec["sealed"] == first.outcome.tokens["API_KEY"]
    assert not p.ca_minted and p.secret["data"][n.KEY_CA_CERT] == first.secret["data"][n.KEY_CA_CERT]
    assert rp.secret_write(stored(first), p.secret, UID)[0] == "replace"
    no_value_in_words(p, REAL, OTHER)


def test_removed_secret_drops_its_token_from_the_status():
    body = session_body(entry("A"), entry("B"))
    first = rp.plan(body, None, REFS, NOW, CFG)
    p = rp.plan(with_status(session_body(entry("A")), first), stored(first), REFS, NOW, CFG)
    assert set(p.outcome.tokens) == {"A"} and p.outcome.tokens["A"] == first.outcome.tokens["A"]
    assert status_patch(with_status(body, first)["status"], p.outcome, 2, NOW)["tokens"]["B"] is None


# --- ttl and wake-ups --------------------------------------------------------------------------------


def test_ttl_session_wakes_at_expiry_and_at_resync():
    p = rp.plan(session_body(ttl="1h"), None, REFS, NOW + timedelta(minutes=20), CFG)
    assert p.outcome.ready and p.expires_at == NOW + timedelta(hours=1)
    assert session_file(p)["expiresAt"] == format_time(NOW + timedelta(hours=1))
    delays = rp.requeue_delays(p, NOW + timedelta(minutes=20), timedelta(minutes=10))
    assert delays == [40 * 60 + rp.EXPIRY_MARGIN, 600]
    assert rp.requeue_delays(rp.plan(session_body(), None, REFS, NOW, CFG), NOW, timedelta(minutes=10)) == [600]


@pytest.mark.parametrize("age", [timedelta(hours=1), timedelta(hours=3)], ids=["at expiry", "long after"])
def test_expired_session_is_revoked_keeps_tokens_and_reads_nothing(age):
    body = session_body(ttl="1h")
    first = rp.plan(body, None, REFS, NOW, CFG)
    now = NOW + age
    assert rp.secrets_to_read(with_status(body, first), now) == []
    p = rp.plan(with_status(body, first), stored(first), {}, now, CFG)
    assert (p.outcome.phase, p.outcome.reason) == (n.PHASE_EXPIRED, "Expired")
    assert p.outcome.message == f"session expired at {format_time(NOW + timedelta(hours=1))} (ttl 1:00:00)"
    doc = session_file(p)
    assert doc["revoked"] is True and doc["secrets"] == []
    assert p.outcome.tokens == first.outcome.tokens and (p.outcome.resolved, p.outcome.declared) == (0, 1)
    assert rp.requeue_delays(p, now, timedelta(minutes=10)) == []
    assert rp.event_for(with_status(body, first)["status"], p.outcome) == ("Warning", "Expired", p.outcome.message)
    no_value_in_words(p, REAL)


INVALID = {
    "no secrets": ({"secrets": []}, NAME, "spec.secrets must list at least one secret"),
    "reserved env name": ({"secrets": [entry("HTTPS_PROXY")]}, NAME, "spec.secrets[0].name HTTPS_PROXY is set"),
    "bad host": ({"secrets": [dict(entry(), hosts=["https://x/"])]}, NAME, "spec.secrets[0].hosts"),
    "name too long": ({"secrets": [entry()]}, "x" * 64, "name must be at most 63 characters"),
}


@pytest.mark.parametrize("spec, name, words", INVALID.values(), ids=INVALID.keys())
def test_invalid_spec_serves_nothing_and_keeps_the_status_tokens(spec, name, words):
    old_tokens = {"API_KEY": "SEALED_" + "a" * 43, "junk": 3}
    body = dict(session_body(name=name, status={"tokens": old_tokens}), spec=spec)
    assert rp.secrets_to_read(body, NOW) == []
    p = rp.plan(body, None, REFS, NOW, CFG)
    assert (p.outcome.phase, p.outcome.reason) == (n.PHASE_INVALID, "InvalidSpec")
    assert words in p.outcome.message
    assert p.outcome.tokens == {"API_KEY": old_tokens["API_KEY"]}
    assert session_file(p)["secrets"] == [] and "revoked" not in session_file(p)
    assert rp.requeue_delays(p, NOW, timedelta(minutes=10)) == []
    no_value_in_words(p, REAL)


# --- the session CA and the upstream CA ---------------------------------------------------------------


def dns_subtrees(cert: x509.Certificate) -> set[str]:
    nc = cert.extensions.get_extension_for_class(x509.NameConstraints).value
    return {str(g.value) for g in nc.permitted_subtrees or []}


def test_ca_is_constrained_to_the_hosts_and_replaced_when_hosts_grow():
    body = session_body()
    first = rp.plan(body, None, REFS, NOW, CFG)
    assert first.ca_minted and dns_subtrees(ca_cert(first)) == {"api.anthropic.com"}
    grown = session_body(entry(), entry("GH", host="api.github.com"))
    refs = {"anthropic": user_secret(**{"api-key": REAL})}
    p = rp.plan(with_status(grown, first), stored(first), refs, NOW, CFG)
    assert p.ca_minted and dns_subtrees(ca_cert(p)) == {"api.anthropic.com", "api.github.com"}
    assert p.outcome.tokens["API_KEY"] == first.outcome.tokens["API_KEY"]


def test_ca_is_renewed_with_a_third_of_its_life_left():
    first = rp.plan(session_body(), None, REFS, NOW, CFG)
    life = CFG.ca_validity
    keep = rp.plan(session_body(), stored(first), REFS, NOW + life * 0.6, CFG)
    renew = rp.plan(session_body(), stored(first), REFS, NOW + life * 0.7, CFG)
    assert not keep.ca_minted and renew.ca_minted
    assert renew.outcome.ca_expires_at == NOW + life * 0.7 + life


def test_ttl_session_ca_outlives_the_session_only():
    p = rp.plan(session_body(ttl="2h"), None, REFS, NOW, CFG)
    assert p.outcome.ca_expires_at == NOW + timedelta(hours=2) + material.CA_TTL_SLACK
    assert ca_cert(p).not_valid_after_utc <= NOW + timedelta(hours=2) + material.CA_TTL_SLACK


def test_unreadable_stored_ca_is_replaced():
    first = rp.plan(session_body(), None, REFS, NOW, CFG)
    broken = stored(first)
    broken["data"][n.KEY_CA_KEY] = b64(new_ca("another").key_pem)  # key and cert do not match
    p = rp.plan(session_body(), broken, REFS, NOW, CFG)
    assert p.ca_minted and p.secret["data"][n.KEY_CA_CERT] != first.secret["data"][n.KEY_CA_CERT]


@pytest.mark.parametrize("configured", [True, False], ids=["configured", "not configured"])
def test_upstream_ca_is_copied_into_every_session_secret(configured):
    upstream = new_ca("private upstream").cert_pem
    cfg = replace(CFG, sidecar=SidecarConfig(upstream_ca_pem=upstream if configured else b""))
    for body in (session_body(), session_body(ttl="1s", created=NOW - timedelta(hours=1)), session_body(name="x" * 64)):
        data = rp.plan(body, None, REFS, NOW, cfg).secret["data"]
        assert (base64.b64decode(data[n.KEY_UPSTREAM_CA]) == upstream) if configured else n.KEY_UPSTREAM_CA not in data


# --- writes, events ----------------------------------------------------------------------------------


def test_secret_is_replaced_when_its_owner_label_was_changed():
    p = rp.plan(session_body(), None, REFS, NOW, CFG)
    tampered = stored(p)
    tampered["metadata"]["labels"] = {}
    action, body = rp.secret_write(tampered, p.secret, UID)
    assert action == "replace" and body["metadata"]["resourceVersion"] == "7"
    assert "resourceVersion" not in p.secret["metadata"]  # the plan itself is never changed


def test_event_only_when_reason_or_message_changes():
    ready = Outcome(n.PHASE_READY, "SessionReady", "1 ready")
    status = {"conditions": [{"type": "Ready", "status": "True", "reason": "SessionReady", "message": "1 ready"}]}
    assert rp.event_for(status, ready) is None
    assert rp.event_for(status, replace(ready, message="2 ready")) == ("Normal", "SessionReady", "2 ready")
    assert rp.event_for(None, ready) == ("Normal", "SessionReady", "1 ready")


# --- revocation -------------------------------------------------------------------------------------

GRACE = timedelta(seconds=180)


def marked_secret(revoked_at: datetime | None) -> dict[str, Any]:
    secret = stored(rp.plan(session_body(), None, REFS, NOW, CFG))
    if revoked_at is not None:
        secret["metadata"]["annotations"] = {"keep": "me", n.ANNOTATION_REVOKED_AT: format_time(revoked_at)}
    return secret


REVOCATIONS = {
    "no Secret: nothing to wait for": (None, GRACE, False, 0.0, False),
    "live Secret: marked, then the grace": (marked_secret(None), GRACE, True, 180.0, False),
    "marked 100s ago: wait the rest": (marked_secret(NOW - timedelta(seconds=100)), GRACE, False, 80.0, False),
    "grace over: delete": (marked_secret(NOW - timedelta(seconds=181)), GRACE, False, -1.0, True),
    "no grace: mark and delete at once": (marked_secret(None), timedelta(0), True, 0.0, True),
}


@pytest.mark.parametrize("existing, grace, marks, remaining, delete", REVOCATIONS.values(), ids=REVOCATIONS.keys())
def test_revocation_marks_once_then_waits_out_the_grace(existing, grace, marks, remaining, delete):
    step = rp.revocation_step(existing, NS, NAME, NOW, grace)
    assert (step.marked is not None, step.remaining, step.delete) == (marks, remaining, delete)
    if step.marked is not None:
        doc = json.loads(base64.b64decode(step.marked["data"][n.KEY_SESSION_FILE]))
        assert doc == {"schemaVersion": 1, "session": f"{NS}/{NAME}", "revoked": True, "secrets": []}
        assert step.marked["metadata"]["annotations"][n.ANNOTATION_REVOKED_AT] == format_time(NOW)
        assert step.marked["metadata"]["resourceVersion"] == "7"  # replaced at the version read
        assert step.marked["data"][n.KEY_CA_CERT] == existing["data"][n.KEY_CA_CERT]  # pods keep trusting
        assert REAL not in json.dumps(step.marked)


def test_revoked_message_warns_when_the_grace_may_beat_the_kubelet():
    assert rp.revoked_message("s", GRACE) == "session revoked; Secret s is deleted after 180s"
    assert "warning:" in rp.revoked_message("s", timedelta(seconds=60))


# --- the Reconciler over an in-memory API -------------------------------------------------------------


def merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386 JSON merge patch, as the API server applies a status patch."""
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_patch(out[key], value)
        elif isinstance(value, dict):
            out[key] = merge_patch({}, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class _Events:
    def __init__(self) -> None:
        self.posted: list[dict[str, Any]] = []

    async def create_namespaced_event(self, namespace: str, body: dict[str, Any]) -> None:
        self.posted.append(body)


class MemoryKube(Kube):
    """The calls the Reconciler makes, on dicts: 404 as None, 409 on a create of an existing Secret
    or a replace at a stale resourceVersion; `fail` makes the next calls raise."""

    def __init__(self) -> None:  # no API client
        self.sessions: dict[tuple[str, str], dict[str, Any]] = {}
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.writes: list[str] = []
        self.fail: list[ApiException] = []
        self.version = 0
        self.core = _Events()

    def _maybe_fail(self) -> None:
        if self.fail:
            raise self.fail.pop(0)

    def _stored(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        obj = copy.deepcopy(body)
        obj["metadata"] = dict(obj["metadata"], namespace=namespace, resourceVersion=str(self.version))
        self.secrets[(namespace, obj["metadata"]["name"])] = obj
        return copy.deepcopy(obj)

    async def get_session(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._maybe_fail()
        return copy.deepcopy(self.sessions.get((namespace, name)))

    async def patch_session_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.writes.append("status")
        if (namespace, name) not in self.sessions:
            raise ApiException(status=404)
        session = self.sessions[(namespace, name)]
        session["status"] = merge_patch(session.get("status") or {}, status)

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._maybe_fail()
        return copy.deepcopy(self.secrets.get((namespace, name)))

    async def create_secret(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self.writes.append("create")
        if (namespace, body["metadata"]["name"]) in self.secrets:
            raise ApiException(status=409)
        return self._stored(namespace, body)

    async def replace_secret(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self.writes.append("replace")
        current = self.secrets.get((namespace, name))
        wanted = body["metadata"].get("resourceVersion")
        if current is None or (wanted and wanted != current["metadata"]["resourceVersion"]):
            raise ApiException(status=409 if current else 404)
        return self._stored(namespace, body)

    async def delete_secret(self, namespace: str, name: str) -> bool:
        self.writes.append("delete")
        return self.secrets.pop((namespace, name), None) is not None


@pytest.fixture
def memory() -> MemoryKube:
    kube = MemoryKube()
    kube.sessions[(NS, NAME)] = session_body(created=material.utcnow())
    kube.secrets[(NS, "anthropic")] = user_secret(**{"api-key": REAL})
    return kube


async def reconciler_over(kube: MemoryKube, **config: Any) -> Reconciler:
    return Reconciler(OperatorConfig(**config), kube, Metrics())


def events_of(kube: MemoryKube) -> list[tuple[str, str, str]]:
    return [(e["type"], e["reason"], e["message"]) for e in kube.core.posted]


async def test_reconciler_writes_secret_status_event_once(memory: MemoryKube):
    rec = await reconciler_over(memory)
    try:
        outcome = await rec.reconcile(NS, NAME)
        assert outcome is not None and outcome.ready
        assert memory.writes == ["create", "status"]
        status = memory.sessions[(NS, NAME)]["status"]
        assert status["phase"] == n.PHASE_READY and status["secrets"] == "1/1"
        assert events_of(memory) == [("Normal", "SessionReady", outcome.message)]
        assert rec.metrics.registry.get_sample_value("oshu_vault_sessions", {"phase": n.PHASE_READY}) == 1
        assert set(rec._timers) == {(NS, NAME)}  # the resync is scheduled

        again = await rec.reconcile(NS, NAME)  # level-triggered: nothing changed, nothing written
        assert again is not None and replace(again, ca_expires_at=None) == replace(outcome, ca_expires_at=None)
        assert memory.writes == ["create", "status"] and len(events_of(memory)) == 1

        memory.secrets[(NS, "anthropic")] = user_secret(**{"api-key": OTHER})  # rotation
        rotated = await rec.reconcile(NS, NAME)
        assert rotated is not None and rotated.tokens == outcome.tokens and memory.writes[-1] == "replace"
        stored_file = json.loads(base64.b64decode(memory.secrets[(NS, SECRET_NAME)]["data"][n.KEY_SESSION_FILE]))
        assert stored_file["secrets"][0]["value"] == OTHER
        words = json.dumps(memory.sessions[(NS, NAME)]["status"]) + json.dumps(memory.core.posted)
        assert REAL not in words and OTHER not in words
    finally:
        await rec.close()


async def test_reconciler_pending_then_ready_when_the_secret_appears(memory: MemoryKube):
    del memory.secrets[(NS, "anthropic")]
    rec = await reconciler_over(memory)
    try:
        pending = await rec.reconcile(NS, NAME)
        assert pending is not None and pending.reason == "SecretNotFound"
        memory.secrets[(NS, "anthropic")] = user_secret(**{"api-key": REAL})
        ready = await rec.reconcile(NS, NAME)
        assert ready is not None and ready.ready and ready.tokens == pending.tokens
        assert [e[1] for e in events_of(memory)] == ["SecretNotFound", "SessionReady"]
    finally:
        await rec.close()


async def test_reconciler_turns_api_failures_into_retries_with_backoff(memory: MemoryKube):
    rec = await reconciler_over(memory)
    try:
        delays = []
        for _ in range(3):
            memory.fail.append(ApiException(status=500, reason="boom"))
            with pytest.raises(RetryLater) as e:
                await rec.reconcile(NS, NAME)
            delays.append(e.value.delay)
        assert delays == [1, 2, 5]
        assert await rec.reconcile(NS, NAME) is not None and (NS, NAME) not in rec._failures
        memory.secrets.pop((NS, SECRET_NAME))
        memory.secrets[(NS, SECRET_NAME)] = {"metadata": {"name": SECRET_NAME, "resourceVersion": "x"}}
        memory.writes.clear()
        await rec.reconcile(NS, NAME)  # another's Secret of that name: taken over by a replace
        assert memory.writes[0] == "replace"
    finally:
        await rec.close()


async def test_reconciler_create_conflict_is_retried_soon(memory: MemoryKube):
    rec = await reconciler_over(memory)
    original: Callable[..., Any] = memory.get_secret

    async def racing_get(namespace: str, name: str) -> dict[str, Any] | None:
        got = await original(namespace, name)
        if name == SECRET_NAME and got is None:  # someone creates it right after our read
            memory.secrets[(namespace, name)] = {"metadata": {"name": name, "resourceVersion": "1"}}
        return got

    memory.get_secret = racing_get  # type: ignore[method-assign]
    try:
        with pytest.raises(RetryLater, match="appeared concurrently") as e:
            await rec.reconcile(NS, NAME)
        assert e.value.delay == 0.2
    finally:
        await rec.close()


async def test_reconciler_forgets_a_session_that_is_gone_or_being_deleted(memory: MemoryKube):
    rec = await reconciler_over(memory)
    try:
        memory.sessions[(NS, NAME)]["metadata"]["deletionTimestamp"] = format_time(NOW)
        assert await rec.reconcile(NS, NAME) is None and memory.writes == []
        del memory.sessions[(NS, NAME)]
        assert await rec.reconcile(NS, NAME) is None and memory.writes == []
    finally:
        await rec.close()


async def test_reconciler_revokes_then_deletes_after_the_grace(memory: MemoryKube):
    rec = await reconciler_over(memory, revocation_grace=timedelta(seconds=180))
    body = memory.sessions[(NS, NAME)]
    try:
        await rec.reconcile(NS, NAME)
        remaining = await rec.revoke(NS, NAME, body)
        assert 170 < remaining <= 180
        secret = memory.secrets[(NS, SECRET_NAME)]
        doc = json.loads(base64.b64decode(secret["data"][n.KEY_SESSION_FILE]))
        assert doc["revoked"] is True and doc["secrets"] == []
        assert events_of(memory)[-1] == ("Normal", "Revoked", rp.revoked_message(SECRET_NAME, timedelta(seconds=180)))
        assert 170 < await rec.revoke(NS, NAME, body) <= 180 and memory.writes.count("replace") == 1  # marked once

        past = format_time(material.utcnow() - timedelta(seconds=181))
        secret["metadata"]["annotations"][n.ANNOTATION_REVOKED_AT] = past
        assert await rec.revoke(NS, NAME, body) == 0.0 and (NS, SECRET_NAME) not in memory.secrets
        assert await rec.revoke(NS, NAME, body) == 0.0  # nothing left: deletion may proceed
    finally:
        await rec.close()


async def test_reconciler_background_retry_and_close():
    kube = MemoryKube()
    kube.fail.append(ApiException(status=503, reason="unavailable"))
    rec = await reconciler_over(kube)
    try:
        rec.trigger(NS, NAME)
        rec.trigger(NS, NAME, delay=30)  # a later run never replaces an earlier pending one
        for _ in range(100):
            await asyncio.sleep(0.01)
            if (NS, NAME) in rec._failures:
                break
        assert rec._failures[(NS, NAME)] == 1 and (NS, NAME) in rec._timers  # retried after the backoff
    finally:
        await rec.close()
    assert rec._timers == {}
