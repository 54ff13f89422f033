"""Metrics, audit lines, and the proof that no real secret value ever shows up in either."""

from __future__ import annotations

import json
import time

from oshu_testkit.clients import curl
from oshu_testkit.leaks import assert_no_secret
from oshu_testkit.rawclient import RawClient
from oshu_testkit.sessions import new_secret, new_session
from oshu_testkit.sidecar_process import SidecarProcess
from oshu_testkit.upstreams import HOST, OTHER, TUNNEL, Upstream

BOUND = 100  # iterations for bounded polling loops


def wait_metric(sc: SidecarProcess, name: str, want: float, **labels: str) -> float | None:
    value = None
    for _ in range(BOUND):
        value = sc.metric(name, **labels)
        if value == want:
            return value
        time.sleep(0.05)
    return value


def test_metrics_contents(make_sidecar, upstream: Upstream) -> None:
    api = new_secret("API_KEY", [HOST])
    other = new_secret("OTHER_KEY", [OTHER])
    sc = make_sidecar(new_session(api, other, expires_in=3600), hosts=[HOST, OTHER, TUNNEL, "unnamed.oshu.test:80"])
    env = sc.client_env(extra_ca_files=[upstream.ca_file])
    for _ in range(3):
        assert curl(env, f"https://{HOST}/echo", "-H", f"x-api-key: {api.sealed}")[0] == 200
    assert curl(env, f"https://{HOST}/reflect", "-H", f"x-api-key: {api.sealed}")[0] == 200
    assert curl(env, f"https://{OTHER}/echo", "-H", f"x-api-key: {other.sealed}")[0] == 200
    assert curl(env, f"http://{HOST}/echo", "-H", f"x-api-key: {api.sealed}")[0] == 403
    assert curl(env, "http://unnamed.oshu.test/echo")[0] == 200
    assert curl(env, f"https://{TUNNEL}/echo")[0] == 200
    with RawClient(sc.listen) as c:
        assert c.connect(f"{HOST}:443").status == 200
        c.start_tls(HOST, sc.ca_cert_file)
        assert c.request("GET", "/echo", {"Host": OTHER}).status == 421

    m = sc.metric
    assert m("oshu_requests_total", host=HOST, outcome="forwarded") == 4
    assert m("oshu_requests_total", host=OTHER, outcome="forwarded") == 1
    assert m("oshu_requests_total", host="other", outcome="plaintext_secret") == 1  # port 80 is not named
    assert m("oshu_requests_total", host=HOST, outcome="host_mismatch") == 1
    assert m("oshu_requests_total", host="other", outcome="forwarded") == 1  # hosts the session does not name
    assert m("oshu_substitutions_total", secret="API_KEY", host=HOST) == 4
    assert m("oshu_substitutions_total", secret="OTHER_KEY", host=OTHER) == 1
    assert m("oshu_response_scrubs_total", secret="API_KEY", host=HOST) == 4  # echo and reflect bodies
    assert m("oshu_refusals_total", reason="plaintext_secret") == 1
    assert m("oshu_refusals_total", reason="host_mismatch") == 1
    assert m("oshu_upstream_latency_seconds_count") == 6
    assert m("oshu_tunnels_total", mode="intercept") == 6
    assert m("oshu_tunnels_total", mode="blind") == 1
    assert m("oshu_leaf_certificates_minted_total") == 2  # one per intercepted name, then cached
    assert 3500 < (m("oshu_session_expiry_seconds") or 0) <= 3600
    assert m("oshu_session_info", session="agents/test") == 1
    assert m("oshu_session_revoked") == 0 and m("oshu_session_load_error") == 0
    assert m("oshu_session_reloads_total", result="ok") == 1
    assert wait_metric(sc, "oshu_open_connections", 0, side="client") == 0
    conns = [RawClient(sc.listen) for _ in range(3)]
    try:
        assert wait_metric(sc, "oshu_open_connections", 3, side="client") == 3
    finally:
        for c in conns:
            c.close()
    assert wait_metric(sc, "oshu_open_connections", 0, side="client") == 0
    for name in (
        "oshu_requests_total",
        "oshu_substitutions_total",
        "oshu_refusals_total",
        "oshu_open_connections",
        "oshu_upstream_latency_seconds",
        "oshu_leaf_certificates_minted_total",
        "oshu_session_expiry_seconds",
    ):
        assert f"# TYPE {name.removesuffix('_total')}" in sc.metrics_text()


def test_audit_line_per_request(make_sidecar, upstream: Upstream) -> None:
    api = new_secret("API_KEY", [HOST])
    q = new_secret("QUERY_KEY", [HOST], locations=["headers", "query"])
    sc = make_sidecar(new_session(api, q, name="agents/audit"))
    status, _, body, _ = curl(
        sc.client_env(),
        f"https://{HOST}/echo/a?key={q.sealed}&plain=visible-value&flag",
        "-H",
        f"x-api-key: {api.sealed}",
        "-X",
        "POST",
        "--data-binary",
        "12345",
    )
    assert status == 200
    rec = sc.wait_for_log(lambda r: r.get("logger") == "oshu.sidecar.audit")
    assert rec["session"] == "agents/audit"
    assert rec["host"] == HOST and rec["method"] == "POST" and rec["scheme"] == "https"
    assert rec["path"] == "/echo/a?key=&plain=&flag="  # query values never logged
    assert rec["status"] == 200 and rec["outcome"] == "forwarded"
    assert rec["bytes_in"] == 5 and rec["bytes_out"] == len(body.encode())
    assert sorted(rec["secrets"]) == ["API_KEY", "QUERY_KEY"]
    assert isinstance(rec["duration_ms"], float) and rec["duration_ms"] >= 0
    assert "visible-value" not in sc.log_text()
    assert len(sc.audit_records()) == 1


def test_no_secret_value_anywhere(make_sidecar, upstream: Upstream, tmp_path) -> None:
    """Drive every path (success, scrubbing, each refusal, errors, reloads) and scan everything observable."""
    api = new_secret("API_KEY", [HOST])
    q = new_secret("QUERY_KEY", [HOST], locations=["headers", "query", "body"])
    other = new_secret("OTHER_KEY", [OTHER])
    values = [api.value, q.value, other.value]
    sc = make_sidecar(
        new_session(api, q, other, egress=[HOST, OTHER, "api.oshu.test:80"]),
        values=values,
        extra_args=["--log-level", "debug"],
    )
    env = sc.client_env()
    bodies: dict[str, str | bytes] = {}

    def call(label: str, url: str, *args: str) -> None:
        _status, headers, body, err = curl(env, url, *args)
        bodies[f"{label} body"] = body
        bodies[f"{label} headers"] = json.dumps(headers)
        bodies[f"{label} client stderr"] = err

    call("ok", f"https://{HOST}/echo?key={q.sealed}", "-H", f"x-api-key: {api.sealed}", "--data-binary", q.sealed)
    call("reflect", f"https://{HOST}/reflect?split=2", "-H", f"x-api-key: {api.sealed}")
    call("basic", f"https://{HOST}/reflect?header=authorization", "-u", f"u:{api.sealed}")
    call("plaintext", f"http://{HOST}/echo", "-H", f"x-api-key: {api.sealed}")
    call("egress", "https://elsewhere.oshu.test/echo", "-H", f"x-api-key: {api.sealed}")
    call("redirect", f"https://{HOST}/redirect?to=/echo", "-H", f"x-api-key: {api.sealed}")
    with RawClient(sc.listen) as c:
        assert c.connect(f"{HOST}:443").status == 200
        c.start_tls(HOST, sc.ca_cert_file)
        resp = c.request("GET", "/echo", {"Host": OTHER, "x-api-key": other.sealed})
        bodies["mismatch"] = resp.raw_head + resp.body
        c.send(b"GET /echo HTTP/1.1\r\nHost: api.oshu.test\r\nBad Header: " + api.sealed.encode() + b"\r\n\r\n")
        resp = c.response()
        bodies["malformed"] = resp.raw_head + resp.body
    sc.write_session(
        b'{"session": "agents/test", "secrets": [{"name": "X", "sealed": "bad", "value": "'
        + api.value.encode()
        + b'", "hosts": ["api.oshu.test"]}]}'
    )
    sc.wait_for_log(lambda r: r.get("level") == "error", timeout=15)
    sc.delete_session()
    sc.wait_for_log(lambda r: "deleted" in r.get("msg", ""), timeout=15)
    call("revoked", f"https://{HOST}/echo", "-H", f"x-api-key: {api.sealed}")
    bodies["readyz"] = sc.admin_get("/readyz")[1]
    bodies["healthz"] = sc.admin_get("/healthz")[1]
    bodies["metrics"] = sc.metrics_text()
    bodies["log"] = sc.log_text()
    assert json.loads(bodies["revoked body"])["error"]["code"] == "session_revoked"
    assert json.loads(bodies["plaintext body"])["error"]["code"] == "plaintext_secret"
    sc.wait_for_log(lambda r: len(sc.audit_records()) >= 8, timeout=15)
    assert_no_secret(bodies, values)
    sc.stop()
    assert_no_secret({"log after stop": sc.log_text()}, values)
