"""Fixtures for the sidecar tests: one local upstream, sidecars as real subprocesses, real clients.

Host names are all under .oshu.test and every sidecar started here maps them (and, via the
catch-all --connect-to, anything else) to 127.0.0.1: no test traffic leaves loopback.
Every sidecar's logs and metrics are scanned for real secret values when it is torn down.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from oshu_contract.session import SecretBinding
from oshu_testkit.clients import NODE_DIR
from oshu_testkit.leaks import scan_sidecar
from oshu_testkit.sessions import new_secret, new_session
from oshu_testkit.sidecar_process import SidecarProcess
from oshu_testkit.upstreams import ALL_HOSTS, HOST, OTHER, PORTED, UPSTREAM_NAMES, Upstream


def make_keys() -> dict[str, SecretBinding]:
    return {
        "API_KEY": new_secret("API_KEY", [HOST]),
        "OTHER_KEY": new_secret("OTHER_KEY", [OTHER]),
        "QUERY_KEY": new_secret(
            "QUERY_KEY", [HOST], value="q-secret/with space+plus&amp", locations=["headers", "query"]
        ),
        "BODY_KEY": new_secret("BODY_KEY", [HOST], locations=["headers", "body"]),
        "PORT_KEY": new_secret("PORT_KEY", [PORTED]),
        "WILD_KEY": new_secret("WILD_KEY", ["*.wild.oshu.test"]),
    }


@pytest.fixture(scope="session")
def upstream() -> Iterator[Upstream]:
    with Upstream(names=UPSTREAM_NAMES) as up:
        yield up


@pytest.fixture(autouse=True)
def _clean_upstream(request: pytest.FixtureRequest) -> None:
    if "upstream" in request.fixturenames:
        request.getfixturevalue("upstream").clear()


@pytest.fixture(scope="module")
def keys() -> dict[str, SecretBinding]:
    return make_keys()


@pytest.fixture(scope="module")
def sidecar(
    upstream: Upstream, keys: dict[str, SecretBinding], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SidecarProcess]:
    """The shared sidecar of a test module: every key, every test host mapped to the upstream."""
    sc = SidecarProcess(
        new_session(*keys.values()), upstream=upstream, hosts=ALL_HOSTS, directory=tmp_path_factory.mktemp("sidecar")
    )
    with sc:
        yield sc
        scan_sidecar(sc, [k.value for k in keys.values()])
    assert sc.returncode == 0, sc.log_text()[-3000:]


@pytest.fixture
def make_sidecar(upstream: Upstream, tmp_path: Path) -> Iterator[Callable[..., SidecarProcess]]:
    """Start extra sidecars (own session, flags); all are stopped and leak-scanned afterwards."""
    started: list[tuple[SidecarProcess, list[str]]] = []

    def make(session: Any, *, values: list[str] | None = None, start: bool = True, **kw: Any) -> SidecarProcess:
        kw.setdefault("upstream", upstream)
        kw.setdefault("hosts", ALL_HOSTS)
        sc = SidecarProcess(session, directory=tmp_path / f"sidecar{len(started)}", **kw)
        if values is None:
            values = [s.value for s in getattr(session, "secrets", ())]
        started.append((sc, values))
        return sc.start() if start else sc

    yield make
    for sc, values in started:
        try:
            scan_sidecar(sc, values)
        finally:
            sc.stop()
        scan_sidecar(sc, values)


@pytest.fixture(scope="session")
def node_client() -> Path:
    """tests/node with undici installed (`npm ci`, run once if node_modules is missing)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("node and npm are required for the Node client tests")
    if not (NODE_DIR / "node_modules" / "undici").is_dir():
        p = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, capture_output=True, text=True, timeout=300
        )
        assert p.returncode == 0, p.stderr[-2000:]
    return NODE_DIR / "fetch.mjs"
