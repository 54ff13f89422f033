"""Container images made without any registry: the pod sandbox ("pause") image and tiny
single-binary images, written straight as OCI image-layout archives.

The kubelet's runtime needs a sandbox image before any pod can start, and this machine has
no registry to pull one from. The pause program is a few lines of C compiled statically, so
the image is one file; the archive is written here byte for byte (one uncompressed layer,
config, manifest, index) and imported with ``ctr images import`` by
:meth:`oshu_localkube.node.Node.import_image`. Builds are cached by content hash under
``<cache>/images/``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import build

#: The sandbox image the node's containerd is configured with (``sandbox_image``).
PAUSE_IMAGE = "localhost/oshu-localkube/pause:1"

PAUSE_C = r"""
/* The pod sandbox process: holds the pod's namespaces, reaps orphans, exits on INT/TERM. */
#include <signal.h>
#include <stddef.h>
#include <sys/wait.h>
#include <unistd.h>

static void quit(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }

int main(void) {
    struct sigaction stop = {.sa_handler = quit}, child = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
    if (sigaction(SIGINT, &stop, NULL) < 0 || sigaction(SIGTERM, &stop, NULL) < 0 ||
        sigaction(SIGCHLD, &child, NULL) < 0)
        return 1;
    for (;;) pause();
}
"""


@dataclass(frozen=True)
class ImageFile:
    """One file of a single-layer image."""

    data: bytes
    mode: int = 0o755


def _blob(blobs: dict[str, bytes], data: bytes) -> tuple[str, int]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return digest, len(data)


def _layer(files: Mapping[str, ImageFile]) -> bytes:
    """A deterministic tar layer (fixed mtimes, root-owned) holding ``files`` and their parents."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        directories: set[str] = set()
        for path in sorted(files):
            parts = path.strip("/").split("/")
            for depth in range(1, len(parts)):
                directory = "/".join(parts[:depth])
                if directory not in directories:
                    directories.add(directory)
                    info = tarfile.TarInfo(directory)
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
            info = tarfile.TarInfo("/".join(parts))
            info.size, info.mode = len(files[path].data), files[path].mode
            tar.addfile(info, io.BytesIO(files[path].data))
    return out.getvalue()


def write_oci_archive(
    target: Path,
    ref: str,
    files: Mapping[str, ImageFile],
    *,
    entrypoint: Sequence[str],
    env: Sequence[str] = ("PATH=/",),
    user: str = "",
) -> Path:
    """Write a one-layer linux/amd64 image named ``ref`` as an OCI image-layout tar at ``target``."""
    blobs: dict[str, bytes] = {}
    layer_digest, layer_size = _blob(blobs, _layer(files))
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": list(entrypoint), "Env": list(env), "User": user, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},  # uncompressed: diff id = digest
    }
    config_digest, config_size = _blob(blobs, json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}],
    }
    manifest_digest, manifest_size = _blob(blobs, json.dumps(manifest, sort_keys=True).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": manifest_size,
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": ref,
                    "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[-1],
                },
            }
        ],
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with tarfile.open(tmp, mode="w") as tar:
        entries = {
            "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
            "index.json": json.dumps(index, sort_keys=True).encode(),
            **{f"blobs/sha256/{digest.split(':', 1)[1]}": data for digest, data in blobs.items()},
        }
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, target)
    return target


def images_dir() -> Path:
    return build.cache_dir() / "images"


def pause_image_archive() -> Path:
    """The pause image archive (built with ``gcc -static`` once per source hash)."""
    source_hash = hashlib.sha256(PAUSE_C.encode()).hexdigest()[:16]
    target = images_dir() / f"pause-{source_hash}.tar"
    if target.is_file():
        return target
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise build.BuildError("building the pause image needs a C compiler (Debian: gcc, libc6-dev)")
    with tempfile.TemporaryDirectory() as work:
        source, binary = Path(work) / "pause.c", Path(work) / "pause"
        source.write_text(PAUSE_C)
        result = subprocess.run(
            [compiler, "-static", "-Os", "-s", "-o", str(binary), str(source)], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise build.BuildError(f"compiling pause failed:\n{result.stderr[-2000:]}")
        return write_oci_archive(target, PAUSE_IMAGE, {"pause": ImageFile(binary.read_bytes())}, entrypoint=["/pause"])


def go_binary_image_archive(source_dir: Path, ref: str, binary_name: str) -> Path:
    """An image holding one static Go binary built from ``source_dir`` (a stdlib-only module),
    cached by the hash of its sources; for test workloads that need no base image."""
    digest = hashlib.sha256()
    for path in sorted(source_dir.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(source_dir).as_posix().encode() + b"\0" + path.read_bytes())
    target = images_dir() / f"{binary_name}-{digest.hexdigest()[:16]}.tar"
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory() as work:
        binary = Path(work) / binary_name
        env = {**build._go_env(), "GOFLAGS": "-mod=readonly"}
        result = subprocess.run(
            ["go", "build", "-trimpath", "-ldflags=-s -w", "-o", str(binary), "."],
            cwd=source_dir, env=env, capture_output=True, text=True,
        )  # fmt: skip
        if result.returncode != 0:
            raise build.BuildError(f"go build in {source_dir} failed:\n{result.stderr[-2000:]}")
        return write_oci_archive(
            target, ref, {binary_name: ImageFile(binary.read_bytes())}, entrypoint=[f"/{binary_name}"]
        )
