"""Build the pinned control-plane binaries from the Go module proxy, once per version.

Each binary lands in ``<cache>/bin/<tool>-<version>/<tool>``. A build happens in a temporary
directory next to its destination and is renamed into place only when complete, so an
interrupted build never leaves a half-written binary, and a file lock serialises concurrent
builds of the same tool (several test sessions may start at once on a cold cache). A binary
that is already there costs nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from . import versions
from .versions import TOOLS, Tool

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class BuildError(RuntimeError):
    """A pinned binary could not be built; the message carries the tail of the Go output."""


def cache_dir() -> Path:
    """Root of the binary cache: ``$OSHU_CACHE_DIR`` or ``~/.cache/oshu-vault``."""
    configured = os.environ.get("OSHU_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "oshu-vault"


def binary_path(tool: str, root: Path | None = None) -> Path:
    """Where the pinned binary of ``tool`` lives (whether or not it is built yet)."""
    spec = TOOLS[tool]
    return (root or cache_dir()) / "bin" / f"{spec.name}-{spec.version}" / spec.name


def is_built(tool: str, root: Path | None = None) -> bool:
    path = binary_path(tool, root)
    return path.is_file() and os.access(path, os.X_OK)


def ensure_built(
    tools: Iterable[str] | None = None, *, root: Path | None = None, log: Log = _stderr
) -> dict[str, Path]:
    """Return the path of each requested binary, building the missing ones first."""
    names = list(tools) if tools is not None else list(TOOLS)
    unknown = [name for name in names if name not in TOOLS]
    if unknown:
        raise ValueError(f"unknown tool(s) {unknown}; known: {sorted(TOOLS)}")
    return {name: _ensure_one(TOOLS[name], root or cache_dir(), log) for name in names}


def _ensure_one(spec: Tool, root: Path, log: Log) -> Path:
    final = binary_path(spec.name, root)
    if is_built(spec.name, root):
        return final
    final.parent.parent.mkdir(parents=True, exist_ok=True)
    with _locked(final.parent.parent / f".{final.parent.name}.lock"):
        if is_built(spec.name, root):  # another process built it while we waited
            return final
        _remove_leftovers(final.parent)
        staging = Path(tempfile.mkdtemp(prefix=f".{final.parent.name}.tmp-", dir=final.parent.parent))
        try:
            started = time.monotonic()
            log(f"building {spec.name} {spec.version} (cold builds take minutes; later runs reuse it)")
            _go_build(spec, staging / spec.name)
            elapsed = time.monotonic() - started
            _record_build_time(root, spec, elapsed)
            os.rename(staging, final.parent)
            log(f"built {spec.name} {spec.version} in {elapsed:.0f}s -> {final}")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return final


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_leftovers(final_dir: Path) -> None:
    """Drop temp dirs of interrupted builds and a destination dir without a usable binary."""
    for leftover in final_dir.parent.glob(f".{final_dir.name}.tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    if final_dir.exists():
        shutil.rmtree(final_dir)


def _go_build(spec: Tool, output: Path) -> None:
    """``go build`` the tool in our pinning module; go.sum is complete, so nothing is resolved anew."""
    work = str(versions.go_modules_dir() / spec.go_module_dir)
    env = _go_env()
    ldflags = " ".join(["-s", "-w", *_version_ldflags(spec, work, env)])
    command = [
        "go", "build", "-trimpath", "-p", str(_jobs()), "-ldflags", ldflags,
        "-o", str(output), spec.package,
    ]  # fmt: skip
    result = subprocess.run(
        command, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, preexec_fn=_lower_priority,
    )  # fmt: skip
    if result.returncode != 0 or not output.is_file():
        tail = "\n".join(result.stdout.splitlines()[-40:])
        raise BuildError(f"go build of {spec.name} {spec.version} failed ({result.returncode}):\n{tail}")


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env["GOTOOLCHAIN"] = "local"  # the machine's Go; never fetch another toolchain
    env["CGO_ENABLED"] = "0"  # static binaries, no C toolchain needed
    env["GOWORK"] = "off"  # our module alone, whatever go.work may sit above it
    # Read-only: the committed go.mod/go.sum are the pin; a build never edits or re-resolves them.
    flags = [f for f in env.get("GOFLAGS", "").split() if not f.startswith("-mod=")]
    env["GOFLAGS"] = " ".join([*flags, "-mod=readonly"])
    return env


def _jobs() -> int:
    """Parallel compile jobs: the machine is shared, so at most 2 unless told otherwise."""
    configured = os.environ.get("OSHU_BUILD_JOBS")
    if configured:
        return max(1, int(configured))
    return max(1, min(2, os.cpu_count() or 1))


def _lower_priority() -> None:
    with contextlib.suppress(OSError):
        os.nice(10)


def _module_info(module: str, work: str, env: dict[str, str]) -> dict:
    """``go list -m -json`` of a dependency, resolved in our module (version and release time)."""
    result = subprocess.run(["go", "list", "-m", "-json", module], cwd=work, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError(f"go list -m {module} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout)


def _version_ldflags(spec: Tool, work: str, env: dict[str, str]) -> list[str]:
    """Stamp the real release into the binary, as the upstream Makefiles do.

    Without it kube binaries report v0.0.0-master, which breaks version checks in helm and in
    server-side code, and ``kubectl version`` would lie.
    """
    info = _module_info(spec.upstream_module, work, env)
    version = info["Version"]
    commit = (info.get("Origin") or {}).get("Hash", "")
    if spec.go_module_dir == "kubernetes":
        major, minor = version.lstrip("v").split(".")[:2]
        values = {
            "gitVersion": version,
            "gitMajor": major,
            "gitMinor": minor,
            "gitCommit": commit,
            "gitTreeState": "clean",
            "buildDate": info.get("Time", ""),
        }
        return [
            f"-X {package}.{name}={value}"
            for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
            for name, value in values.items()
        ]
    if spec.name == "helm":
        client_go = _module_info("k8s.io/client-go", work, env)["Version"]
        kube_major = str(int(client_go.lstrip("v").split(".")[0]) + 1)  # client-go v0.X <-> 1.X
        kube_minor = client_go.split(".")[1]
        flags = [
            f"-X helm.sh/helm/v3/internal/version.version={version}",
            "-X helm.sh/helm/v3/internal/version.gitTreeState=clean",
            f"-X helm.sh/helm/v3/internal/version.gitCommit={commit}",
        ]
        for package in ("helm.sh/helm/v3/pkg/lint/rules", "helm.sh/helm/v3/pkg/chartutil"):
            flags += [f"-X {package}.k8sVersionMajor={kube_major}", f"-X {package}.k8sVersionMinor={kube_minor}"]
        return flags
    if spec.name == "coredns":
        return [f"-X github.com/coredns/coredns/coremain.GitCommit={commit or version}"]
    if spec.name == "etcd":
        return [f"-X go.etcd.io/etcd/api/v3/version.GitSHA={commit or version}"]
    return []


def _record_build_time(root: Path, spec: Tool, seconds: float) -> None:
    """Keep the measured build times next to the binaries (docs/local-cluster.md quotes them)."""
    path = root / "bin" / "build-times.json"
    with contextlib.suppress(OSError, ValueError):
        times = json.loads(path.read_text()) if path.exists() else {}
        times[f"{spec.name}-{spec.version}"] = round(seconds, 1)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(times, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
