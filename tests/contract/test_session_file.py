"""The session-file contract: what the operator writes is exactly what the sidecar reads."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from oshu_contract.hosts import HostPattern, HostPatternError, split_host_port
from oshu_contract.pki import CertificateAuthority, new_ca
from oshu_contract.session import (
    SecretBinding,
    Session,
    SessionError,
    load_session_file,
    loads_session,
    new_sealed_token,
    parse_session,
)

REAL = "sk-ant-real-value-0123456789"


def _doc(**over):
    doc = {
        "session": "agents/claude",
        "expiresAt": "2026-11-26T12:00:00Z",
        "secrets": [
            {"name": "ANTHROPIC_API_KEY", "sealed": new_sealed_token(), "value": REAL, "hosts": ["api.anthropic.com"]}
        ],
    }
    doc.update(over)
    return doc


def test_round_trip_is_lossless():
    s = parse_session(_doc(egress=["*.github.com", "registry.npmjs.org:8443"], revoked=True))
    again = loads_session(s.to_json())
    assert again == s
    assert again.egress is not None and again.egress[1].port == 8443
    assert again.expires_at == datetime(2026, 11, 26, 12, tzinfo=UTC)


def test_minimal_form_from_the_issue_parses():
    s = loads_session(json.dumps({"session": "a", "secrets": []}))
    assert s.secrets == () and s.expires_at is None and s.egress is None and not s.revoked


def test_sealed_tokens_are_found_in_bytes_with_the_one_definition():
    from oshu_contract.tokens import SEALED_IN_BYTES_RE, SEALED_RE

    token = new_sealed_token()
    found = SEALED_IN_BYTES_RE.findall(b"Authorization: Bearer " + token.encode() + b"\r\nX: SEALED_short\r\n")
    assert found == [token.encode()] and SEALED_RE.match(token)
    assert SEALED_IN_BYTES_RE.pattern.decode() == SEALED_RE.pattern.strip("^$")


def test_sealed_tokens_are_unique_and_long():
    tokens = {new_sealed_token() for _ in range(200)}
    assert len(tokens) == 200
    assert all(t.startswith("SEALED_") and len(t) == 7 + 40 for t in tokens)


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda d: d["secrets"][0].update(name="1BAD"), "environment variable name"),
        (lambda d: d["secrets"][0].update(sealed="SEALED_short"), "sealed must look like"),
        (lambda d: d["secrets"][0].update(value="short"), "characters long"),
        (lambda d: d["secrets"][0].update(value=REAL + "\r\nX-Evil: 1"), "printable ASCII"),
        (lambda d: d["secrets"][0].update(value=REAL + "\n"), "printable ASCII"),
        (lambda d: d["secrets"][0].update(kind="ldap"), "kind must be one of"),
        (lambda d: d["secrets"][0].update(hosts=[]), "at least one host"),
        (lambda d: d["secrets"][0].update(hosts=["*.com"]), "not a TLD"),
        (lambda d: d["secrets"][0].update(hosts=["bad host"]), "not a valid DNS name"),
        (lambda d: d["secrets"][0].update(locations=["cookies"]), "locations"),
        (lambda d: d.update(expiresAt="tomorrow"), "RFC 3339"),
        (lambda d: d.update(expiresAt="2026-11-26T12:00:00"), "timezone"),
        (lambda d: d.update(schemaVersion=2), "schemaVersion"),
        (lambda d: d["secrets"].append(dict(d["secrets"][0], sealed=new_sealed_token())), "more than once"),
    ],
)
def test_bad_documents_are_refused_without_leaking_the_value(mutate, fragment):
    doc = _doc()
    mutate(doc)
    with pytest.raises(SessionError) as err:
        parse_session(doc)
    assert fragment in str(err.value)
    assert REAL not in str(err.value)


def test_value_is_hidden_from_repr():
    s = parse_session(_doc())
    assert REAL not in repr(s) and REAL not in repr(s.secrets[0])


def test_load_session_file_names_the_path(tmp_path):
    with pytest.raises(SessionError, match="cannot read session file"):
        load_session_file(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"session": ')
    with pytest.raises(SessionError, match="not valid JSON"):
        load_session_file(bad)


def test_expiry():
    s = parse_session(_doc())
    assert not s.is_expired(datetime(2026, 11, 26, 11, 59, tzinfo=UTC))
    assert s.is_expired(datetime(2026, 11, 26, 12, 0, tzinfo=UTC))


@pytest.mark.parametrize(
    "pattern, host, port, expected",
    [
        ("api.anthropic.com", "api.anthropic.com", 443, True),
        ("API.Anthropic.com.", "api.anthropic.com", 443, True),
        ("api.anthropic.com", "api.anthropic.com", 8443, False),
        ("api.anthropic.com:8443", "api.anthropic.com", 8443, True),
        ("*.github.com", "api.github.com", 443, True),
        ("*.github.com", "a.b.github.com", 443, True),
        ("*.github.com", "github.com", 443, False),
        ("*.github.com", "evilgithub.com", 443, False),
        ("127.0.0.1:9000", "127.0.0.1", 9000, True),
    ],
)
def test_host_patterns(pattern, host, port, expected):
    assert HostPattern.parse(pattern).matches(host, port) is expected


@pytest.mark.parametrize(
    "bad", ["", "*", "*.com", "a..b", "-a.com", "a.com:0", "a.com:", "[::1]:", "a.com:99999", "*.1.2.3.4"]
)
def test_bad_host_patterns(bad):
    with pytest.raises(HostPatternError):
        HostPattern.parse(bad)


def test_split_host_port_ipv6():
    assert split_host_port("[::1]:8443") == ("::1", 8443)
    assert str(HostPattern.parse("[::1]:8443")) == "[::1]:8443"


def test_binding_allowed_for():
    b = SecretBinding(name="K", sealed=new_sealed_token(), value=REAL, hosts=(HostPattern.parse("*.example.com"),))
    assert b.allowed_for("a.example.com", 443) and not b.allowed_for("example.com", 443)
    assert isinstance(Session(session="x", secrets=(b,)).to_json(), bytes)


def test_ca_signs_leaves_that_fit_it():
    ca_pair = new_ca("session agents/claude", validity=timedelta(hours=1), permitted_dns=["api.anthropic.com"])
    ca = CertificateAuthority.from_pem(ca_pair.cert_pem, ca_pair.key_pem)
    leaf = ca.issue_leaf(["api.anthropic.com"], validity=timedelta(days=365))
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(leaf.cert_pem)
    assert cert.issuer == ca.cert.subject
    assert cert.not_valid_after_utc <= ca.not_after  # never outlives the CA
    assert b"PRIVATE KEY" not in repr(leaf).encode()
    other = new_ca("other")
    with pytest.raises(ValueError):
        CertificateAuthority.from_pem(ca_pair.cert_pem, other.key_pem)
