"""The product wheel holds product code only: no test kit, no test helpers, no dev tooling.

The wheel is built the way the images build it (pip wheel, isolated build), from the product's sources without hack/
(pyproject.toml's package roots minus hack; tests/images replays the Dockerfiles themselves).
Every module in it is checked by name and by what it imports, so a helper that moves back
into a product package, or a product module that starts importing the test kit, fails here.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Top-level modules no product module may import: tests, the test kit and the dev tooling.
DEV_ONLY = {
    "pytest",
    "hypothesis",
    "httpx",
    "requests",
    "oshu_testkit",
    "oshu_localkube",
    "oshu_e2e",
    "oshu_images",
    "oshu_bench",
}
#: Module file names that only test code has.
TEST_NAMES = {"testing.py", "conftest.py", "plugin.py"}


def product_roots() -> list[str]:
    """The package roots pyproject.toml names, minus hack/ (not in any image's build context)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return [w for w in config["tool"]["setuptools"]["packages"]["find"]["where"] if w != "hack"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for root in product_roots():
        shutil.copytree(ROOT / root, src / root, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (built,) = out.glob("oshu_vault-*.whl")
    return built


def _modules(wheel: Path) -> dict[str, str]:
    with zipfile.ZipFile(wheel) as zf:
        return {n: zf.read(n).decode() for n in zf.namelist() if n.endswith(".py")}


def _imported_tops(source: str) -> set[str]:
    tops = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            tops |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            tops.add(node.module.split(".")[0])
    return tops


def test_the_wheel_holds_product_packages_only(wheel: Path) -> None:
    modules = _modules(wheel)
    tops = {name.split("/", 1)[0] for name in modules}
    assert tops and all(t.startswith("oshu_") for t in tops), sorted(tops)
    assert not tops & DEV_ONLY, sorted(tops & DEV_ONLY)
    assert {"oshu_sidecar", "oshu_operator"} <= tops, sorted(tops)


def test_no_test_helper_module_ships(wheel: Path) -> None:
    helpers = [n for n in _modules(wheel) if n.rsplit("/", 1)[-1] in TEST_NAMES or "/tests/" in n]
    assert helpers == [], helpers


def test_no_product_module_imports_test_or_dev_code(wheel: Path) -> None:
    bad = {name: sorted(_imported_tops(src) & DEV_ONLY) for name, src in _modules(wheel).items()}
    assert {k: v for k, v in bad.items() if v} == {}


def test_the_checks_see_a_helper_module(tmp_path: Path) -> None:
    """The import scan is not vacuous: the old sidecar test helpers' imports are caught."""
    old = "from aiohttp import web\nimport pytest\nfrom oshu_testkit.upstreams import Upstream\n"
    assert _imported_tops(old) & DEV_ONLY == {"pytest", "oshu_testkit"}
