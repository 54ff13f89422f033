"""Helpers for tests/sidecar: run real clients as subprocesses, scan text for secret values.

Clients only ever see the standard environment (`SidecarProcess.client_env()`): proxy
variables and CA bundle variables. Nothing here tells a client about the proxy.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .sidecar_process import SidecarProcess

HERE = Path(__file__).parent
NODE_DIR = HERE.parents[1] / "tests" / "node"

HOST = "api.oshu.test"  # API_KEY, QUERY_KEY, BODY_KEY are allowed here
OTHER = "other.oshu.test"  # only OTHER_KEY is allowed here
PORTED = "api.oshu.test:8443"  # PORT_KEY: an explicit non-443 port
WILD = "x.wild.oshu.test"  # WILD_KEY: allowed for *.wild.oshu.test
TUNNEL = "tunnel.oshu.test"  # no secret names it: a blind tunnel
UPSTREAM_NAMES = ("api.oshu.test", "*.oshu.test", "*.wild.oshu.test")
ALL_HOSTS = [HOST, OTHER, PORTED, WILD, "wild.oshu.test", TUNNEL]

CLIENT_TIMEOUT = 60


def secret_forms(values: list[str]) -> list[str]:
    """Every form in which a real value could leak into text: raw and percent-encoded."""
    out = []
    for v in values:
        out += [v, quote(v, safe=""), quote(v)]
    return sorted(set(out))


def assert_no_secret(texts: dict[str, str | bytes], values: list[str]) -> None:
    for where, text in texts.items():
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        for form in secret_forms(values):
            assert form not in text, f"a real secret value appears in {where}"


def scan_sidecar(sc: SidecarProcess, values: list[str]) -> None:
    texts: dict[str, str | bytes] = {"sidecar log": sc.log_text()}
    if sc.proc is not None and sc.returncode is None and sc.admin is not None:
        texts["metrics"] = sc.metrics_text()
    assert_no_secret(texts, values)


def run(cmd: list[str], env: dict[str, str], timeout: float = CLIENT_TIMEOUT, **kw: Any
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, **kw)


def curl(env: dict[str, str], url: str, *args: str) -> tuple[int, dict[str, str], str, str]:
    """curl through the proxy named by env; returns (status, final response headers, body, stderr)."""
    with tempfile.NamedTemporaryFile(prefix="oshu-curl-") as out:
        p = run(["curl", "-sS", "--max-time", "30", "-D", "-", "-o", out.name, *args, url], env)
        body = Path(out.name).read_text(errors="replace")
    # -D - prints every header block (the CONNECT response first, interim 1xx too).
    blocks = [b for b in p.stdout.replace("\r\n", "\n").split("\n\n") if b.strip()]
    status, headers = 0, {}
    if blocks:
        lines = blocks[-1].split("\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return status, headers, body, p.stderr


def pyclient(env: dict[str, str], client: str, url: str, method: str = "GET", headers: dict[str, str] | None = None,
             body: str | None = None) -> dict[str, Any]:
    cmd = [sys.executable, str(HERE / "pyclient.py"), client, url, method, json.dumps(headers or {})]
    if body is not None:
        cmd.append(body)
    p = run(cmd, env)
    assert p.returncode == 0, f"{client} failed: {p.stderr[-2000:]}"
    return json.loads(p.stdout)


def node_fetch(script: Path, env: dict[str, str], url: str, method: str = "GET", headers: dict[str, str] | None = None,
               body: str | None = None) -> dict[str, Any]:
    cmd = ["node", str(script), url, method, json.dumps(headers or {})]
    if body is not None:
        cmd.append(body)
    p = run(cmd, env)
    out = json.loads(p.stdout or "{}")
    assert p.returncode == 0 and "error" not in out, f"node fetch failed: {out} {p.stderr[-2000:]}"
    return out


def header_of(echo: dict[str, Any], name: str) -> str | None:
    """A header from an /echo response body (as the upstream received it)."""
    for k, v in echo["headers"]:
        if k.lower() == name.lower():
            return v
    return None
