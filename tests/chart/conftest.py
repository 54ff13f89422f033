"""Fixtures for the chart tests: the pinned helm, rendering, a control plane of their own.

The install tests run a cluster-wide operator and register cluster-wide webhooks, as the chart
does by default; sharing a control plane with another suite's operator (tests/operator runs
one for the whole session) would have two operators reconcile the same VaultSessions. So they
get their own local control plane (about 10 s to start), stopped after the last chart test.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from oshu_e2e import chart
from oshu_localkube import LocalCluster


@pytest.fixture(scope="session")
def helm(kube_binaries: dict[str, Path]) -> Path:
    return kube_binaries["helm"]


Render = Callable[..., list[chart.Doc]]


@pytest.fixture(scope="session")
def render(helm: Path) -> Render:
    """render(values=None, release="oshu-vault", namespace="oshu-system") -> rendered objects (CRDs included)."""

    def _render(
        values: dict[str, Any] | None = None,
        *,
        release: str = "oshu-vault",
        namespace: str = "oshu-system",
        tests: bool = False,
    ) -> list[chart.Doc]:
        extra = ["--include-crds"] + ([] if tests else ["--skip-tests"])
        return chart.documents(chart.template(helm, release=release, namespace=namespace, values=values, extra=extra))

    return _render


@pytest.fixture(scope="session")
def chart_cluster(kube_binaries: dict[str, Path]) -> Iterator[LocalCluster]:
    with LocalCluster() as cluster:
        yield cluster


@pytest.fixture
def fresh_namespace(chart_cluster: LocalCluster) -> Iterator[Callable[[str], str]]:
    """fresh_namespace(stem) -> a new namespace name (created); all deleted after the test."""
    made: list[str] = []

    def _make(stem: str) -> str:
        name = f"{stem}-{secrets.token_hex(3)}"
        chart_cluster.kubectl("create", "namespace", name)
        made.append(name)
        return name

    yield _make
    for name in made:
        chart_cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)
