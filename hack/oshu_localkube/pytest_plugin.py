"""pytest fixtures for a real local control plane.

- ``kube_cluster`` (session): a started :class:`LocalCluster`, stopped after the session.
  With ``OSHU_KUBE_CLUSTER_DIR`` set to the state dir of a cluster started by
  ``oshu-local-cluster start``, that cluster is reused (and left running) instead.
- ``kube_binaries`` (session): ``{tool: Path}`` of the pinned etcd, kube-apiserver,
  kube-controller-manager, kubectl and helm, for tests that need a binary but no cluster
  (``helm lint``/``helm template``...).
- ``kube_namespace`` (function): a fresh namespace whose ``default`` ServiceAccount exists
  (pods are admitted only then); deleted after the test.
- ``kube_node_cluster`` (session): a started :class:`LocalCluster` with a node (pods run);
  ``cluster.node`` is its :class:`~oshu_localkube.node.Node` (containerd socket, namespace
  ``k8s.io``, ``import_image()``, addresses). One node cluster runs per network namespace: if another
  session holds it, this waits (up to ``OSHU_NODE_WAIT`` seconds, default 240) and says so.
  ``OSHU_KUBE_NODE_CLUSTER_DIR`` attaches to one started by ``oshu-local-cluster start --node``.
  On a machine that cannot run the node at all (not root, packages missing) the tests using
  it are skipped with the reason.
- ``kube_node_namespace`` (function): like ``kube_namespace``, on the node cluster.

Missing binaries are built once after collection, outside any test's timeout.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from . import build, node
from .cluster import KUBE_TOOLS, ClusterError, LocalCluster, wait_for

ATTACH_VARIABLE = "OSHU_KUBE_CLUSTER_DIR"
NODE_ATTACH_VARIABLE = "OSHU_KUBE_NODE_CLUSTER_DIR"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "oshu_node_exclusive: starts and stops its own node cluster; runs before any test that uses the "
        "session's kube_node_cluster (one node cluster per network namespace)",
    )


@pytest.hookimpl(trylast=True)  # after any other reordering
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Node-exclusive tests first: the session's node cluster is started lazily, so before it."""
    exclusive = [item for item in items if item.get_closest_marker("oshu_node_exclusive")]
    if exclusive:
        rest = [item for item in items if not item.get_closest_marker("oshu_node_exclusive")]
        items[:] = exclusive + rest


def start_node_cluster(*, log: Callable[[str], None] | None = None, wait: float | None = None) -> LocalCluster:
    """Start a node cluster, waiting (bounded) while another session holds this namespace's node."""
    deadline = time.monotonic() + (wait if wait is not None else float(os.environ.get("OSHU_NODE_WAIT", "900")))
    said = False
    while True:
        cluster = LocalCluster(node=True, ready_timeout=180)
        try:
            return cluster.start()
        except node.NodeBusyError as busy:
            if time.monotonic() > deadline or _held_by_this_process():
                raise
            if not said and log is not None:
                log(f"waiting for this network namespace's node: {busy}")
                said = True
            time.sleep(5)


def _held_by_this_process() -> bool:
    """The node is held by a cluster this very process started: waiting would never end."""
    try:
        holder = json.loads(node.claim_path().read_text())["state_dir"]
        state = json.loads((Path(holder) / "cluster.json").read_text())
    except (OSError, ValueError, KeyError):
        return False
    return bool(state.get("owner_pid") == os.getpid())


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build missing binaries before the first test: a cold build takes far longer than a test timeout."""
    if session.config.option.collectonly:
        return
    wanted = {"kube_cluster", "kube_binaries", "kube_node_cluster"}
    used = set().union(*(set(getattr(item, "fixturenames", ())) for item in session.items))
    if wanted & used:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")

        def log(message: str) -> None:
            if reporter is not None:
                reporter.write_line(f"oshu-localkube: {message}")

        tools = KUBE_TOOLS + node.NODE_TOOLS if "kube_node_cluster" in used else KUBE_TOOLS
        build.ensure_built(tools, log=log)


@pytest.fixture(scope="session")
def kube_binaries() -> dict[str, Path]:
    return build.ensure_built(KUBE_TOOLS)


@pytest.fixture(scope="session")
def kube_cluster() -> Iterator[LocalCluster]:
    attached = os.environ.get(ATTACH_VARIABLE)
    if attached:
        cluster = LocalCluster.attach(attached)
        if not cluster.is_ready():
            raise ClusterError(f"{ATTACH_VARIABLE}={attached}: that cluster is not ready")
        yield cluster
        return
    with LocalCluster() as cluster:
        yield cluster


def _namespace_name(test_name: str) -> str:
    stem = re.sub(r"[^a-z0-9-]+", "-", test_name.lower()).strip("-")[:40].strip("-") or "test"
    return f"{stem}-{secrets.token_hex(3)}"


@pytest.fixture
def kube_namespace(kube_cluster: LocalCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    name = _namespace_name(request.node.name)
    kube_cluster.kubectl("create", "namespace", name)
    wait_for(
        lambda: kube_cluster.request(f"/api/v1/namespaces/{name}/serviceaccounts/default")[0] == 200,
        timeout=60,
        what=f"ServiceAccount default in namespace {name}",
    )
    yield name
    kube_cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


def _namespace(cluster: LocalCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    name = _namespace_name(request.node.name)
    cluster.kubectl("create", "namespace", name)
    wait_for(
        lambda: cluster.request(f"/api/v1/namespaces/{name}/serviceaccounts/default")[0] == 200,
        timeout=60,
        what=f"ServiceAccount default in namespace {name}",
    )
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture(scope="session")
def kube_node_cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    attached = os.environ.get(NODE_ATTACH_VARIABLE)
    if attached:
        cluster = LocalCluster.attach(attached)
        if cluster.node is None or not cluster.is_ready():
            raise ClusterError(f"{NODE_ATTACH_VARIABLE}={attached}: not a ready cluster with a node")
        yield cluster
        return
    problems = node.missing_prerequisites()
    if problems:
        pytest.skip("this machine cannot run the local node: " + "; ".join(problems))
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")

    def log(message: str) -> None:
        if reporter is not None:
            reporter.write_line(f"oshu-localkube: {message}")

    # Within the first test's timeout (300 s): a longer wait would end as a timeout, not a reason.
    cluster = start_node_cluster(log=log, wait=float(os.environ.get("OSHU_NODE_WAIT", "240")))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def kube_node_namespace(kube_node_cluster: LocalCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    yield from _namespace(kube_node_cluster, request)
