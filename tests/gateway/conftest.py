"""Fixtures: one test upstream and one real gateway process per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from oshu_testkit.gateway_process import GatewayProcess
from oshu_testkit.upstreams import Upstream


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream() as up:
        yield up


@pytest.fixture(scope="module")
def gateway(upstream: Upstream) -> Iterator[GatewayProcess]:
    with GatewayProcess(upstream) as gw:
        yield gw
