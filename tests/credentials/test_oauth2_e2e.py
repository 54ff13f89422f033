"""OAuth2 end to end through a real sidecar process: a local HTTPS token endpoint with its own CA
(counting requests), an API that accepts only a live access token, clients holding only the
sealed bearer token."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from threading import Barrier

import pytest
import requests

from oshu_contract.hosts import HostPattern
from oshu_contract.kinds import Kind
from oshu_contract.locations import Location
from oshu_contract.session import SecretBinding, new_kind_binding, new_sealed_token
from oshu_testkit.leaks import assert_no_secret, scan_sidecar
from oshu_testkit.oauth_standins import API_HOST, AUTH_HOST, TOKEN_EXCHANGE, TokenServer
from oshu_testkit.sessions import new_secret, new_session
from oshu_testkit.sidecar_process import SidecarProcess

OTHER_HOST = "other.oshu.test"  # pinned to the same stand-in, but not one of the binding's hosts
LIFETIME = 8  # seconds: refreshed ahead 2 s before expiry, not handed out in the last 0.8 s


def _binding(ts: TokenServer, hosts: list[str], **fields: str) -> SecretBinding:
    base = {"tokenUrl": f"https://{AUTH_HOST}/oauth/token", "clientId": ts.client_id, "clientSecret": ts.client_secret}
    return new_kind_binding(
        "API_TOKEN", Kind.OAUTH2, new_sealed_token(), tuple(HostPattern.parse(h) for h in hosts), {**base, **fields}
    )


#: Debug-level logs: every line the sidecar can write is scanned.
DEBUG = ["--log-level", "debug"]


@pytest.fixture
def server() -> Iterator[TokenServer]:
    with TokenServer(names=(AUTH_HOST, API_HOST, OTHER_HOST), lifetime=LIFETIME) as ts:
        yield ts


def _sidecar(ts: TokenServer, binding: SecretBinding, tmp_path: Path) -> SidecarProcess:
    other = new_secret("OTHER_KEY", [OTHER_HOST])  # makes other.oshu.test an intercepted host
    session = new_session(binding, other)
    return SidecarProcess(
        session, directory=tmp_path / "sc", connect_to=ts.connect_to(), upstream_ca_files=[ts.ca_file], extra_args=DEBUG
    )


def _client(sc: SidecarProcess) -> requests.Session:
    env = sc.client_env()
    s = requests.Session()
    s.trust_env = False
    s.proxies = {"https": sc.proxy_url}
    s.verify = env["REQUESTS_CA_BUNDLE"]
    return s


def _leak_scan(sc: SidecarProcess, ts: TokenServer, responses: list[bytes]) -> None:
    values = [ts.client_secret, ts.refresh_token, *ts.issued]
    scan_sidecar(sc, values)
    assert_no_secret({f"response {i}": r for i, r in enumerate(responses)}, values)


def test_32_concurrent_clients_one_token_request_per_expiry_period(server: TokenServer, tmp_path: Path) -> None:
    binding = _binding(server, [API_HOST])
    with _sidecar(server, binding, tmp_path) as sc:
        bodies: list[bytes] = []

        def one_round() -> list[int]:
            barrier = Barrier(32, timeout=30)

            def call(_: int) -> int:
                with _client(sc) as s:
                    barrier.wait()
                    r = s.get(
                        f"https://{API_HOST}/v1/whoami",
                        headers={"Authorization": f"Bearer {binding.sealed}"},
                        timeout=30,
                    )
                    bodies.append(r.content)
                    return r.status_code

            with ThreadPoolExecutor(32) as pool:
                return list(pool.map(call, range(32)))

        assert one_round() == [200] * 32
        assert server.token_requests == 1
        first = server.issued[-1]
        time.sleep(LIFETIME + 0.5)  # the token has expired: the next round must wait for one new one
        assert one_round() == [200] * 32
        assert server.token_requests == 2 and server.max_in_flight == 1
        obtained = [r for r in sc.log_records() if r.get("msg") == "oauth2 access token obtained"]
        assert len(obtained) == 2
        assert server.api_refused == 0
        assert set(server.api_tokens) == {first, server.issued[-1]} and server.issued[-1] != first
        assert server.api_tokens[:32] == [first] * 32  # every request of a round carried that round's token
        assert sc.metric("oshu_substitutions_total", secret="API_TOKEN", host=API_HOST) == 64
        _leak_scan(sc, server, bodies)


def test_refresh_token_grant_uses_the_rotated_refresh_token(server: TokenServer, tmp_path: Path) -> None:
    server.lifetime = 2
    binding = _binding(server, [API_HOST], refreshToken=server.refresh_token, clientAuth="post")
    first_refresh = server.refresh_token
    with _sidecar(server, binding, tmp_path) as sc, _client(sc) as s:
        auth = {"Authorization": f"Bearer {binding.sealed}"}
        assert s.get(f"https://{API_HOST}/v1/whoami", headers=auth, timeout=30).status_code == 200
        time.sleep(2.5)
        r = s.get(f"https://{API_HOST}/v1/whoami", headers=auth, timeout=30)
        assert r.status_code == 200  # the stand-in only accepts the refresh token it rotated to
        assert server.token_requests == 2 and server.refused == []
        assert server.refresh_token != first_refresh
        scan_sidecar(sc, [first_refresh, server.refresh_token, server.client_secret, *server.issued])


def test_a_token_response_reaches_the_agent_sealed_and_its_tokens_work_only_on_the_bindings_hosts(
    server: TokenServer, tmp_path: Path
) -> None:
    binding = _binding(server, [API_HOST, AUTH_HOST])
    with _sidecar(server, binding, tmp_path) as sc, _client(sc) as s:
        auth = {"Authorization": f"Bearer {binding.sealed}"}
        r = s.post(f"https://{AUTH_HOST}/oauth/token", data={"grant_type": TOKEN_EXCHANGE}, headers=auth, timeout=30)
        assert r.status_code == 200, r.text
        doc = r.json()
        for field in ("access_token", "refresh_token", "id_token"):
            assert doc[field].startswith("SEALED_"), field
        assert doc["expires_in"] == LIFETIME and doc["token_type"] == "Bearer"
        minted = {"Authorization": f"Bearer {doc['access_token']}"}
        ok = s.get(f"https://{API_HOST}/v1/whoami", headers=minted, timeout=30)
        assert ok.status_code == 200 and server.api_tokens[-1].startswith("xat-")
        elsewhere = s.get(f"https://{OTHER_HOST}/v1/whoami", headers=minted, timeout=30)
        assert elsewhere.status_code == 401  # the sealed token went there as it is: worthless
        _leak_scan(sc, server, [r.content, ok.content, elsewhere.content])


def test_token_endpoint_failures_are_json_errors_without_values(server: TokenServer, tmp_path: Path) -> None:
    binding = _binding(server, [API_HOST], clientSecret="cs-wrong-" + "x" * 20)
    with _sidecar(server, binding, tmp_path) as sc, _client(sc) as s:
        r = s.get(f"https://{API_HOST}/v1/whoami", headers={"Authorization": f"Bearer {binding.sealed}"}, timeout=30)
        assert r.status_code == 502 and r.headers["X-Oshu-Error"] == "token_unavailable"
        assert r.json()["error"]["message"].endswith("the token endpoint answered 401 (invalid_client)")
        assert server.api_tokens == []  # nothing reached the API
        _leak_scan(sc, server, [r.content])
        assert "cs-wrong-" not in sc.log_text()
        failed = sc.wait_for_log(lambda rec: rec.get("msg") == "oauth2 token request failed")
        assert "401 (invalid_client)" in json.dumps(failed)


def test_the_token_endpoint_must_present_a_certificate_the_proxy_trusts(server: TokenServer, tmp_path: Path) -> None:
    binding = _binding(server, [API_HOST])
    session = new_session(binding)
    with SidecarProcess(
        session, directory=tmp_path / "sc", connect_to=server.connect_to(), upstream_ca_files=[], extra_args=DEBUG
    ) as sc:
        with _client(sc) as s:
            r = s.get(
                f"https://{API_HOST}/v1/whoami", headers={"Authorization": f"Bearer {binding.sealed}"}, timeout=30
            )
        assert r.status_code == 502 and r.headers["X-Oshu-Error"] == "token_unavailable"
        assert "upstream_tls_error" in r.json()["error"]["message"]
        assert server.token_requests == 0  # the client secret never left the proxy


def test_locations_query_and_body(server: TokenServer, tmp_path: Path) -> None:
    """RFC 6750's other two ways to send a bearer token, where the binding's `locations` allow them."""
    binding = replace(
        _binding(server, [API_HOST]), locations=frozenset({Location.HEADERS, Location.QUERY, Location.BODY})
    )
    headers_only = _binding(server, [OTHER_HOST])  # default locations: headers only
    session = new_session(binding, replace(headers_only, name="OTHER_TOKEN", sealed=new_sealed_token()))
    with (
        SidecarProcess(
            session,
            directory=tmp_path / "sc",
            connect_to=server.connect_to(),
            upstream_ca_files=[server.ca_file],
            extra_args=DEBUG,
        ) as sc,
        _client(sc) as s,
    ):
        q = s.get(f"https://{API_HOST}/v1/whoami", params={"access_token": binding.sealed}, timeout=30)
        assert q.status_code == 200, q.text
        b = s.post(f"https://{API_HOST}/v1/whoami", data={"access_token": binding.sealed, "x": "y" * 100}, timeout=30)
        assert b.status_code == 200, b.text
        assert server.api_tokens == [server.issued[0]] * 2 and server.token_requests == 1
        other = session.secrets[1].sealed
        n = s.get(f"https://{OTHER_HOST}/v1/whoami", params={"access_token": other}, timeout=30)
        assert n.status_code == 401  # query not allowed for that binding: the sealed token went as it was
        _leak_scan(sc, server, [q.content, b.content, n.content])


def test_an_api_that_echoes_the_access_token_shows_the_agent_only_the_sealed_one(
    server: TokenServer, tmp_path: Path
) -> None:
    binding = _binding(server, [API_HOST])
    with _sidecar(server, binding, tmp_path) as sc, _client(sc) as s:
        r = s.get(
            f"https://{API_HOST}/v1/echo-token", headers={"Authorization": f"Bearer {binding.sealed}"}, timeout=30
        )
        assert r.status_code == 200 and server.api_tokens == server.issued[-1:]
        assert r.json()["you_sent"] == binding.sealed
        _leak_scan(sc, server, [r.content])


def test_a_rotated_client_secret_is_used_after_a_reload_and_revocation_stops_everything(
    server: TokenServer, tmp_path: Path
) -> None:
    binding = _binding(server, [API_HOST, AUTH_HOST])
    with _sidecar(server, binding, tmp_path) as sc, _client(sc) as s:
        auth = {"Authorization": f"Bearer {binding.sealed}"}
        assert s.get(f"https://{API_HOST}/v1/whoami", headers=auth, timeout=30).status_code == 200
        old_secret = server.client_secret
        server.client_secret = "cs-rotated-" + "r" * 24  # the endpoint now knows only the new one
        server.live.clear()  # and every token it issued is revoked
        fields = {**binding.fields, "clientSecret": server.client_secret}
        rotated = replace(binding, fields=fields)
        sc.write_session(new_session(rotated, new_secret("OTHER_KEY", [OTHER_HOST])))
        sc.wait_for_log(lambda rec: rec.get("msg") == "session reloaded")
        r = s.get(f"https://{API_HOST}/v1/whoami", headers=auth, timeout=30)
        assert r.status_code == 200, r.text  # same sealed token for the agent, a token got with the new secret
        assert server.token_requests == 2 and server.refused == []
        minted = s.post(
            f"https://{AUTH_HOST}/oauth/token", data={"grant_type": TOKEN_EXCHANGE}, headers=auth, timeout=30
        ).json()["access_token"]
        sc.write_session(new_session(rotated, new_secret("OTHER_KEY", [OTHER_HOST]), revoked=True))
        sc.wait_for_log(lambda rec: rec.get("msg") == "session revoked")
        before = (server.token_requests, len(server.api_tokens))
        for token in (binding.sealed, minted):
            r = s.get(f"https://{API_HOST}/v1/whoami", headers={"Authorization": f"Bearer {token}"}, timeout=30)
            assert r.status_code == 403 and r.headers["X-Oshu-Error"] == "session_revoked"
        assert (server.token_requests, len(server.api_tokens)) == before
        _leak_scan(sc, server, [r.content])
        assert old_secret not in sc.log_text()


def test_a_token_the_api_rejects_early_is_replaced_once(server: TokenServer, tmp_path: Path) -> None:
    """The IdP revokes the access token before its expires_in: the API's 401 reaches the agent, the
    proxy drops the token, the next request gets a new one; a second revocation within 30 s is not
    believed (an API refusing every token must not cause a token request per request)."""
    binding = _binding(server, [API_HOST])
    with _sidecar(server, binding, tmp_path) as sc, _client(sc) as s:
        auth = {"Authorization": f"Bearer {binding.sealed}"}
        url = f"https://{API_HOST}/v1/whoami"
        assert s.get(url, headers=auth, timeout=30).status_code == 200
        server.live.clear()  # revoked at the IdP
        assert s.get(url, headers=auth, timeout=30).status_code == 401
        assert s.get(url, headers=auth, timeout=30).status_code == 200
        assert server.token_requests == 2
        server.live.clear()
        assert [s.get(url, headers=auth, timeout=30).status_code for _ in range(3)] == [401] * 3
        assert server.token_requests == 2
        sc.wait_for_log(lambda rec: rec.get("msg", "").startswith("oauth2 access token rejected upstream"))
        _leak_scan(sc, server, [])
