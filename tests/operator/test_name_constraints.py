"""Evidence for name-constraining the session CA: every client honours it, none breaks on it.

The operator's CA (material.choose_ca) is name-constrained to the session's hosts. These
tests run the real sidecar with such a CA and each client with the standard proxy and CA
variables: a request to a session host works and the real key arrives; with a CA whose
constraints exclude the host, every client refuses the connection, so the key never leaves.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from oshu_contract.hosts import HostPattern
from oshu_operator import material
from oshu_testkit.client_matrix import CLIENTS, available, run_client
from oshu_testkit.sessions import new_secret, new_session
from oshu_testkit.sidecar_process import SidecarProcess
from oshu_testkit.upstreams import DEFAULT_HOST, Upstream

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def upstream():
    with Upstream() as up:
        yield up


def _ca(hosts):
    return material.choose_ca(
        None,
        common_name="test",
        hosts=[HostPattern.parse(h) for h in hosts],
        expires_at=None,
        now=material.utcnow(),
        default_validity=timedelta(hours=1),
    ).pair


@pytest.mark.parametrize("client", CLIENTS)
def test_constrained_session_ca_is_accepted(client, upstream, tmp_path):
    if not available(client):
        pytest.skip(f"{client} not installed")
    secret = new_secret("API_KEY", [DEFAULT_HOST])
    with SidecarProcess(new_session(secret), upstream=upstream, ca=_ca([DEFAULT_HOST]), directory=tmp_path) as sc:
        upstream.clear()
        ok, detail = run_client(client, f"https://{DEFAULT_HOST}/echo", ("x-api-key", secret.sealed), sc.client_env())
        assert ok, detail
        assert upstream.last.header("x-api-key") == secret.value


@pytest.mark.parametrize("client", CLIENTS)
def test_clients_enforce_the_constraints(client, upstream, tmp_path):
    if not available(client):
        pytest.skip(f"{client} not installed")
    secret = new_secret("API_KEY", [DEFAULT_HOST])
    wrong = _ca(["elsewhere.test"])
    with SidecarProcess(new_session(secret), upstream=upstream, ca=wrong, directory=tmp_path) as sc:
        upstream.clear()
        ok, detail = run_client(client, f"https://{DEFAULT_HOST}/echo", ("x-api-key", secret.sealed), sc.client_env())
        assert not ok, detail
        assert all(r.header("x-api-key") != secret.value for r in upstream.requests)
