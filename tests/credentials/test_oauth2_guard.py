"""The proxy's own call to an OAuth2 token endpoint goes through the gateway's address guard: a
tokenUrl whose name resolves to an internal address gets no request (and no client secret), unless
the operator allowed that range with --allow-upstream-cidr."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from oshu_vault_sdk import SecretsProxyClient, oauth2_secret

from oshu_testkit.gateway_process import GatewayProcess
from oshu_testkit.leaks import assert_no_secret
from oshu_testkit.oauth_standins import API_HOST, TokenServer

#: Resolves to 127.0.0.1 from /etc/hosts (no DNS query), and is pinned by nothing.
INTERNAL = "localhost"


@pytest.fixture
def tokens() -> Iterator[TokenServer]:
    with TokenServer(names=(API_HOST, INTERNAL)) as ts:
        yield ts


def _call(tokens: TokenServer, extra: list[str]) -> tuple[requests.Response, GatewayProcess]:
    pins = ["--connect-to", f"{API_HOST}:443:127.0.0.1:{tokens.port}"]
    gw = GatewayProcess(None, extra_args=["--upstream-ca-file", str(tokens.ca_file), *pins, *extra], catch_all=False)
    with gw:
        client = SecretsProxyClient(gw.base_url, gw.api_key, ca_file=str(gw.ca_file))
        secret = oauth2_secret(
            f"https://{INTERNAL}:{tokens.port}/oauth/token",
            tokens.client_id,
            [API_HOST],
            client_secret=tokens.client_secret,
        )
        with client.create_session({"API_TOKEN": secret}) as s:
            env = s.sandbox_env(ca_path=str(gw.ca_file))
            with requests.Session() as h:
                h.trust_env = False
                h.proxies = {"https": env["HTTPS_PROXY"]}
                h.verify = env["REQUESTS_CA_BUNDLE"]
                r = h.get(
                    f"https://{API_HOST}/v1/whoami", headers={"Authorization": f"Bearer {env['API_TOKEN']}"}, timeout=30
                )
        assert_no_secret({"gateway log": gw.log_text(), "answer": r.content}, [tokens.client_secret, *tokens.issued])
    return r, gw


def test_a_token_endpoint_at_an_internal_address_is_not_called(tokens: TokenServer) -> None:
    r, _ = _call(tokens, [])
    assert r.status_code == 502 and r.headers["X-Oshu-Error"] == "token_unavailable"
    assert "upstream_address_denied" in r.json()["error"]["message"]
    assert tokens.token_requests == 0 and tokens.api_tokens == []


def test_the_operator_may_allow_that_range(tokens: TokenServer) -> None:
    r, _ = _call(tokens, ["--allow-upstream-cidr", "127.0.0.0/8"])
    assert r.status_code == 200, r.text
    assert tokens.token_requests == 1 and tokens.api_tokens == [tokens.issued[-1]]
