"""The session API of a real gateway: creation, metadata, deletion, every bad input, leaks, expiry."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time

import pytest

from oshu_testkit.gateway_process import GatewayProcess
from oshu_testkit.leaks import assert_no_secret
from oshu_testkit.upstreams import Upstream

VALUE = "sk-api-test-9f8e7d6c5b4a3210"
JSON = {"Content-Type": "application/json"}


def _post(gw: GatewayProcess, doc: object, **kw: object) -> tuple[int, dict[str, str], dict]:
    status, headers, body = gw.request("POST", "/v1/sessions", json.dumps(doc).encode(), JSON, **kw)  # type: ignore[arg-type]
    return status, headers, (json.loads(body) if body else {})


def test_create_get_delete(gateway: GatewayProcess) -> None:
    status, _, s = _post(
        gateway,
        {
            "secrets": {
                "ANTHROPIC_API_KEY": VALUE,
                "MY_KEY": {"value": VALUE + "x", "hosts": ["api.oshu.test"], "locations": ["headers", "query"]},
            },
            "allowed_egress": ["pypi.org"],
            "ttl_seconds": 600,
            "idle_ttl_seconds": 60,
        },
    )
    assert status == 201
    assert s["session_id"].startswith("sess_") and s["token"].startswith("tok_")
    assert set(s["sealed_secrets"]) == {"ANTHROPIC_API_KEY", "MY_KEY"}
    assert s["proxy_url"] == gateway.proxy_url(s)
    assert s["ca_url"] == gateway.base_url + "/v1/ca.pem"
    status, _, body = gateway.request("GET", f"/v1/sessions/{s['session_id']}")
    meta = json.loads(body)
    assert status == 200
    assert meta["secrets"]["ANTHROPIC_API_KEY"]["hosts"] == ["api.anthropic.com"]  # from the catalog
    assert meta["secrets"]["MY_KEY"]["locations"] == ["headers", "query"]
    assert meta["allowed_egress"] == ["pypi.org"]
    assert_no_secret({"metadata": body}, [VALUE])
    assert s["token"] not in body.decode() and s["sealed_secrets"]["MY_KEY"] not in body.decode()
    assert gateway.request("DELETE", f"/v1/sessions/{s['session_id']}")[0] == 204
    assert gateway.request("GET", f"/v1/sessions/{s['session_id']}")[0] == 404
    assert gateway.request("DELETE", f"/v1/sessions/{s['session_id']}")[0] == 404


def test_secret_hosts_and_unknown_names(gateway: GatewayProcess) -> None:
    status, _, _s = _post(gateway, {"secrets": {"CUSTOM": VALUE}, "secret_hosts": ["api.oshu.test"]})
    assert status == 201
    status, _, e = _post(gateway, {"secrets": {"CUSTOM": VALUE}})
    assert status == 400 and "CUSTOM" in e["error"]["message"] and "catalog" in e["error"]["message"]
    assert VALUE not in json.dumps(e)


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({}, "secrets"),
        ({"secrets": {}}, "secrets"),
        ({"secrets": {"X": 5}}, "secrets.X"),
        ({"secrets": {"bad-name": {"value": VALUE, "hosts": ["a.oshu.test"]}}}, "bad-name"),
        ({"secrets": {"SHORT": {"value": "abc", "hosts": ["a.oshu.test"]}}}, "SHORT"),
        ({"secrets": {"K": {"value": VALUE, "hosts": ["not a host!"]}}}, "hosts"),
        ({"secrets": {"K": {"value": VALUE, "hosts": ["a.oshu.test"], "locations": ["cookies"]}}}, "K"),
        ({"secrets": {"K": {"value": VALUE, "hosts": ["a.oshu.test"], "color": 1}}}, "color"),
        ({"secrets": {"OPENAI_API_KEY": VALUE}, "ttl_seconds": -1}, "ttl_seconds"),
        ({"secrets": {"OPENAI_API_KEY": VALUE}, "ttl_seconds": 10**9}, "ttl_seconds"),
        ({"secrets": {"OPENAI_API_KEY": VALUE}, "allowed_egress": "x"}, "allowed_egress"),
        ({"secrets": {"OPENAI_API_KEY": VALUE}, "surprise": True}, "surprise"),
        ([1, 2], "object"),
    ],
)
def test_invalid_bodies_name_the_field_never_the_value(gateway: GatewayProcess, doc: object, field: str) -> None:
    status, headers, e = _post(gateway, doc)
    assert status == 400, e
    assert headers["content-type"] == "application/json"
    assert field in e["error"]["message"]
    assert VALUE not in json.dumps(e)


def test_error_statuses(gateway: GatewayProcess) -> None:
    ok = json.dumps({"secrets": {"OPENAI_API_KEY": VALUE}}).encode()
    for key in ("", "wrong-key"):
        status, _, body = gateway.request("POST", "/v1/sessions", ok, JSON, api_key=key)
        assert status == 401 and json.loads(body)["error"]["code"] == "unauthorized"
    assert gateway.request("GET", "/v1/sessions/sess_unknown")[0] == 404
    assert gateway.request("GET", "/v1/nothing")[0] == 404
    status, headers, _ = gateway.request("PUT", "/v1/sessions")
    assert status == 405 and headers["allow"] == "POST"
    assert gateway.request("POST", "/v1/sessions", ok, {"Content-Type": "text/plain"})[0] == 415
    assert gateway.request("POST", "/v1/sessions", b"{not json", JSON)[0] == 400
    assert gateway.request("POST", "/v1/sessions", b"x" * 70000, JSON)[0] == 413
    # public routes need no key
    assert gateway.request("GET", "/v1/ca.pem", api_key="")[2] == gateway.ca_file.read_bytes()
    status, _, body = gateway.request("GET", "/v1/openapi.json", api_key="")
    assert status == 200 and json.loads(body)["openapi"].startswith("3.")
    assert gateway.request("GET", "/healthz", api_key="")[0] == 200
    assert gateway.request("GET", "/readyz", api_key="")[0] == 200


def test_raw_garbage_then_still_serving(gateway: GatewayProcess) -> None:
    ctx = ssl.create_default_context(cafile=str(gateway.ca_file))
    for junk in (
        b"\x00\x01garbage\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n",
    ):
        assert gateway.listen is not None
        with (
            socket.create_connection(gateway.listen, timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
        ):
            sock.sendall(junk)
            head = sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 4") or head.startswith(b"HTTP/1.1 5"), head[:80]
    # a TLS client that never finishes the handshake, and a plain-text client on the TLS port
    assert gateway.listen is not None
    with socket.create_connection(gateway.listen, timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
    status, _, _s = _post(gateway, {"secrets": {"OPENAI_API_KEY": VALUE}})
    assert status == 201


def test_creation_rate_limit_then_other_keys_still_served(upstream: Upstream) -> None:
    with GatewayProcess(upstream, api_keys=("key-one-0123456789", "key-two-0123456789")) as gw:
        codes = []
        for _ in range(80):
            status, headers, _ = _post(gw, {"secrets": {"OPENAI_API_KEY": VALUE}})
            codes.append(status)
            if status == 429:
                assert int(headers["retry-after"]) >= 1
                break
        assert codes[-1] == 429 and codes.count(201) >= 50
        assert _post(gw, {"secrets": {"OPENAI_API_KEY": VALUE}}, api_key="key-two-0123456789")[0] == 201
        # the key file is re-read when it changes
        gw.key_file.write_text("key-three-0123456789\n")
        assert _post(gw, {"secrets": {"OPENAI_API_KEY": VALUE}}, api_key="key-three-0123456789")[0] == 201
        assert _post(gw, {"secrets": {"OPENAI_API_KEY": VALUE}}, api_key="key-two-0123456789")[0] == 401


def test_idle_and_absolute_expiry(upstream: Upstream) -> None:
    with GatewayProcess(upstream) as gw:
        idle = gw.create_session(
            {"secrets": {"K": {"value": VALUE, "hosts": ["api.oshu.test"]}}, "idle_ttl_seconds": 1}
        )
        absolute = gw.create_session({"secrets": {"K": {"value": VALUE, "hosts": ["api.oshu.test"]}}, "ttl_seconds": 2})
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if all(gw.request("GET", f"/v1/sessions/{s['session_id']}")[0] == 404 for s in (idle, absolute)):
                break
            time.sleep(0.3)
        for s in (idle, absolute):
            assert gw.request("GET", f"/v1/sessions/{s['session_id']}")[0] == 404
            out = subprocess.run(
                [
                    "curl",
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--proxy",
                    gw.proxy_url(s, False),
                    "http://api.oshu.test/echo",
                ],
                capture_output=True,
                text=True,
                timeout=30,
                env={"PATH": "/usr/bin:/bin"},
            )
            assert out.stdout == "407"
        deadline = time.monotonic() + 15  # purged from storage by the sweeper (every second)
        while time.monotonic() < deadline:
            metrics = gw.request("GET", "/metrics", api_key="")[2].decode()
            if "oshu_gateway_sessions_expired_total 2" in metrics:
                break
            time.sleep(0.3)
        assert "oshu_gateway_sessions_expired_total 2" in metrics
        assert "oshu_gateway_sessions_live 0" in metrics


def test_metrics_and_logs_hold_no_value(gateway: GatewayProcess, upstream: Upstream) -> None:
    s = gateway.create_session({"secrets": {"K": {"value": VALUE, "hosts": ["api.oshu.test"]}}})
    sealed = s["sealed_secrets"]["K"]
    out = subprocess.run(
        [
            "curl",
            "-s",
            "--proxy",
            gateway.proxy_url(s),
            "--proxy-cacert",
            str(gateway.ca_file),
            "--cacert",
            str(gateway.ca_file),
            "-H",
            f"x-api-key: {sealed}",
            "https://api.oshu.test/reflect?header=x-api-key",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert sealed in out.stdout and upstream.last.header("x-api-key") == VALUE
    metrics = gateway.request("GET", "/metrics", api_key="")[2].decode()
    assert "oshu_gateway_sessions_live" in metrics and 'route="/v1/sessions",status="201"' in metrics
    deadline = time.monotonic() + 10  # log lines are written by the gateway's line sink, not at once
    while time.monotonic() < deadline and not gateway.find_log(lambda r: r.get("session") == s["session_id"]):
        time.sleep(0.1)
    audit = gateway.find_log(lambda r: r.get("session") == s["session_id"])
    assert audit is not None and audit["msg"] == "request" and audit["host"] == "api.oshu.test", audit
    assert_no_secret({"log": gateway.log_text(), "metrics": metrics, "response": out.stdout}, [VALUE])
    assert s["token"] not in gateway.log_text() and s["token"] not in metrics


def test_expect_100_continue(gateway: GatewayProcess) -> None:
    """The interim 100 comes before the body is sent (curl waits for it on larger bodies)."""
    body = json.dumps({"secrets": {"OPENAI_API_KEY": VALUE}}).encode()
    ctx = ssl.create_default_context(cafile=str(gateway.ca_file))
    assert gateway.listen is not None
    with (
        socket.create_connection(gateway.listen, timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
    ):
        sock.sendall(
            f"POST /v1/sessions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {gateway.api_key}\r\nExpect: 100-continue\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        assert sock.recv(4096).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")  # nothing sent yet but the head
        sock.sendall(body)
        assert sock.recv(4096).startswith(b"HTTP/1.1 201 ")


def test_openapi_document_matches_the_routes() -> None:
    """The document kept in the repo names exactly the routes the API serves, with their methods."""
    from oshu_gateway.api import ROUTES, openapi_document

    doc = json.loads(openapi_document())
    served = {path: sorted(m.lower() for m in methods) for path, methods in ROUTES.items()}
    documented = {path: sorted(m for m in ops if m != "parameters") for path, ops in doc["paths"].items()}
    assert documented == served
