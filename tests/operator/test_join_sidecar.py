"""The two halves joined: the sidecar runs on the session Secret the operator wrote, and a
client configured only by the env the webhook injected gets its sealed token swapped for
the real key on the way to a local upstream; rotation and revocation reach it too."""

from __future__ import annotations

import subprocess

import pytest

from oshu_contract.pki import KeyPair
from oshu_operator import names as n
from oshu_testkit.clientenv import pod_env_on_host
from oshu_testkit.kube import SIDECAR, pod, wait_for
from oshu_testkit.sidecar_process import SidecarProcess
from oshu_testkit.upstreams import DEFAULT_HOST, Upstream

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def upstream(make_upstream) -> Upstream:
    return make_upstream()


def client_env(injected_env: list[dict], sidecar: SidecarProcess, ca_dir) -> dict[str, str]:
    """The app container's environment as injected, with pod paths and ports mapped to this host."""
    return pod_env_on_host(
        [(e["name"], e["value"]) for e in injected_env],
        ca_dir=ca_dir,
        pod_proxy_url=SIDECAR.proxy_url,
        host_proxy_url=sidecar.proxy_url,
        base={"PATH": "/usr/bin:/bin", "HOME": str(ca_dir)},
    )


def curl(env: dict[str, str], url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "curl",
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            f"x-api-key: {env['ANTHROPIC_API_KEY']}",
            url,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_sealed_token_reaches_upstream_as_the_real_key(kube, ns, real, upstream, tmp_path):
    value = real()
    kube.secret(ns, "anthropic", {"api-key": value})
    kube.session(
        ns,
        "claude",
        [
            {
                "name": "ANTHROPIC_API_KEY",
                "secretKeyRef": {"name": "anthropic", "key": "api-key"},
                "hosts": [DEFAULT_HOST],
            }
        ],
        egress=[DEFAULT_HOST],
    )
    kube.wait_phase(ns, "claude", n.PHASE_READY)
    made = kube.create(pod("agent", "claude"), "-n", ns)
    assert made.ok, made.error
    injected_env = made.obj["spec"]["containers"][0]["env"]

    data = kube.session_secret(ns, "claude")
    ca_dir = tmp_path / "ca"  # what the app container sees: only ca.crt and ca-bundle.pem
    ca_dir.mkdir()
    (ca_dir / n.KEY_CA_CERT).write_bytes(data[n.KEY_CA_CERT])
    (ca_dir / n.KEY_CA_BUNDLE).write_bytes(data[n.KEY_CA_BUNDLE])
    with SidecarProcess(
        data[n.KEY_SESSION_FILE],
        upstream=upstream,
        directory=tmp_path / "sidecar",
        ca=KeyPair(data[n.KEY_CA_CERT], data[n.KEY_CA_KEY]),
    ) as sidecar:
        env = client_env(injected_env, sidecar, ca_dir)
        assert env["ANTHROPIC_API_KEY"].startswith("SEALED_") and value not in env.values()

        r = curl(env, f"https://{DEFAULT_HOST}/echo")
        assert r.stdout == "200", r.stderr
        assert upstream.last.header("x-api-key") == value  # the key arrives

        r = curl(env, "https://elsewhere.oshu.test/echo")  # not in the session: nothing arrives
        assert r.stdout != "200"
        assert all(rec.header("x-api-key") != value for rec in upstream.requests[1:])

        # Rotation: the operator rewrites the session Secret; kubelet would sync the file.
        rotated = real()
        kube.secret(ns, "anthropic", {"api-key": rotated})
        doc = wait_for(
            lambda: (d := kube.session_secret(ns, "claude")) and rotated.encode() in d[n.KEY_SESSION_FILE] and d,
            15,
            "rotated session file",
        )
        sidecar.write_session(doc[n.KEY_SESSION_FILE])
        wait_for(
            lambda: (
                curl(env, f"https://{DEFAULT_HOST}/echo").stdout == "200"
                and upstream.last.header("x-api-key") == rotated
            ),
            15,
            "rotated key used",
        )

        # Revocation: deleting the VaultSession revokes the file before the Secret goes away.
        kube.delete(n.PLURAL, "claude", ns)
        revoked = wait_for(
            lambda: (d := kube.session_secret(ns, "claude")) and b'"revoked": true' in d[n.KEY_SESSION_FILE] and d,
            15,
            "revoked session file",
        )
        sidecar.write_session(revoked[n.KEY_SESSION_FILE])

        def refused() -> bool:
            upstream.clear()
            curl(env, f"https://{DEFAULT_HOST}/echo")
            return all(rec.header("x-api-key") != rotated for rec in upstream.requests)

        wait_for(refused, 15, "revoked session stops substituting")
        assert value not in sidecar.log_text() and rotated not in sidecar.log_text()
