"""`GatewayProcess`: a real `oshu-gateway` child process for tests, wired to a test `Upstream`.

Every `*.oshu.test` host (and, as a catch-all, any other) is sent to 127.0.0.1 with
`--connect-to`, so nothing is resolved or reached beyond loopback. The API is called over
the gateway's own TLS listener, trusting the CA it generated in its state dir.
"""

from __future__ import annotations

import json
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .clientenv import without_proxy_env
from .processes import terminate
from .upstreams import Upstream

_START_TIMEOUT = 30.0
API_KEY = "test-api-key-0123456789"


class GatewayError(RuntimeError):
    pass


class GatewayProcess:
    """Start/stop/kill -9/restart a gateway; call its API; read its log."""

    def __init__(
        self,
        upstream: Upstream | None = None,
        directory: Path | None = None,
        extra_args: Sequence[str] = (),
        api_keys: Sequence[str] = (API_KEY,),
        plain: bool = True,
        python: str = sys.executable,
        catch_all: bool = True,
    ) -> None:
        self._own_dir = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="oshu-gateway-"))
        self.state_dir = self.directory / "state"
        self.key_file = self.directory / "api-keys"
        self.key_file.write_text("".join(k + "\n" for k in api_keys))
        self.api_key = api_keys[0] if api_keys else ""
        self.log_file = self.directory / "gateway.log"
        self.upstream = upstream
        self.args = [
            python,
            "-m",
            "oshu_gateway",
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            str(self.state_dir),
            "--api-key-file",
            str(self.key_file),
        ]
        if plain:
            self.args += ["--plain-listen", "127.0.0.1:0"]
        if upstream is not None:
            self.args += [
                "--upstream-ca-file",
                str(upstream.ca_file),
                "--connect-to",
                f":443:127.0.0.1:{upstream.port}",
                "--connect-to",
                f":80:127.0.0.1:{upstream.http_port}",
            ]
        self.args += [*extra_args]
        if catch_all:  # keeps every test connection on loopback; last, as the first match wins
            self.args += ["--connect-to", "::127.0.0.1:"]
        self.proc: subprocess.Popen[bytes] | None = None
        self.listen: tuple[str, int] | None = None
        self.plain_listen: tuple[str, int] | None = None
        self._log_offset = 0

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    # lifecycle
    def spawn(self, args: Sequence[str] = ()) -> subprocess.Popen[bytes]:
        self._log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                [*self.args, *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=without_proxy_env(__import__("os").environ),
            )
        return self.proc

    def start(self, timeout: float = _START_TIMEOUT, args: Sequence[str] = ()) -> GatewayProcess:
        proc = self.spawn(args)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise GatewayError(f"gateway exited with {proc.returncode}:\n{self.log_text()[-4000:]}")
            rec = self.find_log(lambda r: r.get("msg") == "listening", since_start=True)
            if rec is not None:
                self.listen = _addr(rec["listen"])
                self.plain_listen = _addr(rec["plain_listen"]) if rec.get("plain_listen") else None
                return self
            time.sleep(0.02)
        self.stop()
        raise GatewayError(f"gateway did not start within {timeout} s:\n{self.log_text()[-4000:]}")

    def stop(self, timeout: float = 10.0) -> int | None:
        return None if self.proc is None else terminate(self.proc, timeout)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def restart(self) -> GatewayProcess:
        self.stop()
        return self.start()

    # addresses and trust
    @property
    def ca_file(self) -> Path:
        return self.state_dir / "ca.crt"

    @property
    def base_url(self) -> str:
        assert self.listen is not None
        return f"https://{self.listen[0]}:{self.listen[1]}"

    @property
    def plain_url(self) -> str:
        assert self.plain_listen is not None
        return f"http://{self.plain_listen[0]}:{self.plain_listen[1]}"

    def proxy_url(self, session: dict[str, Any], tls: bool = True) -> str:
        base = self.base_url if tls else self.plain_url
        scheme, _, hostport = base.partition("://")
        return f"{scheme}://{session['session_id']}:{session['token']}@{hostport}"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    # API
    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        api_key: str | None = None,
        timeout: float = 10.0,
    ) -> tuple[int, dict[str, str], bytes]:
        hdrs = dict(headers or {})
        key = self.api_key if api_key is None else api_key
        if key:
            hdrs.setdefault("Authorization", f"Bearer {key}")
        req = urllib.request.Request(self.base_url + path, data=body, method=method, headers=hdrs)
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=self.ssl_context())
        )
        try:
            with opener.open(req, timeout=timeout) as resp:
                return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()

    def create_session(self, doc: dict[str, Any]) -> dict[str, Any]:
        status, _, body = self.request(
            "POST", "/v1/sessions", json.dumps(doc).encode(), {"Content-Type": "application/json"}
        )
        if status != 201:
            raise GatewayError(f"create_session: {status} {body!r}")
        out: dict[str, Any] = json.loads(body)
        return out

    # logs
    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def log_records(self, since_start: bool = False) -> list[dict[str, Any]]:
        text = self.log_text()
        if since_start:
            text = self.log_file.read_bytes()[self._log_offset :].decode(errors="replace")
        out = []
        for line in text.splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def find_log(self, pred: Callable[[dict[str, Any]], bool], since_start: bool = False) -> dict[str, Any] | None:
        return next((r for r in self.log_records(since_start) if pred(r)), None)


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)
