"""Operator tests: the CRD installed once, one real operator per session (helpers: oshu_testkit).

The operator runs as a subprocess (`python -m oshu_operator --dev-webhook`), exactly as
`oshu-operator` runs anywhere; the API server calls its webhook on 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from oshu_testkit.kube import SIDECAR_ARGS, Kube, real_value
from oshu_testkit.operator_process import CRD_PATH, OperatorProcess

DEV_CONFIG = "oshu-vault-test"


@pytest.fixture(scope="session")
def kube(kube_cluster) -> Kube:
    kube_cluster.kubectl("apply", "-f", str(CRD_PATH))
    kube_cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/vaultsessions.vault.oshu.dev")
    return Kube(kube_cluster)


@pytest.fixture(scope="session")
def operator(kube_cluster, kube: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    op = OperatorProcess(
        kube_cluster.kubeconfig,
        directory=tmp_path_factory.mktemp("operator"),
        webhook_config=DEV_CONFIG,
        revocation_grace="2s",
        log_level="DEBUG",  # the leak scan reads the most verbose log there is
        args=[*SIDECAR_ARGS, "--resync-interval", "30s"],
    )
    op.start()
    yield op
    op.stop()
    kube_cluster.kubectl("delete", "mutatingwebhookconfiguration", DEV_CONFIG, "--ignore-not-found", check=False)


@pytest.fixture
def ns(kube_namespace: str, operator: OperatorProcess) -> str:
    """A fresh namespace with the operator running."""
    return kube_namespace


@pytest.fixture(scope="session")
def real_values() -> set[str]:
    """Every real secret value any test put in the cluster: the leak scan looks for all of them."""
    return set()


@pytest.fixture
def real(real_values: set[str]) -> Callable[..., str]:
    def make(prefix: str = "sk-real") -> str:
        value = real_value(prefix)
        real_values.add(value)
        return value

    return make


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The leak scan runs last, so it sees everything every other operator test left behind."""
    last = [i for i in items if i.get_closest_marker("leak_scan")]
    items[:] = [i for i in items if i not in last] + last


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "leak_scan: scans the cluster and logs for real secret values (runs last)")
