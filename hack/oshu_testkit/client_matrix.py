"""Run one real HTTP client (curl, requests, httpx, aiohttp, node) with a given environment.

Each returns (ok, detail). The clients find the proxy and CA only through the standard
environment variables, as an unmodified agent would.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

#: Node through a CONNECT proxy with its own TLS stack only (no npm packages needed).
NODE_CLIENT = Path(__file__).parent / "js" / "connect_fetch.js"

_PY = {
    "requests": "import requests,sys\nr=requests.get(sys.argv[1],headers={sys.argv[2]:sys.argv[3]},timeout=10)\nprint(r.status_code)",
    "httpx": "import httpx,sys\nr=httpx.get(sys.argv[1],headers={sys.argv[2]:sys.argv[3]},timeout=10)\nprint(r.status_code)",
    "aiohttp": (
        "import aiohttp,asyncio,sys\n"
        "async def m():\n"
        "  async with aiohttp.ClientSession(trust_env=True) as s:\n"
        "    async with s.get(sys.argv[1],headers={sys.argv[2]:sys.argv[3]}) as r: print(r.status)\n"
        "asyncio.run(m())"
    ),
}
CLIENTS = ("curl", "requests", "httpx", "aiohttp", "node")


def run_client(client: str, url: str, header: tuple[str, str], env: Mapping[str, str]) -> tuple[bool, str]:
    if client == "curl":
        cmd = [
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            f"{header[0]}: {header[1]}",
            "--max-time",
            "10",
            url,
        ]
    elif client == "node":
        cmd = ["node", str(NODE_CLIENT), url, *header]
    else:
        cmd = [sys.executable, "-c", _PY[client], url, *header]
    try:
        proc = subprocess.run(cmd, env=dict(env), capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return False, "timeout"
    out = (proc.stdout.strip() + " " + proc.stderr.strip()[-300:]).strip()
    ok = proc.returncode == 0 and ("200" in proc.stdout)
    return ok, out


def available(client: str) -> bool:
    return client not in ("curl", "node") or shutil.which(client) is not None
