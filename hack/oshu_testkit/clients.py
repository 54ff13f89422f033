"""Real, unmodified clients (curl, requests, httpx, aiohttp, Node) run as subprocesses.

Clients only ever see the standard environment (`SidecarProcess.client_env()`: what the
webhook injects). Nothing here tells a client about the proxy.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from oshu_e2e.paths import REPO_ROOT

HERE = Path(__file__).parent
#: The Node client (undici, installed by `npm ci` there: `make node`).
NODE_DIR = REPO_ROOT / "tests" / "node"

CLIENT_TIMEOUT = 60


def run(
    cmd: list[str], env: dict[str, str], timeout: float = CLIENT_TIMEOUT, **kw: Any
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


def pyclient(
    env: dict[str, str],
    client: str,
    url: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: str | None = None,
) -> dict[str, Any]:
    cmd = [sys.executable, str(HERE / "pyclient.py"), client, url, method, json.dumps(headers or {})]
    if body is not None:
        cmd.append(body)
    p = run(cmd, env)
    assert p.returncode == 0, f"{client} failed: {p.stderr[-2000:]}"
    return json.loads(p.stdout)


def node_fetch(
    script: Path,
    env: dict[str, str],
    url: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: str | None = None,
) -> dict[str, Any]:
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
