"""A private podman: its own containers.conf and storage.conf under the cache directory.

Nothing is written under /etc. The settings carry this machine's quirks: cgroups v1 (so
``cgroupfs``, and runc rather than crun), and a root that lacks CAP_SYS_RESOURCE (so the
default ulimits must stay within the hard limits: nofile 20000, nproc 32768).
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from oshu_localkube.build import cache_dir


class PodmanError(RuntimeError):
    """podman failed; the message carries the command and the tail of its output."""


def root() -> Path:
    return cache_dir() / "images"


def _hard_limit(which: int, want: int) -> int:
    """``want``, lowered to this process's hard limit (root here cannot raise it)."""
    _soft, hard = resource.getrlimit(which)
    return want if hard == resource.RLIM_INFINITY else min(want, hard)


def config_files(base: Path | None = None) -> dict[str, Path]:
    """Write (idempotently) the private configuration; return the env var -> file mapping."""
    base = base or root()
    conf_dir = base / "podman-conf"
    conf_dir.mkdir(parents=True, exist_ok=True)
    storage_root = base / "storage"
    runroot = Path(os.environ.get("XDG_RUNTIME_DIR") or "/run") / f"oshu-podman-{os.getuid()}"
    nofile = _hard_limit(resource.RLIMIT_NOFILE, 1 << 20)
    # runc's setrlimit of nproc fails with EPERM here above some value below the shell's hard
    # limit (65536 fails, 32768 works); containers never need more.
    nproc = _hard_limit(resource.RLIMIT_NPROC, 32768)
    runtime = shutil.which("runc") or "/usr/sbin/runc"
    containers_conf = f"""# Written by hack/oshu_images/podman.py: this machine's quirks (docs/install.md).
[containers]
default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]
netns = "host"
log_driver = "k8s-file"

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
tmp_dir = "{base / "podman-tmp"}"
static_dir = "{base / "podman-libpod"}"
volume_path = "{base / "podman-volumes"}"

[engine.runtimes]
runc = ["{runtime}"]
"""
    storage_conf = f"""# Written by hack/oshu_images/podman.py.
[storage]
driver = "overlay"
graphroot = "{storage_root}"
runroot = "{runroot}"
"""
    files = {
        "CONTAINERS_CONF": (conf_dir / "containers.conf", containers_conf),
        "CONTAINERS_STORAGE_CONF": (conf_dir / "storage.conf", storage_conf),
        # No registry is ever consulted: short names do not expand to docker.io.
        "CONTAINERS_REGISTRIES_CONF": (
            conf_dir / "registries.conf",
            'unqualified-search-registries = []\nshort-name-mode = "disabled"\n',
        ),
    }
    out: dict[str, Path] = {}
    for var, (path, text) in files.items():
        if not path.exists() or path.read_text() != text:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(path)
        out[var] = path
    return out


def env(base: Path | None = None) -> dict[str, str]:
    """Environment for running podman/buildah with the private configuration."""
    e = dict(os.environ)
    for var, path in config_files(base).items():
        e[var] = str(path)
    e.setdefault("TMPDIR", str((base or root()) / "podman-tmp"))
    Path(e["TMPDIR"]).mkdir(parents=True, exist_ok=True)
    # Builds never use the caller's proxy settings implicitly; podman passes *_proxy into RUN.
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "no_proxy", "NO_PROXY"):
        e.pop(var, None)
    return e


def available() -> str | None:
    """None if podman can be used here, else why not (the reason a test skips with)."""
    if shutil.which("podman") is None:
        return "podman is not installed (Debian package podman; `make debian` installs it)"
    if os.geteuid() != 0:
        return "building images needs root here (rootful podman, debootstrap)"
    return None


def podman(
    args: Sequence[str],
    *,
    check: bool = True,
    capture: bool = True,
    timeout: float | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run podman with the private configuration."""
    cmd = ["podman", *args]
    proc = subprocess.run(
        cmd,
        env=env(),
        text=True,
        input=input,
        timeout=timeout,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE if capture else None,
    )
    if check and proc.returncode != 0:
        tail = ((proc.stderr or "") + (proc.stdout or ""))[-3000:]
        raise PodmanError(f"{' '.join(cmd[:4])} ... exited {proc.returncode}:\n{tail}")
    return proc


def image_exists(ref: str) -> bool:
    return podman(["image", "exists", ref], check=False).returncode == 0
