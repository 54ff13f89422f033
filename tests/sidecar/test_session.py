"""Session lifecycle: start-up checks, hot reload (Kubernetes `..data` swap), revocation, expiry."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from oshu_contract.pki import new_ca
from oshu_testkit.clients import curl
from oshu_testkit.rawclient import RawClient
from oshu_testkit.sessions import new_secret, new_session
from oshu_testkit.sidecar_process import SidecarProcess
from oshu_testkit.upstreams import HOST, Upstream

WAIT = 15.0  # upper bound for a reload to be observed (the contract is 2 s; polling is bounded)
ATTEMPTS = 150


def error_of(body: str | bytes) -> dict[str, str]:
    return json.loads(body)["error"]


def wait_until_status(sc: SidecarProcess, sealed: str, status: int) -> tuple[int, str]:
    """Repeat a request (bounded) until it answers `status`; returns the last (status, body)."""
    env = sc.client_env()
    last = (0, "")
    for _ in range(ATTEMPTS):
        got, _, body, _ = curl(env, f"https://{HOST}/echo/wait", "-H", f"x-api-key: {sealed}")
        last = (got, body)
        if got == status:
            return last
        time.sleep(0.1)
    return last


# -- start-up ----------------------------------------------------------------------------------
def _run_sidecar(
    args: list[str], env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "oshu_sidecar", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def _last_error(stderr: str) -> str:
    recs = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    errors = [r for r in recs if r["level"] == "error"]
    assert errors, stderr
    return errors[-1]["error"]


def _ca_files(tmp_path: Path) -> list[str]:
    ca = new_ca("test")
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    (tmp_path / "ca.key").write_bytes(ca.key_pem)
    return ["--ca-cert", str(tmp_path / "ca.crt"), "--ca-key", str(tmp_path / "ca.key")]


def test_missing_session_file_exits_with_a_clear_message(tmp_path: Path) -> None:
    p = _run_sidecar(
        [
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--session-file",
            str(tmp_path / "nope.json"),
            *_ca_files(tmp_path),
        ]
    )
    assert p.returncode == 1
    assert "nope.json" in _last_error(p.stderr) and "does not exist" in _last_error(p.stderr)


def test_invalid_session_file_exits_with_a_clear_message(tmp_path: Path) -> None:
    key = new_secret("API_KEY", [HOST])
    doc = new_session(key).to_dict()
    doc["secrets"][0]["hosts"] = ["not a host!"]
    path = tmp_path / "session.json"
    path.write_text(json.dumps(doc))
    p = _run_sidecar(
        ["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--session-file", str(path), *_ca_files(tmp_path)]
    )
    assert p.returncode == 1
    msg = _last_error(p.stderr)
    assert "API_KEY" in msg and "hosts" in msg
    assert key.value not in p.stderr


def test_unusable_ca_exits(tmp_path: Path) -> None:
    path = tmp_path / "session.json"
    path.write_bytes(new_session(new_secret("API_KEY", [HOST])).to_json())
    (tmp_path / "ca.crt").write_text("not a certificate")
    (tmp_path / "ca.key").write_text("not a key")
    p = _run_sidecar(
        [
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--session-file",
            str(path),
            "--ca-cert",
            str(tmp_path / "ca.crt"),
            "--ca-key",
            str(tmp_path / "ca.key"),
        ]
    )
    assert p.returncode == 1 and "CA" in _last_error(p.stderr)


def test_bad_flags_exit_2(tmp_path: Path) -> None:
    p = _run_sidecar(["--listen", "nonsense", "--session-file", "x", "--ca-cert", "x", "--ca-key", "x"])
    assert p.returncode == 2 and "--listen" in _last_error(p.stderr)
    p = _run_sidecar([], env={"PATH": "/usr/bin:/bin"})
    assert p.returncode == 2 and "--session-file" in _last_error(p.stderr)
    p = _run_sidecar(["--session-file", "x", "--ca-cert", "x", "--ca-key", "x", "--connect-to", "a:b"])
    assert p.returncode == 2 and "--connect-to" in _last_error(p.stderr)


def test_configuration_from_environment_only(tmp_path: Path, upstream: Upstream) -> None:
    key = new_secret("API_KEY", [HOST])
    path = tmp_path / "session.json"
    path.write_bytes(new_session(key).to_json())
    ca = _ca_files(tmp_path)
    env = {
        "PATH": "/usr/bin:/bin",
        "OSHU_LISTEN": "127.0.0.1:0",
        "OSHU_ADMIN_LISTEN": "127.0.0.1:0",
        "OSHU_SESSION_FILE": str(path),
        "OSHU_CA_CERT": ca[1],
        "OSHU_CA_KEY": ca[3],
        "OSHU_CONNECT_TO": f"{HOST}:443:127.0.0.1:{upstream.port} ::127.0.0.1:",
        "OSHU_UPSTREAM_CA_FILE": str(upstream.ca_file),
        "OSHU_LOG_LEVEL": "info",
    }
    proc = subprocess.Popen([sys.executable, "-m", "oshu_sidecar"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        listening = json.loads(proc.stderr.readline())
        assert listening["msg"] == "listening", listening
        host, port = listening["listen"].rsplit(":", 1)
        with RawClient((host, int(port))) as c:
            assert c.connect(f"{HOST}:443").status == 200
            c.start_tls(HOST, ca[1])
            assert c.request("GET", "/echo/env", {"Host": HOST, "x-api-key": key.sealed}).status == 200
        assert upstream.last.header("x-api-key") == key.value
    finally:
        proc.terminate()
        proc.wait(15)
    assert proc.returncode == 0


# -- reload ------------------------------------------------------------------------------------
def test_reload_on_kubernetes_symlink_swap_keeps_connections(make_sidecar, upstream: Upstream) -> None:
    old = new_secret("API_KEY", [HOST])
    new = new_secret("NEW_KEY", [HOST])
    sc = make_sidecar(new_session(old), values=[old.value, new.value])
    with RawClient(sc.listen) as c:  # an intercepted connection open across the reload
        assert c.connect(f"{HOST}:443").status == 200
        c.start_tls(HOST, sc.ca_cert_file)
        assert c.request("GET", "/echo/before", {"Host": HOST, "x-api-key": old.sealed}).status == 200
        assert upstream.last.header("x-api-key") == old.value
        sc.write_session(new_session(new, name="agents/test"))
        sc.wait_for_log(lambda r: r.get("msg") == "session reloaded", timeout=WAIT)
        resp = c.request("GET", "/echo/after", {"Host": HOST, "x-api-key": new.sealed, "x-old": old.sealed})
    assert resp.status == 200
    assert upstream.last.header("x-api-key") == new.value
    assert upstream.last.header("x-old") == old.sealed  # the removed secret is no longer substituted
    assert sc.metric("oshu_session_reloads_total", result="ok") == 2


def test_bad_new_content_keeps_the_last_good_session(make_sidecar, upstream: Upstream) -> None:
    key = new_secret("API_KEY", [HOST])
    sc = make_sidecar(new_session(key))
    sc.write_session(b'{"session": "agents/test", "secrets": [{"name": "broken"}]}')
    rec = sc.wait_for_log(lambda r: r.get("level") == "error" and "rejected" in r.get("msg", ""), timeout=WAIT)
    assert "secret broken: sealed" in rec["error"]
    assert sc.metric("oshu_session_load_error") == 1
    assert sc.metric("oshu_session_reloads_total", result="error") == 1
    assert curl(sc.client_env(), f"https://{HOST}/echo", "-H", f"x-api-key: {key.sealed}")[0] == 200
    assert upstream.last.header("x-api-key") == key.value
    sc.write_session(new_session(key))
    sc.wait_for_log(lambda r: r.get("msg") == "session reloaded", timeout=WAIT)
    assert sc.metric("oshu_session_load_error") == 0


def test_deleting_the_session_file_revokes(make_sidecar, upstream: Upstream) -> None:
    key = new_secret("API_KEY", [HOST])
    sc = make_sidecar(new_session(key))
    env = sc.client_env()
    sc.delete_session()
    sc.wait_for_log(lambda r: "revoked" in r.get("msg", ""), timeout=WAIT)
    status, _, body, _ = curl(env, f"https://{HOST}/echo", "-H", f"x-api-key: {key.sealed}")
    assert status == 403
    e = error_of(body)
    assert e["code"] == "session_revoked" and "deleted" in e["message"]
    status, _, _, _ = curl(env, f"https://{HOST}/echo/no-token")
    assert status == 200 and upstream.last.path == "/echo/no-token"  # the rest keeps working
    assert sc.metric("oshu_session_revoked") == 1
    assert sc.admin_get("/readyz")[0] == 200
    # The file comes back: substitution resumes.
    sc.write_session(new_session(key))
    sc.wait_for_log(lambda r: r.get("msg") == "session reloaded", timeout=WAIT)
    assert curl(env, f"https://{HOST}/echo", "-H", f"x-api-key: {key.sealed}")[0] == 200
    assert upstream.last.header("x-api-key") == key.value
    assert sc.metric("oshu_session_revoked") == 0


def test_revoked_flag_revokes(make_sidecar, upstream: Upstream) -> None:
    key = new_secret("API_KEY", [HOST])
    sc = make_sidecar(new_session(key))
    sc.write_session(new_session(key, revoked=True))
    sc.wait_for_log(lambda r: r.get("msg") == "session revoked", timeout=WAIT)
    status, _, body, _ = curl(sc.client_env(), f"https://{HOST}/echo", "-u", f"user:{key.sealed}")
    assert status == 403 and error_of(body)["code"] == "session_revoked"
    assert upstream.requests == []


def test_expired_session(make_sidecar, upstream: Upstream) -> None:
    key = new_secret("API_KEY", [HOST])
    sc = make_sidecar(new_session(key, expires_in=-60))
    env = sc.client_env()
    status, _, body, _ = curl(env, f"https://{HOST}/echo", "-H", f"x-api-key: {key.sealed}")
    assert status == 403
    e = error_of(body)
    assert e["code"] == "session_expired" and "expired at" in e["message"]
    assert curl(env, f"https://{HOST}/echo/no-token")[0] == 200
    assert [r.path for r in upstream.requests] == ["/echo/no-token"]
    assert (sc.metric("oshu_session_expiry_seconds") or 0) <= 0
    assert sc.admin_get("/readyz")[0] == 200 and json.loads(sc.admin_get("/readyz")[1])["state"] == "session_expired"


def test_session_expires_while_running(make_sidecar, upstream: Upstream) -> None:
    key = new_secret("API_KEY", [HOST])
    sc = make_sidecar(new_session(key, expires_in=3))
    assert 0 < (sc.metric("oshu_session_expiry_seconds") or 0) <= 3
    status, body = wait_until_status(sc, key.sealed, 403)
    assert status == 403 and error_of(body)["code"] == "session_expired"
    sc.wait_for_log(lambda r: r.get("msg") == "session expired", timeout=WAIT)


def test_rotated_ca_is_picked_up(make_sidecar, upstream: Upstream) -> None:
    key = new_secret("API_KEY", [HOST])
    sc = make_sidecar(new_session(key))
    old_env = sc.client_env()
    assert curl(old_env, f"https://{HOST}/echo/old-ca", "-H", f"x-api-key: {key.sealed}")[0] == 200
    new = new_ca("rotated session CA")
    for path, data in ((sc.ca_key_file, new.key_pem), (sc.ca_cert_file, new.cert_pem)):
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    sc.ca = new  # so client_env() builds a bundle with the new CA only
    sc.wait_for_log(lambda r: r.get("msg") == "CA reloaded; leaf certificates will be re-minted", timeout=WAIT)
    assert curl(sc.client_env(), f"https://{HOST}/echo/new-ca", "-H", f"x-api-key: {key.sealed}")[0] == 200
    assert upstream.last.header("x-api-key") == key.value
    assert "SSL certificate problem" in curl(old_env, f"https://{HOST}/echo/stale")[3]
    assert sc.metric("oshu_leaf_certificates_minted_total") == 2
