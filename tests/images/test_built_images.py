"""The images really built (podman, no registry) and run: Dockerfile.sidecar and
Dockerfile.operator on the local Debian base (hack/oshu_images), the cache, and the private
podman configuration. Skipped, with the reason, where podman cannot run."""

from __future__ import annotations

import json
import resource
from pathlib import Path

import pytest

from oshu_images import build as images
from oshu_images import podman as pm

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def built() -> dict[str, images.BuiltImage]:
    reason = pm.available()
    if reason:
        pytest.skip(reason)
    return images.build(["sidecar", "operator"])


def _inspect(ref: str) -> dict:
    return json.loads(pm.podman(["image", "inspect", ref]).stdout)[0]


@pytest.mark.parametrize(("kind", "command"), [("sidecar", "oshu-sidecar"), ("operator", "oshu-operator")])
def test_image_runs_its_command(built: dict[str, images.BuiltImage], kind: str, command: str) -> None:
    result = pm.podman(["run", "--rm", "--network=none", built[kind].ref, "--help"], check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {command}")
    config = _inspect(built[kind].ref)["Config"]
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == [f"/opt/oshu-vault/bin/{command}"]


def test_final_images_have_no_pip_and_the_sidecar_no_operator_deps(built: dict[str, images.BuiltImage]) -> None:
    probe = (
        "import importlib.util as u, json; "
        "print(json.dumps({m: u.find_spec(m) is not None for m in ('pip', 'kopf', 'aiohttp', 'kubernetes_asyncio', "
        "'oshu_localkube', 'oshu_e2e', 'oshu_testkit', 'oshu_sidecar')}))"
    )
    found = {}
    for kind in ("sidecar", "operator"):
        out = pm.podman(
            [
                "run",
                "--rm",
                "--network=none",
                "--entrypoint",
                "/opt/oshu-vault/bin/python",
                built[kind].ref,
                "-c",
                probe,
            ]
        ).stdout
        found[kind] = json.loads(out)
        # The base's own python (PATH's second entry) lost its pip in the final stage too.
        base_pip = pm.podman(
            [
                "run",
                "--rm",
                "--network=none",
                "--entrypoint",
                "/opt/python/bin/python",
                built[kind].ref,
                "-c",
                "import pip",
            ],
            check=False,
        )
        assert base_pip.returncode != 0
    assert found["sidecar"] == {
        "pip": False,
        "kopf": False,
        "aiohttp": False,
        "kubernetes_asyncio": False,
        "oshu_localkube": False,
        "oshu_e2e": False,
        "oshu_testkit": False,
        "oshu_sidecar": True,
    }
    assert found["operator"]["kopf"] and found["operator"]["aiohttp"] and not found["operator"]["pip"]
    assert not any(found["operator"][m] for m in ("oshu_localkube", "oshu_e2e", "oshu_testkit"))


def test_a_second_build_costs_nothing(built: dict[str, images.BuiltImage]) -> None:
    """Same inputs, no build: the base and the agent image (inputs that no one edits while the
    tests run, unlike the working tree's sources)."""
    first = images.build(["agent"])["agent"]  # the pod suite's own: built once, then cached
    again = images.build(["agent"])["agent"]
    assert again.ref == first.ref and again.cached and again.archive.is_file()
    base = images.build(["base"])["base"]
    assert base.cached and base.archive.is_file()


def test_the_tag_follows_every_copied_source() -> None:
    """The cache key covers what the Dockerfile's COPY lines take, and nothing is missed."""
    dockerfile = REPO / "Dockerfile.sidecar"
    sources = images._copy_sources(dockerfile)
    assert "pyproject.toml" in sources and any(s.rstrip("/") == "sidecar" for s in sources)
    files = {p.relative_to(REPO).as_posix() for p in images._context_files(dockerfile)}
    assert "sidecar/oshu_sidecar/server.py" in files and "pyproject.toml" in files
    assert not any("__pycache__" in f or f.startswith("tests/") or f.startswith("hack/") for f in files)


def test_private_podman_config_carries_the_machine_quirks(tmp_path: Path) -> None:
    files = pm.config_files(tmp_path)
    conf = files["CONTAINERS_CONF"].read_text()
    assert 'cgroup_manager = "cgroupfs"' in conf and 'runtime = "runc"' in conf
    nofile_hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = int(conf.split('"nofile=')[1].split(":")[0])
    assert nofile_hard == resource.RLIM_INFINITY or nofile <= nofile_hard
    storage = files["CONTAINERS_STORAGE_CONF"].read_text()
    assert str(tmp_path) in storage and "/etc" not in storage and "/var/lib" not in storage
    assert 'short-name-mode = "disabled"' in files["CONTAINERS_REGISTRIES_CONF"].read_text()


def test_debian_source_is_the_one_apt_uses() -> None:
    mirror, suite = images.debian_source()
    apt = "".join(
        p.read_text()
        for p in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]
        if p.is_file()
    )
    assert mirror in apt and suite in apt
