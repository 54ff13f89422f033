"""The `oshu-gateway` command: --help names every flag, OSHU_GATEWAY_* variables, exit codes,
a given listener certificate and --public-url."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

from oshu_gateway.config import load_config
from oshu_testkit.ca import TestCA
from oshu_testkit.gateway_process import GatewayProcess

FLAGS = [
    "--listen",
    "--plain-listen",
    "--tls-cert",
    "--tls-key",
    "--public-host",
    "--public-url",
    "--state-dir",
    "--api-key-file",
    "--ca-cert",
    "--ca-key",
    "--encryption-key-file",
    "--upstream-ca-file",
    "--resolve",
    "--connect-to",
    "--max-ttl",
    "--default-idle-ttl",
    "--log-level",
]


def test_help_lists_every_flag() -> None:
    exe = shutil.which("oshu-gateway", path=str(Path(sys.executable).parent))
    assert exe is not None, "the console script is installed"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for flag in FLAGS:
        assert flag in out.stdout, flag
    assert "OSHU_GATEWAY_" in out.stdout


def test_environment_variables_and_flag_precedence(tmp_path: Path) -> None:
    env = {
        "OSHU_GATEWAY_STATE_DIR": str(tmp_path / "s"),
        "OSHU_GATEWAY_API_KEY_FILE": str(tmp_path / "k"),
        "OSHU_GATEWAY_LISTEN": "127.0.0.1:9443",
        "OSHU_GATEWAY_MAX_TTL": "2h",
        "OSHU_GATEWAY_DEFAULT_IDLE_TTL": "15m",
        "OSHU_GATEWAY_RESOLVE": "a.test:443:127.0.0.1 b.test:443:127.0.0.2",
        "OSHU_GATEWAY_UPSTREAM_CA_FILE": os.pathsep.join(["/x.pem", "/y.pem"]),
    }
    cfg = load_config([], env)
    assert cfg.listen == ("127.0.0.1", 9443) and cfg.max_ttl == 7200 and cfg.default_idle_ttl == 900
    assert [r.host for r in cfg.resolve] == ["a.test", "b.test"] and cfg.upstream_ca_files == ("/x.pem", "/y.pem")
    assert load_config(["--listen", "127.0.0.1:1"], env).listen == ("127.0.0.1", 1)  # the flag wins


def _run(args: list[str], tmp_path: Path) -> tuple[int, str]:
    p = subprocess.run(
        [sys.executable, "-m", "oshu_gateway", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ["PATH"]},
        cwd=tmp_path,
    )
    return p.returncode, p.stderr


def test_exit_codes(tmp_path: Path) -> None:
    code, err = _run(["--api-key-file", "k"], tmp_path)
    assert code == 2 and "--state-dir" in err
    code, err = _run(["--state-dir", "s", "--api-key-file", "k", "--max-ttl", "soon"], tmp_path)
    assert code == 2 and "--max-ttl" in err
    code, err = _run(["--state-dir", "s", "--api-key-file", str(tmp_path / "missing")], tmp_path)
    assert code == 1 and "cannot read --api-key-file" in err
    (tmp_path / "k").write_text("key\n")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, err = _run(["--state-dir", "s", "--api-key-file", "k", "--listen", f"127.0.0.1:{port}"], tmp_path)
    assert code == 1 and "cannot listen" in err


def test_given_listener_certificate_and_public_url(tmp_path: Path) -> None:
    ca = TestCA.new("listener CA").write(tmp_path, "lca")
    leaf = ca.issue(["gateway.oshu.test", "127.0.0.1"])
    (tmp_path / "tls.crt").write_bytes(leaf.cert_pem)
    (tmp_path / "tls.key").write_bytes(leaf.key_pem)
    with GatewayProcess(
        plain=False,
        extra_args=[
            "--tls-cert",
            str(tmp_path / "tls.crt"),
            "--tls-key",
            str(tmp_path / "tls.key"),
            "--public-url",
            "https://gateway.oshu.test:443",
        ],
    ) as gw:
        assert gw.listen is not None
        ctx = ssl.create_default_context(cafile=str(ca.cert_file))
        with (
            socket.create_connection(gw.listen, timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname="gateway.oshu.test") as sock,
        ):  # the given certificate is served (verified against its own CA, not the gateway's)
            body = json.dumps({"secrets": {"OPENAI_API_KEY": "sk-cli-test-0123456789"}}).encode()
            sock.sendall(
                b"POST /v1/sessions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                + f"Authorization: Bearer {gw.api_key}\r\nContent-Length: {len(body)}\r\n".encode()
                + b"Connection: close\r\n\r\n"
                + body
            )
            data = b""
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and (chunk := sock.recv(65536)):
                data += chunk
        s = json.loads(data.split(b"\r\n\r\n", 1)[1])
        assert s["proxy_url"] == f"https://{s['session_id']}:{s['token']}@gateway.oshu.test:443"
        assert s["ca_url"] == "https://gateway.oshu.test:443/v1/ca.pem"
