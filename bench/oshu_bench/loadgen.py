"""Runs the Go load client and returns its JSON, plus the client's own CPU time."""

from __future__ import annotations

import json
import resource
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Route:
    """How the client reaches the upstream: through a proxy or directly."""

    target: str  # host:port named in CONNECT / SNI / Host
    ca: Path
    proxy_port: int | None = None
    dial_port: int | None = None
    api_key: str | None = None  # direct mode sends the real key; proxies get the sealed one
    identities: Path | None = None  # the gateway: per-connection credentials and sealed tokens

    def flags(self) -> list[str]:
        f = ["-target", self.target, "-ca", str(self.ca)]
        if self.identities is not None:
            f += ["-identities", str(self.identities)]
        if self.proxy_port is not None:
            f += ["-proxy", f"127.0.0.1:{self.proxy_port}"]
        else:
            f += ["-dial", f"127.0.0.1:{self.dial_port}"]
        return f


class Loadgen:
    def __init__(self, binary: Path, sealed: str) -> None:
        self.binary, self.sealed = binary, sealed

    def run(self, mode: str, route: Route, *args: str, timeout: float = 180) -> dict:
        key = route.api_key or self.sealed
        cmd = [str(self.binary), mode, *route.flags(), "-header", f"x-api-key: {key}", *args]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            raise RuntimeError(f"loadgen {mode} failed: {proc.stderr.strip() or proc.stdout.strip()}")
        out = json.loads(proc.stdout)
        out["client_cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return out
