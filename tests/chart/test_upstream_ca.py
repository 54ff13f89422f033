"""sidecar.upstreamCA: the chart hands a private upstream CA to the operator (a ConfigMap in the
release namespace, mounted read-only), which checks it and gives it to the sidecars."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from oshu_contract.pki import new_ca
from oshu_e2e import chart
from oshu_operator.cli import build_parser, config_from_args

CA = new_ca("private upstream CA").cert_pem.decode()
OTHER = new_ca("another upstream CA").cert_pem.decode()


def _deployment(docs: list[chart.Doc]) -> dict:
    return chart.find(docs, "Deployment")["spec"]["template"]


def _ca_flag(docs: list[chart.Doc]) -> str | None:
    args = build_parser().parse_args(chart.operator_container(docs)["args"])
    return args.sidecar_upstream_ca_file


def _mounted_file(docs: list[chart.Doc], flag: str) -> tuple[str, str]:
    """(ConfigMap name, key) of the file the flag names, through the operator's mounts."""
    mount = next(m for m in chart.operator_container(docs)["volumeMounts"] if m["name"] == "upstream-ca")
    assert mount["readOnly"] is True
    path = PurePosixPath(flag)
    assert str(path.parent) == mount["mountPath"]
    volume = next(v for v in _deployment(docs)["spec"]["volumes"] if v["name"] == "upstream-ca")
    items = volume["configMap"]["items"]
    assert [i["path"] for i in items] == [path.name]
    return volume["configMap"]["name"], items[0]["key"]


def test_default_has_no_upstream_ca(render) -> None:
    docs = render()
    assert _ca_flag(docs) is None
    assert not [v for v in _deployment(docs)["spec"]["volumes"] if v["name"] == "upstream-ca"]
    assert not chart.find_all(docs, "ConfigMap")


def test_inline_pem_becomes_a_configmap_the_operator_reads(render, tmp_path: Path) -> None:
    docs = render({"sidecar": {"upstreamCA": {"pem": CA + OTHER}}})
    flag = _ca_flag(docs)
    assert flag
    name, key = _mounted_file(docs, flag)
    configmap = chart.find(docs, "ConfigMap", name)
    assert configmap["metadata"]["namespace"] == "oshu-system"
    # what the kubelet would put at the flag's path, read by the operator's own CLI
    (tmp_path / key).write_text(configmap["data"][key])
    args = [a for a in chart.operator_container(docs)["args"] if not a.startswith("--sidecar-upstream-ca-file")]
    config = config_from_args(build_parser().parse_args([*args, f"--sidecar-upstream-ca-file={tmp_path / key}"]))
    assert config.sidecar.upstream_ca_pem == (CA + OTHER).encode()


def test_a_new_pem_rolls_the_operator(render) -> None:
    def checksum(pem: str) -> str:
        return _deployment(render({"sidecar": {"upstreamCA": {"pem": pem}}}))["metadata"]["annotations"][
            "checksum/upstream-ca"
        ]

    assert checksum(CA) != checksum(OTHER)


def test_existing_configmap_is_mounted_by_name_and_key(render) -> None:
    docs = render({"sidecar": {"upstreamCA": {"configMap": {"name": "corp-trust", "key": "bundle.pem"}}}})
    flag = _ca_flag(docs)
    assert flag and _mounted_file(docs, flag) == ("corp-trust", "bundle.pem")
    assert not chart.find_all(docs, "ConfigMap")  # the chart makes none of its own


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"pem": "not a certificate"}, "at '/sidecar/upstreamCA/pem': 'not a certificate' does not match pattern"),
        ({"pem": CA, "configMap": {"name": "corp-trust", "key": "ca.crt"}}, "at '/sidecar/upstreamCA': 'not' failed"),
        ({"configMap": {"name": "Bad_Name", "key": "ca.crt"}}, "at '/sidecar/upstreamCA/configMap/name'"),
    ],
)
def test_schema_refuses_bad_upstream_ca_values(helm: Path, values: dict, message: str) -> None:
    with pytest.raises(chart.RenderError) as failure:
        chart.template(helm, release="oshu-vault", namespace="oshu-system", values={"sidecar": {"upstreamCA": values}})
    assert message in str(failure.value), str(failure.value)
