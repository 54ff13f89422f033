"""Real clients through the proxy, configured only by standard environment variables.

Each client runs as a subprocess whose environment carries HTTPS_PROXY/HTTP_PROXY and the
CA bundle variables; no client code knows a proxy exists. The agent-side view: it sends
its sealed token, the upstream receives the real key, and the response it reads back has
the real key scrubbed out again.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oshu_contract.session import SecretBinding
from oshu_testkit.clients import curl, header_of, node_fetch, pyclient
from oshu_testkit.sidecar_process import SidecarProcess
from oshu_testkit.upstreams import HOST, TUNNEL, Upstream

PY_CLIENTS = ["requests", "httpx", "aiohttp"]


def test_curl_header_substituted_and_response_scrubbed(
    sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    key = keys["API_KEY"]
    status, headers, body, err = curl(
        sidecar.client_env(), f"https://{HOST}/reflect?header=x-api-key", "-H", f"x-api-key: {key.sealed}"
    )
    assert status == 200, err
    assert upstream.last.header("x-api-key") == key.value
    assert headers["x-echo"] == key.sealed
    assert key.value not in body and body.count(key.sealed) == 2


@pytest.mark.parametrize("client", PY_CLIENTS)
def test_python_client_bearer_token(
    client: str, sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    key = keys["API_KEY"]
    out = pyclient(
        sidecar.client_env(),
        client,
        f"https://{HOST}/echo/{client}",
        "POST",
        {"Authorization": f"Bearer {key.sealed}", "Content-Type": "application/json"},
        '{"hello": 1}',
    )
    assert out["status"] == 200
    assert upstream.last.header("authorization") == f"Bearer {key.value}"
    assert upstream.last.body == b'{"hello": 1}'
    echo = json.loads(out["body"])
    assert header_of(echo, "authorization") == f"Bearer {key.sealed}"  # scrubbed on the way back
    assert key.value not in out["body"] and key.value not in json.dumps(out["headers"])


def test_node_fetch_through_env_proxy_agent(
    node_client: Path, sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    key = keys["API_KEY"]
    out = node_fetch(
        node_client, sidecar.client_env(), f"https://{HOST}/reflect?header=x-api-key", "GET", {"x-api-key": key.sealed}
    )
    assert out["status"] == 200
    assert upstream.last.header("x-api-key") == key.value
    assert out["headers"]["x-echo"] == key.sealed
    assert key.value not in out["body"]


@pytest.mark.parametrize("client", ["curl", *PY_CLIENTS, "node"])
def test_blind_tunnel_keeps_real_certificate(
    client: str, sidecar: SidecarProcess, upstream: Upstream, node_client: Path, keys: dict[str, SecretBinding]
) -> None:
    """A host no secret names is tunnelled, not intercepted: the client verifies the upstream's own cert."""
    key = keys["API_KEY"]
    env = sidecar.client_env(extra_ca_files=[upstream.ca_file])
    url = f"https://{TUNNEL}/echo/tunnel"
    headers = {"x-api-key": key.sealed}
    if client == "curl":
        status, _, _body, err = curl(env, url, "-H", f"x-api-key: {key.sealed}")
        assert status == 200, err
    elif client == "node":
        assert node_fetch(node_client, env, url, "GET", headers)["status"] == 200
    else:
        assert pyclient(env, client, url, "GET", headers)["status"] == 200
    # Nothing was substituted: the sealed token went through untouched (it is worthless elsewhere).
    assert upstream.last.header("x-api-key") == key.sealed
    assert (sidecar.metric("oshu_tunnels_total", mode="blind") or 0) >= 1


def test_blind_tunnel_is_not_intercepted(sidecar: SidecarProcess, upstream: Upstream) -> None:
    """Trusting only the session CA, a tunnelled host fails verification: the proxy never minted for it."""
    _, _, _, err = curl(sidecar.client_env(), f"https://{TUNNEL}/echo")
    assert "SSL certificate problem" in err, err
    assert upstream.requests == []
