"""A private upstream CA reaches the sidecar only, through the session Secret; the revocation
grace is checked against the kubelet's worst-case Secret volume refresh."""

from __future__ import annotations

import base64
import copy
from datetime import timedelta
from pathlib import Path

import pytest

from oshu_contract.pki import CertificateAuthority, KeyPair, new_ca
from oshu_operator import material
from oshu_operator import names as n
from oshu_operator.cli import build_parser, config_from_args
from oshu_operator.config import KUBELET_SECRET_SYNC_BOUND, OperatorConfig, SidecarConfig, revocation_grace_problem
from oshu_operator.injection import plan, sidecar_container, volumes
from oshu_operator.reconciler import revoked_message

from .test_injection_plan import CFG, pod, session

UPSTREAM = new_ca("private upstream CA")
WITH_CA = OperatorConfig(
    sidecar=SidecarConfig(image=CFG.sidecar.image, upstream_ca_pem=UPSTREAM.cert_pem), no_proxy=CFG.no_proxy
)


def _injected(cfg: OperatorConfig) -> dict:
    out = copy.deepcopy(pod())
    plan(out, session(), cfg).apply(out)  # plan() runs the admission rules on the final spec too
    return out


def test_upstream_ca_is_passed_to_the_sidecar_from_its_session_volume():
    args = sidecar_container(WITH_CA.sidecar)["args"]
    i = args.index("--upstream-ca-file")
    assert args[i + 1] == n.SESSION_UPSTREAM_CA_PATH
    assert n.SESSION_UPSTREAM_CA_PATH.startswith(n.SESSION_MOUNT_DIR + "/")
    assert "--upstream-ca-file" not in sidecar_container(CFG.sidecar)["args"]


def test_upstream_ca_changes_nothing_for_the_app_containers():
    plain, with_ca = _injected(CFG), _injected(WITH_CA)
    assert plain["spec"]["containers"] == with_ca["spec"]["containers"]
    assert plain["spec"]["volumes"] == with_ca["spec"]["volumes"]
    # the app containers' CA volume projects two keys, never the upstream CA (nor the session file)
    ca_vol = next(v for v in volumes("s") if v["name"] == n.VOLUME_CA)
    assert {i["key"] for i in ca_vol["secret"]["items"]} == {n.KEY_CA_CERT, n.KEY_CA_BUNDLE}
    sidecar = with_ca["spec"]["initContainers"][0]
    assert [m["name"] for m in sidecar["volumeMounts"]] == [n.VOLUME_SESSION, n.VOLUME_TMP]


def test_session_secret_carries_the_upstream_ca_only_when_configured():
    ca = new_ca("session")
    without = material.secret_data(b"{}", ca)
    assert n.KEY_UPSTREAM_CA not in without
    data = material.secret_data(b"{}", ca, UPSTREAM.cert_pem)
    assert base64.b64decode(data[n.KEY_UPSTREAM_CA]) == UPSTREAM.cert_pem
    assert {k: v for k, v in data.items() if k != n.KEY_UPSTREAM_CA} == without


def test_upstream_ca_file_is_checked_and_cleaned():
    other = new_ca("second upstream CA")
    pem = b"# comment a user left\n" + UPSTREAM.cert_pem + b"\n" + other.cert_pem
    assert material.upstream_ca(pem, "f") == UPSTREAM.cert_pem + other.cert_pem
    leaf = CertificateAuthority.from_pem(UPSTREAM.cert_pem, UPSTREAM.key_pem).issue_leaf(["api.test"])
    with pytest.raises(ValueError, match="not a CA certificate"):
        material.upstream_ca(leaf.cert_pem, "f")
    for junk in (b"", b"not a certificate", UPSTREAM.key_pem):
        with pytest.raises(ValueError, match="no PEM certificate"):
            material.upstream_ca(junk, "f")


def _write(tmp_path: Path, name: str, pem: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(pem)
    return str(path)


def test_cli_reads_the_upstream_ca_from_flag_or_environment(tmp_path, monkeypatch):
    good = _write(tmp_path, "ca.pem", UPSTREAM.cert_pem)
    cfg = config_from_args(build_parser().parse_args(["--sidecar-upstream-ca-file", good]))
    assert cfg.sidecar.upstream_ca_pem == UPSTREAM.cert_pem
    assert config_from_args(build_parser().parse_args([])).sidecar.upstream_ca_pem == b""
    monkeypatch.setenv("OSHU_SIDECAR_UPSTREAM_CA_FILE", good)
    assert config_from_args(build_parser().parse_args([])).sidecar.upstream_ca_pem == UPSTREAM.cert_pem
    leaf: KeyPair = CertificateAuthority.from_pem(UPSTREAM.cert_pem, UPSTREAM.key_pem).issue_leaf(["api.test"])
    for bad in (_write(tmp_path, "leaf.pem", leaf.cert_pem), str(tmp_path / "missing.pem")):
        with pytest.raises(SystemExit, match="--sidecar-upstream-ca-file"):
            config_from_args(build_parser().parse_args(["--sidecar-upstream-ca-file", bad]))


@pytest.mark.parametrize(
    ("seconds", "safe"), [(2, False), (60, False), (90, False), (91, True), (180, True), (600, True)]
)
def test_revocation_grace_must_outlast_the_kubelet_sync(seconds, safe):
    problem = revocation_grace_problem(timedelta(seconds=seconds))
    assert (problem is None) is safe
    message = revoked_message("oshu-vault-session-s", timedelta(seconds=seconds))
    assert message.startswith(f"session revoked; Secret oshu-vault-session-s is deleted after {seconds}s")
    assert ("warning:" in message) is not safe


def test_default_grace_is_safe_with_margin():
    default = config_from_args(build_parser().parse_args([])).revocation_grace
    assert default == OperatorConfig().revocation_grace
    assert default >= 2 * KUBELET_SECRET_SYNC_BOUND and revocation_grace_problem(default) is None


def test_reconcile_plan_writes_the_upstream_ca_and_a_new_flag_rewrites_the_secret():
    from oshu_operator import reconcile_plan as rp

    from .test_reconcile_plan import NOW, REFS, UID, session_body, stored, with_status

    body = session_body()
    plain = rp.plan(body, None, REFS, NOW, OperatorConfig())
    assert n.KEY_UPSTREAM_CA not in plain.secret["data"]
    # the operator restarted with --sidecar-upstream-ca-file: the stored Secret gains the key
    again = rp.plan(with_status(body, plain), stored(plain), REFS, NOW, WITH_CA)
    assert base64.b64decode(again.secret["data"][n.KEY_UPSTREAM_CA]) == UPSTREAM.cert_pem
    assert {k: v for k, v in again.secret["data"].items() if k != n.KEY_UPSTREAM_CA} == plain.secret["data"]
    assert rp.secret_write(stored(plain), again.secret, UID)[0] == "replace"
