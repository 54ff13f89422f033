"""The reconciler against the real API server: tokens, session Secret, status, events,
missing Secrets, rotation, ttl expiry, deletion, operator restart."""

from __future__ import annotations

import re

from cryptography import x509

from oshu_contract.pki import CertificateAuthority
from oshu_contract.session import loads_session
from oshu_operator import names as n
from oshu_testkit.kube import wait_for

SEALED = re.compile(r"^SEALED_[0-9a-f]{40}$")


def anthropic(secret: str = "anthropic", key: str = "api-key", hosts=("api.anthropic.com",), name="ANTHROPIC_API_KEY"):
    return {"name": name, "secretKeyRef": {"name": secret, "key": key}, "hosts": list(hosts)}


def test_apply_secret_and_session_gets_ready_with_tokens(kube, ns, real):
    value = real()
    kube.secret(ns, "anthropic", {"api-key": value})
    kube.session(ns, "claude", [anthropic()], ttl="8h", egress=["api.anthropic.com", "*.github.com"])
    status = kube.wait_phase(ns, "claude", n.PHASE_READY)

    token = status["tokens"]["ANTHROPIC_API_KEY"]
    assert SEALED.match(token)
    (cond,) = status["conditions"]
    assert cond["type"] == "Ready" and cond["status"] == "True" and cond["observedGeneration"] == 1
    assert status["secretName"] == "oshu-vault-session-claude" and status["secrets"] == "1/1"
    assert status["expiresAt"] and status["caExpiresAt"] >= status["expiresAt"]

    secret = kube.get("secret", "oshu-vault-session-claude", ns)
    assert secret["type"] == n.SESSION_SECRET_TYPE
    (owner,) = secret["metadata"]["ownerReferences"]
    vs = kube.get(n.PLURAL, "claude", ns)
    assert owner["uid"] == vs["metadata"]["uid"] and owner["kind"] == n.KIND and owner["controller"] is True
    assert n.FINALIZER in vs["metadata"]["finalizers"]

    data = kube.session_secret(ns, "claude")
    assert set(data) == {n.KEY_SESSION_FILE, n.KEY_CA_CERT, n.KEY_CA_KEY, n.KEY_CA_BUNDLE}
    session = loads_session(data[n.KEY_SESSION_FILE])  # the sidecar's own parser accepts it
    assert session.session == f"{ns}/claude" and session.expires_at is not None and not session.revoked
    (binding,) = session.secrets
    assert binding.name == "ANTHROPIC_API_KEY" and binding.sealed == token and binding.value == value
    assert [str(h) for h in binding.hosts] == ["api.anthropic.com"]
    assert [str(h) for h in session.egress or ()] == ["api.anthropic.com", "*.github.com"]

    ca = CertificateAuthority.from_pem(data[n.KEY_CA_CERT], data[n.KEY_CA_KEY])
    assert ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    nc = ca.cert.extensions.get_extension_for_class(x509.NameConstraints).value
    assert [g.value for g in nc.permitted_subtrees or ()] == ["api.anthropic.com"]
    assert data[n.KEY_CA_BUNDLE].endswith(data[n.KEY_CA_CERT]) and data[n.KEY_CA_BUNDLE].count(b"BEGIN CERT") > 100

    events = [e for e in kube.events(ns) if e["involvedObject"]["name"] == "claude"]
    assert any(e["reason"] == "SessionReady" and e["type"] == "Normal" for e in events)


def test_each_session_gets_its_own_ca(kube, ns, real):
    kube.secret(ns, "anthropic", {"api-key": real()})
    kube.session(ns, "one", [anthropic()])
    kube.session(ns, "two", [anthropic()])
    kube.wait_phase(ns, "one", n.PHASE_READY)
    kube.wait_phase(ns, "two", n.PHASE_READY)
    a, b = kube.session_secret(ns, "one"), kube.session_secret(ns, "two")
    assert a[n.KEY_CA_CERT] != b[n.KEY_CA_CERT] and a[n.KEY_CA_KEY] != b[n.KEY_CA_KEY]
    assert kube.status(ns, "one")["tokens"] != kube.status(ns, "two")["tokens"]


def test_missing_secret_then_created(kube, ns, real):
    kube.session(ns, "claude", [anthropic(), anthropic("github", "token", ["*.github.com"], "GITHUB_TOKEN")])
    status = kube.wait_phase(ns, "claude", n.PHASE_PENDING)
    (cond,) = status["conditions"]
    assert cond["status"] == "False" and cond["reason"] == "SecretNotFound"
    assert "Secret anthropic" in cond["message"] and "Secret github" in cond["message"]
    assert status["secrets"] == "0/2" and set(status["tokens"]) == {"ANTHROPIC_API_KEY", "GITHUB_TOKEN"}
    tokens = status["tokens"]
    assert any(e["reason"] == "SecretNotFound" and e["type"] == "Warning" for e in kube.events(ns))

    kube.secret(ns, "anthropic", {"wrong-key": real()})
    status = wait_for(
        lambda: (s := kube.status(ns, "claude"))["conditions"][0]["reason"] == "SecretKeyNotFound" and s,
        15,
        "key-not-found status",
    )
    assert "Secret anthropic has no key api-key" in status["conditions"][0]["message"]

    value, gh = real(), real("ghp")
    kube.secret(ns, "anthropic", {"api-key": value})
    kube.secret(ns, "github", {"token": gh})
    status = kube.wait_phase(ns, "claude", n.PHASE_READY, timeout=15)  # event-driven: seconds, not a resync
    assert status["tokens"] == tokens and status["secrets"] == "2/2"
    by_name = {b["name"]: b["value"] for b in kube.session_file(ns, "claude")["secrets"]}
    assert by_name == {"ANTHROPIC_API_KEY": value, "GITHUB_TOKEN": gh}


def test_unusable_value_names_the_secret_not_the_value(kube, ns, real):
    kube.secret(ns, "anthropic", {"api-key": "qZ7x"})
    kube.session(ns, "claude", [anthropic()])
    status = kube.wait_phase(ns, "claude", n.PHASE_PENDING)
    message = status["conditions"][0]["message"]
    assert status["conditions"][0]["reason"] == "SecretValueInvalid"
    assert "Secret anthropic key api-key" in message and "8-8192" in message and "qZ7x" not in message


def test_trailing_newline_from_files_is_not_part_of_the_key(kube, ns, real):
    value = real()
    kube.secret(ns, "anthropic", {"api-key": value + "\n"})
    kube.session(ns, "claude", [anthropic()])
    kube.wait_phase(ns, "claude", n.PHASE_READY)
    assert kube.session_file(ns, "claude")["secrets"][0]["value"] == value


def test_rotation_follows_the_secret_and_keeps_tokens(kube, ns, real):
    old, new = real(), real()
    kube.secret(ns, "anthropic", {"api-key": old})
    kube.session(ns, "claude", [anthropic()])
    tokens = kube.wait_phase(ns, "claude", n.PHASE_READY)["tokens"]
    ca_before = kube.session_secret(ns, "claude")[n.KEY_CA_CERT]
    kube.secret(ns, "anthropic", {"api-key": new})
    wait_for(lambda: kube.session_file(ns, "claude")["secrets"][0]["value"] == new, 15, "rotated value")
    assert kube.status(ns, "claude")["tokens"] == tokens
    assert kube.session_file(ns, "claude")["secrets"][0]["sealed"] == tokens["ANTHROPIC_API_KEY"]
    assert kube.session_secret(ns, "claude")[n.KEY_CA_CERT] == ca_before


def test_spec_edits_keep_tokens_and_new_hosts_get_a_new_ca(kube, ns, real):
    kube.secret(ns, "anthropic", {"api-key": real()})
    kube.secret(ns, "github", {"token": real("ghp")})
    kube.session(ns, "claude", [anthropic()])
    tokens = kube.wait_phase(ns, "claude", n.PHASE_READY)["tokens"]
    ca1 = kube.session_secret(ns, "claude")[n.KEY_CA_CERT]

    kube.session(ns, "claude", [anthropic()], egress=["api.anthropic.com"])  # unrelated field
    wait_for(lambda: kube.status(ns, "claude")["observedGeneration"] == 2, 15, "generation 2")
    assert kube.status(ns, "claude")["tokens"] == tokens
    assert kube.session_secret(ns, "claude")[n.KEY_CA_CERT] == ca1

    kube.session(
        ns,
        "claude",
        [anthropic(), anthropic("github", "token", ["*.github.com"], "GITHUB_TOKEN")],
        egress=["api.anthropic.com"],
    )
    status = wait_for(
        lambda: (s := kube.status(ns, "claude"))["observedGeneration"] == 3 and s["phase"] == "Ready" and s,
        15,
        "generation 3",
    )
    assert status["tokens"]["ANTHROPIC_API_KEY"] == tokens["ANTHROPIC_API_KEY"]
    assert SEALED.match(status["tokens"]["GITHUB_TOKEN"])
    data = kube.session_secret(ns, "claude")
    assert data[n.KEY_CA_CERT] != ca1  # the CA must now also sign for *.github.com
    nc = x509.load_pem_x509_certificate(data[n.KEY_CA_CERT]).extensions.get_extension_for_class(x509.NameConstraints)
    assert sorted(g.value for g in nc.value.permitted_subtrees or ()) == ["api.anthropic.com", "github.com"]

    kube.session(
        ns, "claude", [anthropic("github", "token", ["*.github.com"], "GITHUB_TOKEN")], egress=["api.anthropic.com"]
    )
    status = wait_for(lambda: (s := kube.status(ns, "claude"))["observedGeneration"] == 4 and s, 15, "generation 4")
    assert set(status["tokens"]) == {"GITHUB_TOKEN"}  # the removed secret's token is gone


def test_spec_the_sidecar_would_reject_is_invalid_and_carries_no_values(kube, ns, real):
    kube.secret(ns, "anthropic", {"api-key": real()})
    kube.session(ns, "claude", [anthropic(hosts=["*.com"])])  # passes the CRD pattern, not the host parser
    status = kube.wait_phase(ns, "claude", n.PHASE_INVALID)
    assert status["conditions"][0]["reason"] == "InvalidSpec" and "wildcard" in status["conditions"][0]["message"]
    assert kube.session_file(ns, "claude")["secrets"] == []


def test_short_ttl_expires_and_revokes(kube, ns, real):
    kube.secret(ns, "anthropic", {"api-key": real()})
    kube.session(ns, "short", [anthropic()], ttl="3s")
    tokens = kube.wait_phase(ns, "short", n.PHASE_READY)["tokens"]
    assert kube.session_file(ns, "short")["secrets"]
    status = kube.wait_phase(ns, "short", n.PHASE_EXPIRED, timeout=20)
    assert status["conditions"][0]["reason"] == "Expired" and status["tokens"] == tokens
    doc = kube.session_file(ns, "short")
    assert doc["revoked"] is True and doc["secrets"] == [] and doc["expiresAt"] == status["expiresAt"]
    assert any(e["reason"] == "Expired" for e in kube.events(ns))


def test_deletion_revokes_before_cleanup(kube, ns, real, operator):
    kube.secret(ns, "anthropic", {"api-key": real()})
    kube.session(ns, "claude", [anthropic()])
    kube.wait_phase(ns, "claude", n.PHASE_READY)
    kube.delete(n.PLURAL, "claude", ns)
    # While the finalizer holds the VaultSession (revocation grace), the file is already revoked.
    doc = wait_for(lambda: (d := kube.session_file(ns, "claude")) and d.get("revoked") and d, 15, "revoked file")
    assert doc["secrets"] == []
    assert kube.get(n.PLURAL, "claude", ns) is not None
    wait_for(lambda: kube.get(n.PLURAL, "claude", ns) is None, 30, "VaultSession gone")
    assert kube.get("secret", "oshu-vault-session-claude", ns) is None
    assert any(e["reason"] == "Revoked" for e in kube.events(ns))
    # The grace wait is expected: logged by the operator at INFO, never as an error.
    wait = operator.find_log(
        lambda r: r.get("msg") == "revoked session kept for kubelets" and r.get("session") == f"{ns}/claude"
    )
    assert wait is not None and wait["level"] == "info" and 0 < wait["delete_in_seconds"] <= 2
    assert not [
        r
        for r in operator.log_records()
        if r.get("level") == "error" and "failed temporarily" in r["msg"] and f"{ns}/claude" in str(r.get("object"))
    ]


def test_operator_restart_keeps_tokens(kube, ns, real, operator):
    kube.secret(ns, "anthropic", {"api-key": real()})
    kube.session(ns, "claude", [anthropic()])
    tokens = kube.wait_phase(ns, "claude", n.PHASE_READY)["tokens"]
    ca = kube.session_secret(ns, "claude")[n.KEY_CA_CERT]
    operator.restart()
    kube.session(ns, "claude", [anthropic()], egress=["api.anthropic.com"])  # a re-reconcile after restart
    wait_for(lambda: kube.status(ns, "claude").get("observedGeneration") == 2, 20, "reconciled after restart")
    assert kube.status(ns, "claude")["tokens"] == tokens
    assert kube.session_file(ns, "claude")["secrets"][0]["sealed"] == tokens["ANTHROPIC_API_KEY"]
    assert kube.session_secret(ns, "claude")[n.KEY_CA_CERT] == ca


def test_lost_session_secret_is_rebuilt_with_the_same_tokens(kube, ns, real, operator):
    kube.secret(ns, "anthropic", {"api-key": real()})
    kube.session(ns, "claude", [anthropic()])
    tokens = kube.wait_phase(ns, "claude", n.PHASE_READY)["tokens"]
    kube.delete("secret", "oshu-vault-session-claude", ns, wait=True)
    operator.restart()  # resume re-reconciles every session
    doc = wait_for(lambda: kube.session_file(ns, "claude"), 20, "session Secret rebuilt")
    assert doc["secrets"][0]["sealed"] == tokens["ANTHROPIC_API_KEY"]


def test_metrics_and_health(kube, ns, real, operator):
    kube.secret(ns, "anthropic", {"api-key": real()})
    kube.session(ns, "claude", [anthropic()])
    kube.wait_phase(ns, "claude", n.PHASE_READY)
    assert operator.get("/healthz")[0] == 200 and operator.get("/readyz")[0] == 200
    assert operator.metric("oshu_vault_sessions", phase="Ready") >= 1
    assert operator.metric("oshu_vault_reconciles_total", result="ok") >= 1
    text = operator.metrics_text()
    for name in (
        "oshu_vault_reconcile_errors_total",
        "oshu_vault_injections_total",
        "oshu_vault_admission_duration_seconds",
        "process_resident_memory_bytes",
    ):
        assert f"# TYPE {name.removesuffix('_total')}" in text
