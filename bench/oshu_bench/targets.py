"""The four ways a request reaches the upstream, and how to start each proxy.

Every proxy gets the same job: intercept CONNECT to the test host, mint a leaf
from the same proxy CA, swap the sealed token for the real key in the request
headers, and forward over TLS verified against the upstream CA only.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from . import procs
from .certs import Pki
from .upstream import Upstreams

BENCH_DIR = Path(__file__).resolve().parent.parent
REPO = BENCH_DIR.parent
PEERS_DIR = BENCH_DIR / "peers"


@dataclass
class Context:
    workdir: Path
    pki: Pki
    up: Upstreams
    sealed: str
    secret: str
    peers_python: Path
    project_python: Path
    baseline_src: list[Path] = field(default_factory=list)  # PYTHONPATH of the `oshu-baseline` target

    def write_session(self) -> Path:
        path = self.workdir / "session.json"
        path.write_text(
            json.dumps(
                {
                    "session": "bench/s",
                    "secrets": [
                        {
                            "name": "API_KEY",
                            "sealed": self.sealed,
                            "value": self.secret,
                            "hosts": [self.up.http_target, self.up.sse_target],
                        }
                    ],
                }
            )
        )
        return path

    def write_swap_config(self) -> Path:
        path = self.workdir / "swap.json"
        path.write_text(
            json.dumps(
                {
                    "sealed": self.sealed,
                    "value": self.secret,
                    "hosts": [self.up.http_target, self.up.sse_target],
                    "resolve": {self.up.name: "127.0.0.1"},
                }
            )
        )
        return path


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without proxy or OSHU_* settings leaking in."""
    drop = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
    env = {k: v for k, v in os.environ.items() if k.lower() not in drop and not k.startswith("OSHU_")}
    env.update(extra)
    return env


@dataclass
class Launch:
    cmd: list[str]
    env: dict[str, str]
    port: int
    admin_port: int | None = None  # serves /readyz when set
    cwd: Path | None = None


@dataclass
class Target:
    name: str
    proxied: bool = True
    notes: list[str] = field(default_factory=list)

    def launch(self, ctx: Context) -> Launch:  # pragma: no cover - overridden
        raise NotImplementedError


class Direct(Target):
    def __init__(self) -> None:
        super().__init__("direct", proxied=False)


class OshuSidecar(Target):
    def __init__(self) -> None:
        super().__init__("oshu-sidecar")

    def launch(self, ctx: Context) -> Launch:
        port, admin = procs.free_port(), procs.free_port()
        up = ctx.up
        cmd = [
            str(ctx.project_python),
            "-m",
            "oshu_sidecar",
            "--listen",
            f"127.0.0.1:{port}",
            "--admin-listen",
            f"127.0.0.1:{admin}",
            "--session-file",
            str(ctx.write_session()),
            "--ca-cert",
            str(ctx.pki.proxy_ca),
            "--ca-key",
            str(ctx.pki.proxy_ca_key),
            "--upstream-ca-file",
            str(ctx.pki.upstream_ca),
            "--resolve",
            f"{up.name}:{up.http_port}:127.0.0.1",
            "--resolve",
            f"{up.name}:{up.sse_port}:127.0.0.1",
        ]
        return Launch(cmd, clean_env(), port, admin_port=admin, cwd=REPO)


class OshuBaseline(OshuSidecar):
    """The sidecar of another commit (`--baseline REV`), same flags: before/after in one run."""

    def __init__(self) -> None:
        Target.__init__(self, "oshu-baseline")

    def launch(self, ctx: Context) -> Launch:
        launch = super().launch(ctx)
        launch.env["PYTHONPATH"] = os.pathsep.join(str(p) for p in ctx.baseline_src)
        return launch


class Mitmproxy(Target):
    def __init__(self) -> None:
        super().__init__("mitmproxy")

    def launch(self, ctx: Context) -> Launch:
        port = procs.free_port()
        confdir = ctx.workdir / "mitmproxy"
        confdir.mkdir(exist_ok=True)
        # mitmproxy reads its CA as key + certificate in one PEM.
        (confdir / "mitmproxy-ca.pem").write_bytes(ctx.pki.proxy_ca_key.read_bytes() + ctx.pki.proxy_ca.read_bytes())
        cmd = [
            str(ctx.peers_python.parent / "mitmdump"),
            "-q",
            "--listen-host",
            "127.0.0.1",
            "--listen-port",
            str(port),
            "--set",
            f"confdir={confdir}",
            "--set",
            f"ssl_verify_upstream_trusted_ca={ctx.pki.upstream_ca}",
            "--set",
            "http2=false",
            "-s",
            str(PEERS_DIR / "mitm_swap.py"),
        ]
        return Launch(cmd, clean_env(BENCH_SWAP_CONFIG=str(ctx.write_swap_config())), port)


class ProxyPy(Target):
    def __init__(self) -> None:
        super().__init__("proxy.py")

    def launch(self, ctx: Context) -> Launch:
        port = procs.free_port()
        certdir = ctx.workdir / "proxypy-certs"
        certdir.mkdir(exist_ok=True)
        cmd = [
            str(ctx.peers_python),
            "-m",
            "proxy",
            "--hostname",
            "127.0.0.1",
            "--port",
            str(port),
            "--ca-key-file",
            str(ctx.pki.proxy_ca_key),
            "--ca-cert-file",
            str(ctx.pki.proxy_ca),
            "--ca-signing-key-file",
            str(ctx.pki.proxy_leaf_key),
            "--ca-cert-dir",
            str(certdir),
            "--ca-file",
            str(ctx.pki.upstream_ca),
            "--plugins",
            "proxypy_swap.SwapPlugin",
            "--log-level",
            "WARNING",
        ]
        env = clean_env(BENCH_SWAP_CONFIG=str(ctx.write_swap_config()), PYTHONPATH=str(PEERS_DIR))
        return Launch(cmd, env, port)


ALL = {t.name: t for t in (Direct(), OshuSidecar(), Mitmproxy(), ProxyPy(), OshuBaseline())}
#: What runs without --targets (the baseline only with --baseline).
DEFAULT = [name for name in ALL if name != "oshu-baseline"]
