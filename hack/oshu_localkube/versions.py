"""Pinned versions of the control-plane binaries, read from one place: the committed go.mod files.

The Go modules under ``hack/localkube-go/<module>/go.mod`` (with their go.sum) are what actually
pins a build, so the versions are parsed from them rather than repeated here; this module is
the only place Python code asks "which version?".
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path


def go_modules_dir() -> Path:
    """Directory holding one Go module per pinned upstream project."""
    override = os.environ.get("OSHU_LOCALKUBE_GO_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent.parent / "localkube-go"


@dataclass(frozen=True)
class Tool:
    """One binary: which module of ours builds it, from which upstream package."""

    name: str
    go_module_dir: str  # sub-directory of go_modules_dir()
    upstream_module: str  # the module whose required version is the tool's version
    package: str  # the main package to build

    @property
    def version(self) -> str:
        return required_version(self.go_module_dir, self.upstream_module)


TOOLS: dict[str, Tool] = {
    tool.name: tool
    for tool in (
        Tool("etcd", "etcd", "go.etcd.io/etcd/server/v3", "go.etcd.io/etcd/server/v3"),
        Tool("kube-apiserver", "kubernetes", "k8s.io/kubernetes", "k8s.io/kubernetes/cmd/kube-apiserver"),
        Tool(
            "kube-controller-manager",
            "kubernetes",
            "k8s.io/kubernetes",
            "k8s.io/kubernetes/cmd/kube-controller-manager",
        ),
        Tool("kubectl", "kubernetes", "k8s.io/kubernetes", "k8s.io/kubernetes/cmd/kubectl"),
        # The node (``start --node``): same Kubernetes pin as the control plane.
        Tool("kubelet", "kubernetes", "k8s.io/kubernetes", "k8s.io/kubernetes/cmd/kubelet"),
        Tool("kube-scheduler", "kubernetes", "k8s.io/kubernetes", "k8s.io/kubernetes/cmd/kube-scheduler"),
        Tool("kube-proxy", "kubernetes", "k8s.io/kubernetes", "k8s.io/kubernetes/cmd/kube-proxy"),
        # Our own main package linking only the CoreDNS plugins the cluster DNS uses.
        Tool("coredns", "coredns", "github.com/coredns/coredns", "oshu.local/localkube-go/coredns"),
        Tool("helm", "helm", "helm.sh/helm/v3", "helm.sh/helm/v3/cmd/helm"),
    )
}

_REQUIRE = re.compile(r"^\s*(?:require\s+)?(?P<module>\S+)\s+(?P<version>v\S+)\s*(?://.*)?$")


@cache
def _requirements(go_module_dir: str) -> dict[str, str]:
    """Parse the ``require`` entries of one of our go.mod files (single-line and block form)."""
    text = (go_modules_dir() / go_module_dir / "go.mod").read_text()
    found: dict[str, str] = {}
    in_block = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("require ("):
            in_block = True
            continue
        if in_block and stripped == ")":
            in_block = False
            continue
        if in_block or stripped.startswith("require "):
            match = _REQUIRE.match(stripped)
            if match:
                found[match["module"]] = match["version"]
    return found


def required_version(go_module_dir: str, module: str) -> str:
    """The version our go.mod pins ``module`` at; a clear error if it is not pinned."""
    try:
        return _requirements(go_module_dir)[module]
    except KeyError:
        raise LookupError(f"{module} is not required in {go_modules_dir() / go_module_dir / 'go.mod'}") from None


def staging_version(kubernetes_version: str) -> str:
    """k8s.io/kubernetes v1.X.Y publishes its staging modules as v0.X.Y."""
    major, rest = kubernetes_version.lstrip("v").split(".", 1)
    if major != "1":
        raise ValueError(f"unexpected Kubernetes version {kubernetes_version}")
    return f"v0.{rest}"


KUBERNETES_MODULE = "k8s.io/kubernetes"


def kubernetes_version() -> str:
    return TOOLS["kube-apiserver"].version


def etcd_version() -> str:
    return TOOLS["etcd"].version


def helm_version() -> str:
    return TOOLS["helm"].version
