"""Fixtures: one test upstream and one real gateway process per module; the pinned Claude Code CLI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from oshu_testkit.claude_code import claude_binary
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


@pytest.fixture(scope="session")
def claude() -> Path:
    return claude_binary()
