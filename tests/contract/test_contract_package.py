"""The contract's home (issue 8): one definition of each part, imported by both sides, tied to the CRD.

- neither the operator nor the sidecar imports the other, and the contract imports neither;
- the sealed-token format is written down once (tokens.py), not in each package;
- the substitution locations are one enum, equal to the CRD's `locations` enum, and the
  sidecar maps every member to the substitution code of that place in a request;
- the operator writes session files only through the contract (`new_binding`,
  `new_session`, `Session.to_json`) and reads a previous one only with `recorded_tokens`.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from oshu_contract.hosts import HostPattern
from oshu_contract.locations import DEFAULT_LOCATIONS, Location, LocationError, parse_locations
from oshu_contract.session import (
    SessionError,
    loads_session,
    new_binding,
    new_sealed_token,
    new_session,
    parse_session,
    recorded_tokens,
)
from oshu_contract.tokens import SEALED_RE, is_sealed_token
from oshu_sidecar.policy import SUBSTITUTES, HostPlan, Policy

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"oshu_contract": ROOT / "contract", "oshu_sidecar": ROOT / "sidecar", "oshu_operator": ROOT / "operator"}
CRD = ROOT / "charts" / "oshu-vault" / "crds" / "vaultsessions.vault.oshu.dev.yaml"
VALUE = "sk-real-value-0123456789"


def imported_packages(package: str) -> dict[str, set[str]]:
    """Module path -> the top-level oshu_* packages it imports (absolute imports; relative ones stay inside)."""
    out: dict[str, set[str]] = {}
    for path in sorted((PACKAGES[package] / package).rglob("*.py")):
        tops: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                tops |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops.add(node.module.split(".")[0])
        out[str(path.relative_to(ROOT))] = {t for t in tops if t.startswith("oshu_") and t != package}
    return out


@pytest.mark.parametrize(
    "package, allowed",
    [
        ("oshu_contract", set()),
        ("oshu_sidecar", {"oshu_contract"}),
        ("oshu_operator", {"oshu_contract"}),
    ],
)
def test_each_side_imports_only_the_contract(package: str, allowed: set[str]) -> None:
    found = imported_packages(package)
    assert found, f"no modules found for {package}"
    wrong = {path: tops - allowed for path, tops in found.items() if tops - allowed}
    assert not wrong, f"{package} imports outside its layer: {wrong}"


def test_the_sealed_token_format_is_written_down_once() -> None:
    """No product module but tokens.py spells the token's prefix or pattern (the others import them)."""
    spelled = []
    for package, root in PACKAGES.items():
        for path in (root / package).rglob("*.py"):
            text = path.read_text()
            if re.search(r"""SEALED_\[|["']SEALED_["']""", text) and path.name != "tokens.py":
                spelled.append(str(path.relative_to(ROOT)))
    assert spelled == []
    token = new_sealed_token()
    assert is_sealed_token(token) and SEALED_RE.match(token)
    assert not is_sealed_token("SEALED_short") and not is_sealed_token(None)


def crd_locations_enum() -> list[str]:
    doc = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in doc["spec"]["versions"] if v.get("storage")]
    secret = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["secrets"]["items"]
    return secret["properties"]["locations"]["items"]["enum"]


def test_the_crd_locations_enum_is_the_contracts() -> None:
    assert sorted(crd_locations_enum()) == sorted(loc.value for loc in Location)
    assert {Location.HEADERS} == DEFAULT_LOCATIONS


def test_every_location_maps_to_the_substitution_code_of_that_place() -> None:
    assert set(SUBSTITUTES) == set(Location)
    plan_fields = {f.name for f in fields(HostPlan)}
    assert set(SUBSTITUTES.values()) <= plan_fields and len(set(SUBSTITUTES.values())) == len(Location)
    for loc in Location:  # a secret allowed in one place only is planned for that place only
        binding = new_binding("K", new_sealed_token(), VALUE, [HostPattern.parse("api.example.com")], [loc.value])
        plan = Policy(new_session("s", [binding])).plan("api.example.com", 443)
        for other, field in SUBSTITUTES.items():
            assert len(getattr(plan, field)) == (1 if other is loc else 0), (loc, field)


@pytest.mark.parametrize("raw", [[], ["headers", "cookies"], "headers", [1]])
def test_unknown_or_empty_locations_are_refused(raw: object) -> None:
    with pytest.raises(LocationError):
        parse_locations(raw)


def test_the_writer_checks_what_the_reader_checks() -> None:
    """`new_binding` refuses exactly what `parse_session` refuses, with the same message."""
    hosts = [HostPattern.parse("api.example.com")]
    cases = {
        "short value": ("K", new_sealed_token(), "short"),
        "bad token": ("K", "SEALED_x", VALUE),
        "token in value": ("K", new_sealed_token(), "x" + new_sealed_token()),
        "edge space": ("K", new_sealed_token(), VALUE + " "),
    }
    for what, (name, sealed, value) in cases.items():
        with pytest.raises(SessionError) as built:
            new_binding(name, sealed, value, hosts)
        with pytest.raises(SessionError) as parsed:
            parse_session(
                {
                    "session": "s",
                    "secrets": [{"name": name, "sealed": sealed, "value": value, "hosts": ["api.example.com"]}],
                }
            )
        assert str(built.value) == str(parsed.value), what
    with pytest.raises(SessionError, match="overlap"):
        token = new_sealed_token()
        new_session("s", [new_binding("A", token, VALUE, hosts), new_binding("B", token + "x", VALUE, hosts)])


def test_what_the_writer_builds_the_reader_reads_back() -> None:
    bindings = [
        new_binding("A", new_sealed_token(), VALUE, [HostPattern.parse("api.example.com:8443")], ["body", "headers"]),
        new_binding("B", new_sealed_token(), VALUE + "b", [HostPattern.parse("*.example.org")]),
    ]
    session = new_session("agents/a", bindings, egress=[HostPattern.parse("pypi.org")])
    data = session.to_json()
    assert loads_session(data) == session
    doc = json.loads(data)
    assert doc["secrets"][0]["locations"] == ["body", "headers"] and "locations" not in doc["secrets"][1]
    assert recorded_tokens(data) == {"A": bindings[0].sealed, "B": bindings[1].sealed}


def test_recorded_tokens_reads_what_the_strict_reader_would_refuse() -> None:
    """A previous file that no longer parses (a value since made invalid) still says which tokens agents hold."""
    token = new_sealed_token()
    doc = {
        "session": "s",
        "revoked": True,
        "secrets": [
            {"name": "A", "sealed": token, "value": "bad"},
            {"name": "B", "sealed": "not-a-token"},
            {"name": "no such name!", "sealed": new_sealed_token()},
            "junk",
        ],
    }
    with pytest.raises(SessionError):
        loads_session(json.dumps(doc))
    assert recorded_tokens(json.dumps(doc).encode()) == {"A": token}
    for junk in (None, b"", b"{not json", b"[]", b'{"secrets": 3}', b"\xff"):
        assert recorded_tokens(junk) == {}
