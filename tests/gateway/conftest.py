"""Fixtures: one test upstream and one real gateway process per module; the pinned Claude Code CLI."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from oshu_testkit.gateway_process import GatewayProcess
from oshu_testkit.upstreams import Upstream

#: The Claude Code CLI version the tests run (npm, installed once into ~/.cache/oshu-vault).
CLAUDE_CODE_VERSION = "2.1.332"


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
    home = (
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        / "oshu-vault"
        / f"claude-code-{CLAUDE_CODE_VERSION}"
    )
    binary = home / "node_modules" / ".bin" / "claude"
    if not binary.exists():
        home.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", f"@anthropic-ai/claude-code@{CLAUDE_CODE_VERSION}"],
            cwd=home,
            check=True,
            capture_output=True,
            timeout=600,
        )
    return binary
