"""`enforcement: redirect`: the init container that installs the redirect rules, and what it adds
to the sidecar's command line. Pure.

With redirect, an agent that ignores the proxy variables still reaches the proxy: the init
container `oshu-vault-netrules` (the sidecar image's `oshu-vault-netrules` command) installs
nftables rules in the pod's network namespace that send every outbound TCP connection of
every uid but the proxy's to the sidecar's transparent listener, and drop the rest. It runs
first, before the native sidecar, as root with NET_ADMIN and NET_RAW only (this is what the
restricted Pod Security Standard does not allow; docs/security.md). The sidecar's readiness
then also requires the rules (`--require-redirect`: its redirect canary must come back).
"""

from __future__ import annotations

from typing import Any

from . import names as n
from .config import OperatorConfig, SidecarConfig
from .spec import RedirectSpec

__all__ = ["enforcement_of", "netrules_args", "netrules_container", "transparent_args"]


def enforcement_of(enforcement: str | None, cfg: OperatorConfig) -> str:
    """The session's `spec.enforcement`, else the operator's --default-enforcement."""
    return enforcement or cfg.default_enforcement


def transparent_args() -> list[str]:
    """Sidecar flags under redirect: the transparent listener on both loopbacks, and readiness
    that fails while the rules are missing."""
    port = n.SIDECAR_TRANSPARENT_PORT
    return ["--transparent-listen", f"127.0.0.1:{port}", "--transparent-listen", f"[::1]:{port}", "--require-redirect"]


def netrules_args(redirect: RedirectSpec) -> list[str]:
    """The rules command's flags: the proxy's uid is the one exemption; the session's exclusions."""
    args = ["--proxy-uid", str(n.SIDECAR_UID), "--transparent-port", str(n.SIDECAR_TRANSPARENT_PORT)]
    for cidr in redirect.exclude_cidrs:
        args += ["--exclude-cidr", cidr]
    for port in redirect.exclude_ports:
        args += ["--exclude-port", str(port)]
    if redirect.allow_metadata:
        args.append("--allow-metadata")
    return args


def netrules_container(cfg: SidecarConfig, redirect: RedirectSpec) -> dict[str, Any]:
    """The init container, with every field the API server would default set (a stored pod
    compares equal, so re-invocation changes nothing). No volumes, no service account token."""
    return {
        "name": n.NETRULES_CONTAINER,
        "image": cfg.image,
        "imagePullPolicy": cfg.pull_policy,
        "command": [n.NETRULES_COMMAND],
        "args": netrules_args(redirect),
        "resources": {
            "requests": {"cpu": cfg.cpu_request, "memory": cfg.memory_request},
            "limits": {"cpu": cfg.cpu_limit, "memory": cfg.memory_limit},
        },
        "securityContext": {
            # Root only to hold NET_ADMIN/NET_RAW over the pod's network namespace; nothing else.
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": False,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
