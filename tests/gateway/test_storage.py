"""Persistence of a real gateway: restart, kill -9 (also mid-creation), encryption at rest, bad state."""

from __future__ import annotations

import json
import sqlite3
import stat
import subprocess
import threading
from pathlib import Path

import requests

from oshu_testkit.gateway_process import GatewayError, GatewayProcess
from oshu_testkit.upstreams import Upstream

VALUE = "sk-stored-0a1b2c3d4e5f6789"


def _use(gw: GatewayProcess, s: dict, upstream: Upstream) -> None:
    """A request through the TLS proxy URL with the sealed token; the upstream gets the real value."""
    upstream.clear()
    out = subprocess.run(
        [
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--proxy",
            gw.proxy_url(s),
            "--proxy-cacert",
            str(gw.ca_file),
            "--cacert",
            str(gw.ca_file),
            "-H",
            f"x-api-key: {s['sealed_secrets']['K']}",
            "https://api.oshu.test/echo",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert out.stdout == "200"
    assert upstream.last.header("x-api-key") == VALUE


def _new(gw: GatewayProcess, value: str = VALUE) -> dict:
    return gw.create_session({"secrets": {"K": {"value": value, "hosts": ["api.oshu.test"]}}})


def test_restart_and_kill9_keep_sessions(upstream: Upstream) -> None:
    with GatewayProcess(upstream) as gw:
        s = _new(gw)
        ca = gw.ca_file.read_bytes()
        _use(gw, s, upstream)
        gw.restart()
        _use(gw, s, upstream)
        # kill -9 while creations are in flight: every session the API confirmed survives
        created: list[dict] = []

        def create_many() -> None:
            for _ in range(40):
                try:
                    created.append(_new(gw))
                except Exception:
                    return

        def request_many() -> None:  # requests in flight through a kept-alive tunnel as well
            with requests.Session() as rs:
                rs.trust_env = False
                rs.proxies = {"https": gw.proxy_url(s)}
                rs.verify = str(gw.ca_file)
                for _ in range(200):
                    try:
                        rs.get("https://api.oshu.test/echo", headers={"x-api-key": s["sealed_secrets"]["K"]}, timeout=5)
                    except requests.RequestException:
                        return

        threads = [threading.Thread(target=create_many), threading.Thread(target=request_many)]
        for t in threads:
            t.start()
        while len(created) < 5 and threads[0].is_alive():
            threads[0].join(0.01)
        gw.kill9()
        for t in threads:
            t.join(30)
        gw.start()
        assert gw.ca_file.read_bytes() == ca  # the CA is reused, clients keep trusting it
        for sess in [s, *created]:
            _use(gw, sess, upstream)
        with sqlite3.connect(gw.state_dir / "sessions.db") as db:
            ids = {r[0] for r in db.execute("SELECT id FROM sessions")}
        assert {x["session_id"] for x in created} <= ids
        status, _, body = gw.request("GET", f"/v1/sessions/{s['session_id']}")
        assert status == 200 and json.loads(body)["request_count"] >= 2


def test_nothing_in_clear_at_rest(upstream: Upstream) -> None:
    with GatewayProcess(upstream) as gw:
        s = _new(gw)
        _use(gw, s, upstream)
        gw.stop()
        key_file = gw.state_dir / "encryption.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert stat.S_IMODE((gw.state_dir / "ca.key").stat().st_mode) == 0o600
        for f in gw.state_dir.glob("sessions.db*"):
            data = f.read_bytes()
            for needle in (VALUE, s["token"], s["sealed_secrets"]["K"]):
                assert needle.encode() not in data, f"{needle[:6]}... in clear in {f.name}"
        assert VALUE not in gw.log_text() and s["token"] not in gw.log_text()


def test_wrong_key_corrupt_and_foreign_databases_refuse_to_start(upstream: Upstream, tmp_path: Path) -> None:
    with GatewayProcess(upstream) as gw:
        _new(gw)
        gw.stop()
        other_key = tmp_path / "other.key"
        other_key.write_text("ab" * 32 + "\n")
        for args, words in ((["--encryption-key-file", str(other_key)], "another key"),):
            try:
                gw.start(args=args)
            except GatewayError as e:
                assert words in str(e) and gw.proc is not None and gw.proc.returncode == 1
            else:
                raise AssertionError("started with the wrong key")
        db = gw.state_dir / "sessions.db"
        original = db.read_bytes()
        db.write_bytes(b"this is not a database" * 100)
        try:
            gw.start()
        except GatewayError as e:
            assert "not a usable SQLite database" in str(e)
        else:
            raise AssertionError("started on a corrupt database")
        db.unlink()
        with sqlite3.connect(db) as foreign:
            foreign.execute("CREATE TABLE other (x)")
        try:
            gw.start()
        except GatewayError as e:
            assert "not an oshu-gateway database" in str(e)
        else:
            raise AssertionError("started on a foreign database")
        db.write_bytes(original)  # the original is still good
        gw.start()
        assert gw.request("GET", "/healthz", api_key="")[0] == 200
