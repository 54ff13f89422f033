"""Redirect enforcement end to end: oshu-vault-netrules' rules, the real sidecar as uid 65532 with its
transparent listener, the session's upstream in the "outside" namespace, and real clients as the agent's
uid with no proxy variable at all (curl, Python urllib, Node fetch, a Go program with its own transport).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from oshu_contract.session import SecretBinding
from oshu_testkit.leaks import scan_sidecar
from oshu_testkit.netns import METADATA_V4, OTHER_RESOLVER, OUTSIDE_V4, OUTSIDE_V6, Recorder, Topology, entered
from oshu_testkit.redirect import (
    AGENT_UID,
    CLIENT_PYTHON,
    PROXY_UID,
    TRANSPARENT_PORT,
    NetnsSidecar,
    agent_env,
    client_ca_dir,
    go_client,
    install,
    probe,
    remove_rules,
)
from oshu_testkit.sessions import new_secret, new_session
from oshu_testkit.upstreams import UPSTREAM_NAMES, Upstream

HOST = "api.oshu.test"  # API_KEY is swapped here
TUNNEL = "tunnel.oshu.test"  # egress-allowed, no secret: blind tunnel
DENIED = "denied.oshu.test"  # neither: reset

_PY_CLIENT = """
import json, ssl, sys, urllib.request
req = urllib.request.Request(sys.argv[1], headers={"x-api-key": sys.argv[2]})
ctx = ssl.create_default_context(cafile=sys.argv[3])
try:
    with urllib.request.urlopen(req, context=ctx, timeout=15) as r:
        print(json.dumps({"status": r.status, "body": r.read().decode()}))
except Exception as e:
    print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
"""
_NODE_CLIENT = """
const [url, key] = process.argv.slice(1);
fetch(url, { headers: { "x-api-key": key }, signal: AbortSignal.timeout(15000) })
  .then(async (r) => console.log(JSON.stringify({ status: r.status, body: await r.text() })))
  .catch((e) => console.log(JSON.stringify({ error: String(e.cause || e) })));
"""


@pytest.fixture(scope="module")
def topo(root: None) -> Iterator[Topology]:
    with Topology(prefix="oshu-t2e", hosts=[HOST, TUNNEL, DENIED]) as t:
        yield t


@pytest.fixture(scope="module")
def upstream(topo: Topology) -> Iterator[Upstream]:
    """The session's API in the outside namespace, on :443 and :80 of every outside address."""
    with entered(topo.outside):
        up = Upstream(names=UPSTREAM_NAMES, host="::").start()  # its thread (and sockets) stay outside
    topo.forward_ports({443: up.port, 80: up.http_port})
    yield up
    up.stop()


@pytest.fixture(autouse=True)
def _clean(upstream: Upstream) -> None:
    upstream.clear()


@pytest.fixture(scope="module")
def key() -> SecretBinding:
    return new_secret("API_KEY", [HOST])


@pytest.fixture(scope="module")
def sidecar(topo: Topology, upstream: Upstream, key: SecretBinding) -> Iterator[NetnsSidecar]:
    assert install(topo) == 0
    work = Path(tempfile.mkdtemp(prefix="oshu-t2e-sidecar-"))
    shutil.copy(upstream.ca_file, work / "upstream-ca.pem")
    sc = NetnsSidecar(
        topo.agent,
        new_session(key, egress=[TUNNEL]),
        directory=work,
        loopback_only=False,  # it resolves names itself (the namespace's /etc/hosts) and dials outside
        upstream_ca_files=[work / "upstream-ca.pem"],
        extra_args=[
            *("--transparent-listen", f"127.0.0.1:{TRANSPARENT_PORT}"),
            *("--transparent-listen", f"[::1]:{TRANSPARENT_PORT}"),
            "--require-redirect",
        ],
    )
    try:
        with sc:
            yield sc
            scan_sidecar(sc, [key.value])
        assert sc.returncode == 0, sc.log_text()[-3000:]
    finally:
        remove_rules(topo)
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def ca(sidecar: NetnsSidecar, upstream: Upstream) -> Iterator[Path]:
    """The agent's CA bundle: the session CA (intercepted hosts) and the upstream's (blind tunnels)."""
    d = client_ca_dir([sidecar.ca.cert_pem, upstream.ca_file.read_bytes()])
    yield d / "ca.pem"
    shutil.rmtree(d, ignore_errors=True)


def as_agent(topo: Topology, ca: Path, argv: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    e = agent_env(ca) if env is None else env
    p = subprocess.run(topo.cmd(argv, uid=AGENT_UID, env=e), capture_output=True, text=True, timeout=60)
    try:
        out: dict[str, Any] = json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        out = {"error": f"exit {p.returncode}: {p.stdout[-500:]} {p.stderr[-1000:]}"}
    return out


def curl_json(topo: Topology, ca: Path, url: str, key: str, *extra: str) -> dict[str, Any]:
    fmt = '{"status": %{http_code}, "exit": %{exitcode}}\n'
    argv = ["curl", "-sS", "--max-time", "15", "-o", "/dev/null", "-w", fmt, "-H", f"x-api-key: {key}", *extra, url]
    return as_agent(topo, ca, argv)


def client_argv(client: str, url: str, key: str, ca: Path) -> list[str]:
    if client == "curl":
        return ["curl", "-sS", "--max-time", "15", "-H", f"x-api-key: {key}", "-w", "\n", url]
    if client == "python":
        return [CLIENT_PYTHON, "-c", _PY_CLIENT, url, key, str(ca)]
    if client == "node":
        return ["node", "-e", _NODE_CLIENT, url, key]
    return [str(go_client()), "-cacert", str(ca), "-H", f"x-api-key: {key}", url]


def run_client(topo: Topology, ca: Path, client: str, url: str, key: str) -> dict[str, Any]:
    out = as_agent(topo, ca, client_argv(client, url, key, ca))
    if client == "curl" and "error" not in out:  # curl printed the echo body itself
        out = {"status": 200, "body": json.dumps(out)}
    return out


@pytest.mark.parametrize("client", ["curl", "python", "node", "go"])
def test_clients_without_proxy_variables_get_the_key_swapped(
    topo: Topology, ca: Path, sidecar: NetnsSidecar, upstream: Upstream, key: SecretBinding, client: str
) -> None:
    out = run_client(topo, ca, client, f"https://{HOST}/echo", key.sealed)
    assert out.get("status") == 200, out
    echoed = json.loads(out["body"])
    assert echoed["path"] == "/echo"
    assert upstream.last.header("x-api-key") == key.value  # the upstream got the real key
    assert key.value not in out["body"]  # and the agent never sees it (the echo is scrubbed)


def test_both_address_families_are_intercepted(
    topo: Topology, ca: Path, sidecar: NetnsSidecar, upstream: Upstream, key: SecretBinding
) -> None:
    for flag in ("-4", "-6"):
        assert curl_json(topo, ca, f"https://{HOST}/echo", key.sealed, flag)["status"] == 200, flag
        assert upstream.last.header("x-api-key") == key.value


def test_removing_the_proxy_variables_changes_nothing(
    topo: Topology, ca: Path, sidecar: NetnsSidecar, upstream: Upstream, key: SecretBinding
) -> None:
    """The same request through the explicit proxy (HTTPS_PROXY) and without: the same outcome."""
    with_proxy = {**agent_env(ca), "HTTPS_PROXY": sidecar.proxy_url, "https_proxy": sidecar.proxy_url}
    via_proxy = as_agent(topo, ca, client_argv("python", f"https://{HOST}/echo", key.sealed, ca), env=with_proxy)
    direct = run_client(topo, ca, "python", f"https://{HOST}/echo", key.sealed)
    assert via_proxy["status"] == direct["status"] == 200
    assert [r.header("x-api-key") for r in upstream.requests] == [key.value, key.value]
    denied_proxy = as_agent(topo, ca, client_argv("python", f"https://{DENIED}/echo", "x", ca), env=with_proxy)
    denied_direct = run_client(topo, ca, "python", f"https://{DENIED}/echo", "x")
    assert "error" in denied_proxy and "error" in denied_direct
    assert upstream.requests[2:] == []


def test_blind_tunnel_for_egress_allowed_hosts(
    topo: Topology, ca: Path, sidecar: NetnsSidecar, upstream: Upstream, key: SecretBinding
) -> None:
    """No secret for the host: the agent talks TLS with the upstream itself and the sealed token stays sealed."""
    out = run_client(topo, ca, "go", f"https://{TUNNEL}/echo", key.sealed)
    assert out.get("status") == 200, out
    assert upstream.last.header("x-api-key") == key.sealed


@pytest.mark.parametrize("client", ["curl", "go"])
def test_a_denied_host_is_reset(
    topo: Topology, ca: Path, sidecar: NetnsSidecar, upstream: Upstream, key: SecretBinding, client: str
) -> None:
    before = len(_denied_audits(sidecar))
    out = run_client(topo, ca, client, f"https://{DENIED}/echo", key.sealed)
    assert "error" in out and out.get("status") != 200, out
    assert upstream.requests == []
    sidecar.wait_for_log(lambda r: len(_denied_audits(sidecar)) > before)
    assert _denied_audits(sidecar)[-1]["outcome"] == "egress_denied"


def _denied_audits(sc: NetnsSidecar) -> list[dict[str, Any]]:
    return [r for r in sc.audit_records() if r.get("method") == "TRANSPARENT" and r.get("host") == DENIED]


@pytest.fixture(scope="module")
def recorder(topo: Topology) -> Iterator[Recorder]:
    rec = Recorder(topo.outside)
    for host in (OUTSIDE_V4, OUTSIDE_V6):
        rec.tcp(host, 8080)
        rec.udp(host, 443)
    rec.tcp(METADATA_V4, 80)
    rec.udp(OTHER_RESOLVER, 53)
    yield rec
    rec.close()


def test_everything_else_fails_for_the_agent(topo: Topology, sidecar: NetnsSidecar, recorder: Recorder) -> None:
    """Raw TCP to any port (either family) is reset by the sidecar; UDP 443, another resolver and the
    metadata address are rejected by the rules. Nothing reaches the outside listeners."""
    recorder.clear()
    for host, port in ((OUTSIDE_V4, 8080), (OUTSIDE_V6, 8080), (OUTSIDE_V4, 443), (OUTSIDE_V6, 22)):
        got = probe(topo, "tcp", host, port, send="hello\r\n\r\n")
        assert got["ok"] is False, (host, port, got)
    for host, port in ((OUTSIDE_V4, 443), (OUTSIDE_V6, 443), (OTHER_RESOLVER, 53)):
        assert probe(topo, "udp", host, port)["ok"] is False, (host, port)
    assert probe(topo, "tcp", METADATA_V4, 80)["ok"] is False
    assert recorder.hits == []
    # the same raw socket as the sidecar's uid goes out: the exemption is by uid
    assert probe(topo, "tcp", OUTSIDE_V4, 8080, uid=PROXY_UID)["data"] == "REACHED\n"
    assert recorder.reached("tcp", OUTSIDE_V4, 8080) == 1


def _wait_ready(sc: NetnsSidecar, status: int, timeout: float = 15.0) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        got, body = sc.admin_get("/readyz")
        if got == status or time.monotonic() > deadline:
            assert got == status, body
            return body
        time.sleep(0.1)


def test_readiness_follows_the_rules(topo: Topology, sidecar: NetnsSidecar) -> None:
    assert json.loads(_wait_ready(sidecar, 200))["status"] == "ready"
    remove_rules(topo)
    try:
        assert json.loads(_wait_ready(sidecar, 503)) == {"status": "redirect_missing"}
    finally:
        assert install(topo) == 0
    _wait_ready(sidecar, 200)
    assert install(topo) == 0  # idempotent while the sidecar runs: still ready
    _wait_ready(sidecar, 200)


def test_control_without_the_rules_the_agent_goes_straight_out(
    topo: Topology, ca: Path, sidecar: NetnsSidecar, upstream: Upstream, key: SecretBinding
) -> None:
    """What the suite guards against: with the rules gone, the same client reaches the upstream
    directly, with the sealed token (and a denied host is reached too)."""
    remove_rules(topo)
    try:
        out = run_client(topo, ca, "go", f"https://{HOST}/echo", key.sealed)
        assert out.get("status") == 200, out
        assert upstream.last.header("x-api-key") == key.sealed
        assert run_client(topo, ca, "go", f"https://{DENIED}/echo", key.sealed).get("status") == 200
    finally:
        assert install(topo) == 0
    _wait_ready(sidecar, 200)
