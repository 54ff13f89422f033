"""The chart's enforcement.default reaches the operator's --default-enforcement, and nothing else is accepted."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from oshu_e2e import chart
from oshu_e2e.paths import CHART_DIR
from oshu_operator import names as n
from oshu_operator.cli import build_parser, config_from_args
from oshu_operator.config import OperatorConfig


def test_the_default_is_the_operators() -> None:
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    assert values["enforcement"]["default"] == OperatorConfig().default_enforcement == n.ENFORCEMENT_PROXY


@pytest.mark.parametrize("enforcement", [None, *n.ENFORCEMENTS])
def test_enforcement_default_reaches_the_operator(render, enforcement: str | None) -> None:
    docs = render({"enforcement": {"default": enforcement}} if enforcement else {})
    args = chart.operator_container(docs)["args"]
    assert f"--default-enforcement={enforcement or n.ENFORCEMENT_PROXY}" in args
    assert config_from_args(build_parser().parse_args(args)).default_enforcement == (enforcement or n.ENFORCEMENT_PROXY)


def test_the_schema_refuses_other_enforcements(helm: Path) -> None:
    with pytest.raises(chart.RenderError) as failure:
        chart.template(helm, release="oshu-vault", namespace="oshu-system", set_values=["enforcement.default=iptables"])
    assert "at '/enforcement/default': value must be one of 'proxy', 'redirect'" in str(failure.value), str(
        failure.value
    )
