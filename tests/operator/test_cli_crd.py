"""The CLI's documented surface, and the CRD YAML agreeing with names.py and the host parser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from oshu_contract.hosts import HostPattern, HostPatternError
from oshu_operator import names as n
from oshu_operator.cli import build_parser, config_from_args
from oshu_operator.config import OperatorConfig
from oshu_operator.webhookconfig import configuration
from oshu_testkit.operator_process import CRD_PATH

CRD = yaml.safe_load(CRD_PATH.read_text())
VERSION = CRD["spec"]["versions"][0]
SCHEMA = VERSION["schema"]["openAPIV3Schema"]
SPEC = SCHEMA["properties"]["spec"]["properties"]
SECRET_ITEM = SPEC["secrets"]["items"]


def test_console_script_help_documents_how_to_run_it():
    exe = shutil.which("oshu-operator") or str(Path(sys.executable).parent / "oshu-operator")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60, check=True).stdout
    for flag in (
        "--kubeconfig",
        "--namespace",
        "--all-namespaces",
        "--webhook-listen",
        "--webhook-cert-file",
        "--webhook-key-file",
        "--webhook-tls-secret",
        "--metrics-listen",
        "--dev-webhook",
        "--sidecar-image",
        "--sidecar-cpu-request",
        "--sidecar-memory-limit",
        "--no-proxy",
        "--revocation-grace",
        "--failure-policy",
        "vault.oshu.dev/session",
    ):
        assert flag in out, flag


def test_cli_rejects_contradictions_and_bad_values():
    p = build_parser()
    for argv in (
        ["--dev-webhook", "--webhook-tls-secret", "a/b"],
        ["--webhook-cert-file", "x"],
        ["--all-namespaces", "-n", "a"],
    ):
        with pytest.raises(SystemExit):
            config_from_args(p.parse_args(argv))
    for argv in (["--webhook-listen", "nope"], ["--revocation-grace", "1d"], ["--webhook-tls-secret", "noslash"]):
        with pytest.raises(SystemExit):
            p.parse_args(argv)
    cfg = config_from_args(
        p.parse_args(["-n", "a", "-n", "b", "--revocation-grace", "2m", "--webhook-listen", "127.0.0.1:0"])
    )
    assert cfg.namespaces == ("a", "b") and cfg.revocation_grace.total_seconds() == 120 and cfg.webhook_port == 0


def test_sidecar_ports_and_log_level_from_flags_or_env(monkeypatch):
    cfg = config_from_args(build_parser().parse_args([]))
    assert (cfg.sidecar.proxy_port, cfg.sidecar.admin_port, cfg.sidecar.log_level) == (
        n.SIDECAR_PROXY_PORT,
        n.SIDECAR_ADMIN_PORT,
        "info",
    )
    argv = ["--sidecar-proxy-port", "16080", "--sidecar-admin-port", "16090", "--sidecar-log-level", "debug"]
    cfg = config_from_args(build_parser().parse_args(argv))
    assert (cfg.sidecar.proxy_port, cfg.sidecar.admin_port, cfg.sidecar.log_level) == (16080, 16090, "debug")
    assert cfg.sidecar.proxy_url == "http://127.0.0.1:16080"
    monkeypatch.setenv("OSHU_SIDECAR_PROXY_PORT", "17080")
    monkeypatch.setenv("OSHU_SIDECAR_ADMIN_PORT", "17090")
    monkeypatch.setenv("OSHU_SIDECAR_LOG_LEVEL", "warning")
    cfg = config_from_args(build_parser().parse_args([]))
    assert (cfg.sidecar.proxy_port, cfg.sidecar.admin_port, cfg.sidecar.log_level) == (17080, 17090, "warning")
    cfg = config_from_args(build_parser().parse_args(["--sidecar-proxy-port", "18080"]))  # the command line wins
    assert cfg.sidecar.proxy_port == 18080


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--sidecar-proxy-port", "80"], {}, "from 1024 to 65535"),
        (["--sidecar-admin-port", "65536"], {}, "from 1024 to 65535"),
        (["--sidecar-admin-port", "http"], {}, "from 1024 to 65535"),
        (["--sidecar-log-level", "verbose"], {}, "invalid choice"),
        (["--sidecar-proxy-port", "15090"], {}, "give them different ports"),
        ([], {"OSHU_SIDECAR_ADMIN_PORT": "15080"}, "give them different ports"),
        ([], {"OSHU_SIDECAR_LOG_LEVEL": "verbose"}, "OSHU_SIDECAR_LOG_LEVEL='verbose': expected one of"),
        ([], {"OSHU_FAILURE_POLICY": "Maybe"}, "OSHU_FAILURE_POLICY='Maybe': expected one of Fail, Ignore"),
    ],
)
def test_bad_sidecar_settings_are_refused_with_a_message(argv, env, message):
    """Through the console script, as a user would meet them (flag or OSHU_* variable)."""
    proc = subprocess.run(
        [sys.executable, "-m", "oshu_operator", *argv, "--print-webhook-config", "x", "--webhook-service", "ns/svc"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **env},
    )
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


def test_print_webhook_config_matches_the_builder():
    exe = [sys.executable, "-m", "oshu_operator"]
    out = subprocess.run(
        [
            *exe,
            "--print-webhook-config",
            "oshu-vault",
            "--webhook-service",
            "oshu/oshu-vault-webhook",
            "--own-namespace",
            "oshu",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    printed = json.loads(out.stdout)
    want = configuration(
        "oshu-vault",
        OperatorConfig(own_namespace="oshu"),
        {"service": {"namespace": "oshu", "name": "oshu-vault-webhook", "port": 443}},
        None,
    )
    assert printed == want
    hook = printed["webhooks"][0]
    assert hook["objectSelector"] == {}  # the opt-in (label or annotation) is a matchCondition
    assert [c["name"] for c in hook["matchConditions"]] == ["opted-in"]
    assert n.LABEL_SESSION in hook["matchConditions"][0]["expression"]
    assert hook["failurePolicy"] == "Fail" and hook["sideEffects"] == "None"
    excluded = hook["namespaceSelector"]["matchExpressions"][0]["values"]
    assert set(n.SYSTEM_NAMESPACES) | {"oshu"} == set(excluded)


def test_crd_names_agree_with_names_py():
    names = CRD["spec"]["names"]
    assert CRD["metadata"]["name"] == f"{n.PLURAL}.{n.GROUP}" and CRD["spec"]["group"] == n.GROUP
    assert (names["kind"], names["plural"], names["singular"]) == (n.KIND, n.PLURAL, n.SINGULAR)
    assert tuple(names["shortNames"]) == n.SHORT_NAMES and "vs" not in names["shortNames"]
    assert VERSION["name"] == n.VERSION and VERSION["subresources"] == {"status": {}}
    assert [c["name"] for c in VERSION["additionalPrinterColumns"]][:4] == ["Ready", "Secrets", "Expires", "Age"]
    assert tuple(SCHEMA["properties"]["status"]["properties"]["phase"]["enum"]) == n.PHASES
    reserved_rule = SECRET_ITEM["x-kubernetes-validations"][0]["rule"]
    assert set(re.findall(r"'([A-Za-z_]+)'", reserved_rule)) == set(n.RESERVED_ENV_NAMES)
    assert SPEC["secrets"]["x-kubernetes-list-map-keys"] == ["name"]  # unique names, enforced by the API server
    assert "size(self.metadata.name) <= 63" in SCHEMA["x-kubernetes-validations"][0]["rule"]


def _host_rule_regexes() -> list[re.Pattern[str]]:
    rule = SECRET_ITEM["properties"]["hosts"]["items"]["x-kubernetes-validations"][0]["rule"]
    return [re.compile(r) for r in re.findall(r"matches\(r'([^']+)'\)", rule)]


@pytest.mark.parametrize(
    "host",
    [
        "api.anthropic.com",
        "*.github.com",
        "registry.npmjs.org:8443",
        "API.Example.COM.",
        "127.0.0.1",
        "127.0.0.1:8443",
        "[::1]:8443",
        "::1",
        "a-b.c-d.test",
    ],
)
def test_every_host_the_parser_accepts_passes_the_crd(host):
    HostPattern.parse(host)
    assert any(r.match(host) for r in _host_rule_regexes())


@pytest.mark.parametrize(
    "host", ["bad host", "-a.test", "a..test", "*", "http://a.test", "a.test/path", "", "*.*.test"]
)
def test_the_crd_rejects_what_the_parser_rejects(host):
    with pytest.raises(HostPatternError):
        HostPattern.parse(host)
    assert not any(r.match(host) for r in _host_rule_regexes())
