"""The pinned builds: versions in one place, stamped into the binaries, cached, and atomic."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from oshu_localkube import build, versions
from oshu_localkube.cluster import wait_for

pytestmark = pytest.mark.timeout(300)


def test_staging_modules_are_replaced_with_the_matching_release() -> None:
    """k8s.io/kubernetes v1.X.Y needs every k8s.io staging module at v0.X.Y, or it will not build."""
    go_mod = (versions.go_modules_dir() / "kubernetes" / "go.mod").read_text()
    replaced = dict(re.findall(r"^\s*(k8s\.io/\S+) => \1 (v\S+)$", go_mod, re.MULTILINE))
    assert "k8s.io/apiserver" in replaced and "k8s.io/client-go" in replaced
    assert set(replaced.values()) == {versions.staging_version(versions.kubernetes_version())}


def test_binaries_report_their_pinned_versions(kube_binaries: dict[str, Path]) -> None:
    def run(tool: str, *args: str) -> str:
        return subprocess.run(
            [kube_binaries[tool], *args], capture_output=True, text=True, timeout=60, check=True
        ).stdout

    kube = versions.kubernetes_version()
    assert f"Kubernetes {kube}" in run("kube-apiserver", "--version")
    assert f"Kubernetes {kube}" in run("kube-controller-manager", "--version")
    assert f"Client Version: {kube}" in run("kubectl", "version", "--client")
    assert f"etcd Version: {versions.etcd_version().lstrip('v')}" in run("etcd", "--version")
    assert run("helm", "version", "--short").strip().split("+")[0] == versions.helm_version()
    for tool, path in kube_binaries.items():
        assert path == build.binary_path(tool)
        assert path.parent.name == f"{tool}-{versions.TOOLS[tool].version}"


def test_built_binaries_are_reused_without_go(kube_binaries: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")  # any attempt to run `go` would fail
    assert build.ensure_built(list(kube_binaries)) == kube_binaries


def test_interrupted_build_leaves_no_binary_and_the_next_build_succeeds(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    env = {**os.environ, "OSHU_CACHE_DIR": str(cache)}
    builder = [sys.executable, "-c", "from oshu_localkube import build; build.ensure_built(['etcd'])"]
    interrupted = subprocess.Popen(builder, env=env, start_new_session=True, stderr=subprocess.DEVNULL)
    staging = cache / "bin"
    try:
        wait_for(lambda: any(staging.glob(".etcd-*.tmp-*")), timeout=60, what="the build to start")
    finally:
        os.killpg(interrupted.pid, signal.SIGKILL)  # the builder and the go toolchain under it
        interrupted.wait(timeout=30)
    final = build.binary_path("etcd", cache)
    assert not final.exists() and not final.parent.exists()

    rebuilt = subprocess.run(builder, env=env, capture_output=True, text=True, timeout=280)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert not list(staging.glob(".etcd-*.tmp-*"))  # the leftover of the interrupted build is gone
    version = subprocess.run([final, "--version"], capture_output=True, text=True, timeout=30, check=True)
    assert f"etcd Version: {versions.etcd_version().lstrip('v')}" in version.stdout
