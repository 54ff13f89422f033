"""The four ways a request reaches the upstream, and how to start each proxy.

Every proxy gets the same job: intercept CONNECT to the test host, mint a leaf
from the same proxy CA, swap the sealed token for the real key in the request
headers, and forward over TLS verified against the upstream CA only.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
from collections.abc import Callable
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
    after_ready: Callable[[], None] | None = None  # runs once /readyz answers (the gateway creates its sessions)
    probe_identity: tuple[str, str] | None = None  # (Proxy-Authorization, sealed) of the readiness request
    identities: Path | None = None  # loadgen -identities file


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


class OshuGateway(Target):
    """`oshu-gateway` holding GATEWAY_SESSIONS live sessions; the load spreads its connections over the
    first GATEWAY_USED of them (connection i authenticates as session i mod 100, with its own sealed token).
    Plain listener, as the sidecar's; each session has the same one secret as the sidecar's session."""

    SESSIONS = 1000
    USED = 100

    def __init__(self) -> None:
        super().__init__("oshu-gateway")

    def launch(self, ctx: Context) -> Launch:
        port, tls_port = procs.free_port(), procs.free_port()
        up = ctx.up
        state = ctx.workdir / f"gateway-state-{port}"
        keys = ctx.workdir / "gateway-api-keys"
        # Creation is rate-limited per API key (burst 50, then 10/s): 40 sessions per key keeps set-up quick.
        api_keys = [f"bench-gateway-key-{k:03d}-0123456789" for k in range(self.SESSIONS // 40 + 1)]
        keys.write_text("\n".join(api_keys) + "\n")
        cmd = [
            str(ctx.project_python), "-m", "oshu_gateway",
            "--listen", f"127.0.0.1:{tls_port}", "--plain-listen", f"127.0.0.1:{port}",
            "--state-dir", str(state), "--api-key-file", str(keys),
            "--ca-cert", str(ctx.pki.proxy_ca), "--ca-key", str(ctx.pki.proxy_ca_key),
            "--upstream-ca-file", str(ctx.pki.upstream_ca),
            "--resolve", f"{up.name}:{up.http_port}:127.0.0.1",
            "--resolve", f"{up.name}:{up.sse_port}:127.0.0.1",
        ]  # fmt: skip
        launch = Launch(cmd, clean_env(), port, admin_port=port, cwd=REPO)
        launch.identities = ctx.workdir / f"gateway-identities-{port}"

        def create_sessions() -> None:
            body = json.dumps({"secrets": {"API_KEY": {"value": ctx.secret, "hosts": [up.http_target, up.sse_target]}}})
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            lines = []
            for i in range(self.SESSIONS):
                headers = {"Content-Type": "application/json", "Authorization": f"Bearer {api_keys[i // 40]}"}
                conn.request("POST", "/v1/sessions", body, headers)
                resp = conn.getresponse()
                data = resp.read()
                if resp.status != 201:
                    raise RuntimeError(f"gateway session {i}: {resp.status} {data[:200]!r}")
                s = json.loads(data)
                if i < self.USED:
                    lines.append(f"{s['session_id']}:{s['token']} {s['sealed_secrets']['API_KEY']}")
            conn.close()
            assert launch.identities is not None
            launch.identities.write_text("\n".join(lines) + "\n")
            cred, sealed = lines[0].split(" ")
            launch.probe_identity = ("Basic " + base64.b64encode(cred.encode()).decode(), sealed)

        launch.after_ready = create_sessions
        return launch


ALL = {t.name: t for t in (Direct(), OshuSidecar(), Mitmproxy(), ProxyPy(), OshuBaseline(), OshuGateway())}
#: What runs without --targets (the baseline only with --baseline).
DEFAULT = [name for name in ALL if name not in ("oshu-baseline", "oshu-gateway")]
