"""Fixtures: one test upstream and one real gateway process per module; the pinned Claude Code CLI;
helpers that run a sandbox's program with exactly the environment and files the SDK gives it."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from oshu_vault_sdk import Session

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


def run_sandboxed(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """A sandbox's program with exactly `env`, its output captured as text; the caller checks the exit status."""
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def write_sandbox_files(s: Session, credentials_dir: Path) -> dict[str, str]:
    """Write what `sandbox_files()` gives a sandbox under `credentials_dir`; returns path -> content."""
    files = s.sandbox_files(str(credentials_dir))
    for path, content in files.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(content)
    return files
