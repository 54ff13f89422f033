"""Spec parsing, durations, sealed-token stability, the session CA and status patches (pure)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509

from oshu_contract.hosts import HostPattern
from oshu_contract.pki import CertificateAuthority
from oshu_contract.session import Session, loads_session, new_sealed_token, recorded_tokens
from oshu_operator import material
from oshu_operator import names as n
from oshu_operator.duration import DurationError, format_duration, parse_duration
from oshu_operator.spec import SpecError, parse_spec
from oshu_operator.status import Outcome, changed, status_patch

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def hosts(*names: str) -> tuple[HostPattern, ...]:
    return tuple(HostPattern.parse(h) for h in names)


@pytest.mark.parametrize(
    "text, seconds",
    [("8h", 28800), ("90m", 5400), ("1h30m", 5400), ("1.5h", 5400), ("2s", 2), ("500ms", 0.5), ("1h0m10s", 3610)],
)
def test_durations(text, seconds):
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "8", "h", "1d", "-1h", "1h 30m", 8, None, "1H"])
def test_bad_durations(text):
    with pytest.raises(DurationError):
        parse_duration(text)


def test_format_duration():
    assert format_duration(timedelta(hours=1, minutes=30)) == "1h30m"
    assert format_duration(timedelta(0)) == "0s"


def spec(**over):
    base = {
        "secrets": [
            {
                "name": "ANTHROPIC_API_KEY",
                "secretKeyRef": {"name": "anthropic", "key": "api-key"},
                "hosts": ["api.anthropic.com"],
            }
        ]
    }
    base.update(over)
    return base


def test_parse_spec_full():
    s = parse_spec(
        spec(
            ttl="8h",
            egress=["api.anthropic.com", "*.github.com"],
            secrets=[
                {
                    "name": "A",
                    "secretKeyRef": {"name": "s", "key": "k"},
                    "hosts": ["a.test", "*.b.test:8443"],
                    "locations": ["headers", "body"],
                }
            ],
        )
    )
    assert s.ttl == timedelta(hours=8) and [str(h) for h in s.egress or ()] == ["api.anthropic.com", "*.github.com"]
    (sec,) = s.secrets
    assert sec.secret_name == "s" and sec.key == "k" and sec.locations == {"headers", "body"}
    assert [str(h) for h in s.intercepted_hosts] == ["*.b.test:8443", "a.test"]


@pytest.mark.parametrize(
    "over, match",
    [
        ({"secrets": []}, "at least one"),
        (
            {"secrets": [{"name": "1BAD", "secretKeyRef": {"name": "s", "key": "k"}, "hosts": ["a.test"]}]},
            "environment",
        ),
        (
            {"secrets": [{"name": "HTTPS_PROXY", "secretKeyRef": {"name": "s", "key": "k"}, "hosts": ["a.test"]}]},
            "set by the injection",
        ),
        ({"secrets": [{"name": "A", "secretKeyRef": {"name": "S_", "key": "k"}, "hosts": ["a.test"]}]}, "Secret name"),
        ({"secrets": [{"name": "A", "secretKeyRef": {"name": "s", "key": "k/"}, "hosts": ["a.test"]}]}, "Secret key"),
        ({"secrets": [{"name": "A", "secretKeyRef": {"name": "s", "key": "k"}, "hosts": []}]}, "at least one host"),
        ({"secrets": [{"name": "A", "secretKeyRef": {"name": "s", "key": "k"}, "hosts": ["*.com"]}]}, "wildcard"),
        (
            {"secrets": [{"name": "A", "secretKeyRef": {"name": "s", "key": "k"}, "hosts": ["a.test"]}] * 2},
            "more than once",
        ),
        ({"ttl": "forever"}, "spec.ttl"),
        ({"ttl": "0s"}, "at least 1s"),
        ({"egress": ["bad host"]}, "spec.egress"),
    ],
)
def test_parse_spec_errors(over, match):
    with pytest.raises(SpecError, match=match):
        parse_spec(spec(**over))


def test_tokens_are_kept_from_status_then_file_and_minted_otherwise():
    a, b = new_sealed_token(), new_sealed_token()
    file_tokens = recorded_tokens(json.dumps({"secrets": [{"name": "B", "sealed": b}]}).encode())
    out = material.stable_tokens(["A", "B", "C"], {"A": a}, file_tokens)
    assert out["A"] == a and out["B"] == b and out["C"].startswith("SEALED_") and out["C"] not in (a, b)
    assert material.stable_tokens(["A"], {"A": "not-a-token"})["A"].startswith("SEALED_")
    # the same token twice is never reused for a second name
    dup = material.stable_tokens(["A", "B"], {"A": a, "B": a})
    assert dup["A"] == a and dup["B"] != a
    assert recorded_tokens(b"{not json") == {}


def test_session_ca_is_name_constrained_and_kept_while_it_covers_the_hosts():
    ca = material.choose_ca(
        None,
        common_name="s",
        hosts=hosts("api.x.test", "*.y.test"),
        expires_at=None,
        now=NOW,
        default_validity=timedelta(days=30),
    )
    assert ca.minted
    cert = x509.load_pem_x509_certificate(ca.pair.cert_pem)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    nc = cert.extensions.get_extension_for_class(x509.NameConstraints).value
    assert sorted(g.value for g in nc.permitted_subtrees or ()) == ["api.x.test", "y.test"]
    kept = material.choose_ca(
        ca.pair,
        common_name="s",
        hosts=hosts("api.x.test"),
        expires_at=None,
        now=NOW + timedelta(days=1),
        default_validity=timedelta(days=30),
    )
    assert not kept.minted and kept.pair == ca.pair
    widened = material.choose_ca(
        ca.pair,
        common_name="s",
        hosts=hosts("api.x.test", "new.z.test"),
        expires_at=None,
        now=NOW,
        default_validity=timedelta(days=30),
    )
    assert widened.minted
    aged = material.choose_ca(
        ca.pair,
        common_name="s",
        hosts=hosts("api.x.test"),
        expires_at=None,
        now=NOW + timedelta(days=21),
        default_validity=timedelta(days=30),
    )
    assert aged.minted  # less than a third of its life left


def test_ttl_session_ca_outlives_the_session_only():
    ca = material.choose_ca(
        None,
        common_name="s",
        hosts=hosts("a.test"),
        expires_at=NOW + timedelta(hours=8),
        now=NOW,
        default_validity=timedelta(days=30),
    )
    assert NOW + timedelta(hours=8) < ca.not_after <= NOW + timedelta(hours=8) + material.CA_TTL_SLACK
    later = material.choose_ca(
        ca.pair,
        common_name="s",
        hosts=hosts("a.test"),
        expires_at=NOW + timedelta(hours=8),
        now=NOW + timedelta(hours=7),
        default_validity=timedelta(days=30),
    )
    assert not later.minted


def test_ip_literal_hosts_get_an_unconstrained_ca():
    assert material.constraint_names(hosts("127.0.0.1:8443", "a.test")) is None
    ca = material.choose_ca(
        None,
        common_name="s",
        hosts=hosts("127.0.0.1:8443"),
        expires_at=None,
        now=NOW,
        default_validity=timedelta(days=1),
    )
    cert = x509.load_pem_x509_certificate(ca.pair.cert_pem)
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.NameConstraints)


def test_secret_data_holds_file_ca_and_bundle():
    ca = material.choose_ca(
        None, common_name="s", hosts=hosts("a.test"), expires_at=None, now=NOW, default_validity=timedelta(days=1)
    )
    session = Session(session="ns/s", secrets=())
    data = material.secret_data(session.to_json(), ca.pair)
    assert set(data) == {n.KEY_SESSION_FILE, n.KEY_CA_CERT, n.KEY_CA_KEY, n.KEY_CA_BUNDLE}
    bundle = base64.b64decode(data[n.KEY_CA_BUNDLE])
    assert bundle.startswith(material.mozilla_roots()[:100]) and bundle.endswith(ca.pair.cert_pem)
    assert loads_session(base64.b64decode(data[n.KEY_SESSION_FILE])).session == "ns/s"
    CertificateAuthority.from_pem(base64.b64decode(data[n.KEY_CA_CERT]), base64.b64decode(data[n.KEY_CA_KEY]))


def test_status_patch_conditions_and_token_removal():
    out = Outcome(
        n.PHASE_READY,
        "SessionReady",
        "ok",
        tokens={"A": "SEALED_a"},
        secret_name="x",
        expires_at=NOW,
        resolved=1,
        declared=1,
    )
    old = {
        "tokens": {"A": "SEALED_a", "GONE": "SEALED_g"},
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
    }
    patch = status_patch(old, out, 3, NOW)
    assert patch["tokens"] == {"A": "SEALED_a", "GONE": None}
    (cond,) = patch["conditions"]
    assert cond["observedGeneration"] == 3 and cond["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert patch["secrets"] == "1/1" and patch["expiresAt"] == "2026-11-26T12:00:00Z"
    assert changed(old, patch)
    applied = {k: v for k, v in patch.items() if v is not None}
    applied["tokens"] = {"A": "SEALED_a"}
    assert not changed(applied, status_patch(applied, out, 3, NOW + timedelta(hours=1)))
    flipped = status_patch(applied, Outcome(n.PHASE_PENDING, "SecretNotFound", "m"), 3, NOW)
    assert flipped["conditions"][0]["status"] == "False"
    assert flipped["conditions"][0]["lastTransitionTime"] == "2026-11-26T12:00:00Z"


def test_bundle_base64_shortcut_equals_the_plain_encoding():
    pem = material.choose_ca(
        None, common_name="s", hosts=hosts("a.test"), expires_at=None, now=NOW, default_validity=timedelta(days=1)
    ).pair.cert_pem
    assert material._ca_bundle_b64(pem) == base64.b64encode(material.ca_bundle(pem)).decode()
    assert base64.b64decode(material._ca_bundle_b64(pem)).endswith(pem)
