"""Fixtures of the running-pod suite: the chart installed with the built images, the API
stand-in, and per-test namespaces with a session.

Where it runs: the local node cluster (``kube_node_cluster``; images built here and imported
into its containerd), or a cluster of yours: ``OSHU_E2E_KUBECONFIG=<kubeconfig>`` with
``OSHU_E2E_REGISTRY=<registry/prefix>`` (images built here and pushed there with podman) or
``OSHU_E2E_IMAGES=operator=REF,sidecar=REF,agent=REF``. See docs/install.md.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from oshu_e2e import pods, standin


def _log(message: str) -> None:
    print(f"[pods] {message}", file=sys.stderr, flush=True)


def _selected(session: pytest.Session) -> bool:
    return any("tests/pods/" in item.nodeid.replace(os.sep, "/") for item in session.items)


_built: dict[str, Any] = {}
_image_error: str | None = None


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build (or reuse) the images once, before any test's timeout starts (cold: minutes)."""
    global _image_error
    if not _selected(session) or pods.external_from_env() is not None:
        return
    from oshu_images.podman import available

    reason = available()
    if reason:
        _image_error = reason
        return
    started = time.monotonic()
    # Built once, from the sources as they are now: the run uses exactly these.
    _built.update(pods.build_images(log=_log))
    _log(f"images ready in {time.monotonic() - started:.0f}s")


@dataclass
class PodsEnv:
    """The chart installed with the built images, and the API stand-in running."""

    kube: Any  # LocalCluster or pods.ExternalCluster
    images: pods.Images
    release: str
    namespace: str  # the chart's
    api_namespace: str  # the stand-in's
    install_seconds: float
    cluster_domain: str = "cluster.local"
    measured: dict[str, float] = field(default_factory=dict)

    @property
    def api_host(self) -> str:
        return standin.host(self.api_namespace, domain=self.cluster_domain)

    @property
    def other_host(self) -> str:
        return standin.host(self.api_namespace, standin.OTHER, domain=self.cluster_domain)

    def seen(self) -> list[dict[str, Any]]:
        return standin.requests_seen(self.kube, self.api_namespace)


@pytest.fixture(scope="session")
def pods_env(request: pytest.FixtureRequest) -> Iterator[PodsEnv]:
    external = pods.external_from_env()
    if external is not None:
        kube: Any = external
        images = pods.images_from_env()
        if images is None:
            registry = os.environ.get("OSHU_E2E_REGISTRY")
            if not registry:
                pytest.fail("OSHU_E2E_KUBECONFIG needs OSHU_E2E_REGISTRY (or OSHU_E2E_IMAGES) for the images")
            images = pods.prepare_images(registry=registry, log=_log)
        domain = os.environ.get("OSHU_E2E_CLUSTER_DOMAIN", "cluster.local")
    else:
        if _image_error:
            pytest.skip(f"cannot build images here: {_image_error}")
        kube = request.getfixturevalue("kube_node_cluster")
        images = pods.prepare_images(node=kube.node, log=_log, built=_built or None)
        domain = kube.node.net.cluster_domain
    suffix = secrets.token_hex(3)
    release, namespace, api_ns = "oshu-vault", f"oshu-pods-{suffix}", f"oshu-pods-api-{suffix}"
    seconds = pods.helm_install(kube, release, namespace, pods.chart_values(images))
    env = PodsEnv(kube, images, release, namespace, api_ns, seconds, domain)
    try:
        pods.webhook_ready(kube, release)
        kube.kubectl("create", "namespace", api_ns)
        pods.apply(kube, standin.manifests(api_ns, images.agent, images.pull_policy, domain))
        pods.pod_running(kube, api_ns, standin.NAME)
        yield env
    finally:
        for name, value in env.measured.items():
            print(f"\n[pods] measured {name}: {value:.1f}s", flush=True)
        kube.kubectl("delete", "namespace", api_ns, "--wait=false", "--ignore-not-found", check=False)
        kube.helm("uninstall", release, "--namespace", namespace, "--wait", "--timeout=120s", check=False)
        kube.kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture
def agent_session(pods_env: PodsEnv, request: pytest.FixtureRequest) -> Iterator[pods.AgentSession]:
    kube = pods_env.kube
    namespace = f"agents-{secrets.token_hex(3)}"
    kube.kubectl("create", "namespace", namespace)
    try:
        real = "sk-real-" + secrets.token_urlsafe(24)
        name = "agent-session"
        pods.apply(kube, pods.session_docs(namespace, name, real, allowed_host=pods_env.api_host))
        doc = pods.session_ready(kube, namespace, name)
        yield pods.AgentSession(namespace, name, real, doc["status"]["tokens"][pods.ENV_NAME])
    finally:
        kube.kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found", check=False)
