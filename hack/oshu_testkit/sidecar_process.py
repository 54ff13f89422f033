"""The real sidecar as a subprocess (`python -m oshu_sidecar`), with its files in one directory.

`SidecarProcess` lays the session file out like a mounted Kubernetes Secret (`..data`
symlink), maps test host names to a local `Upstream` with `--connect-to`, waits for /readyz,
captures its JSON log, reads its metrics, and stops it cleanly. `client_env()` gives a client
the environment the webhook would inject into an app container (see `clientenv`).

Example::

    from oshu_testkit.sessions import new_secret, new_session
    from oshu_testkit.sidecar_process import SidecarProcess
    from oshu_testkit.upstreams import Upstream

    with Upstream() as up:
        secret = new_secret("API_KEY", ["api.oshu.test"])
        with SidecarProcess(new_session(secret), upstream=up) as sc:
            subprocess.run(["curl", "-sf", "-H", f"x-api-key: {secret.sealed}",
                            "https://api.oshu.test/echo"], env=sc.client_env(), check=True)
            assert up.requests[-1].header("x-api-key") == secret.value
"""

from __future__ import annotations

import json
import os
import secrets as _secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from oshu_contract.hosts import split_host_port
from oshu_contract.pki import KeyPair, new_ca

from .clientenv import injected_client_env, without_proxy_env, write_ca_mount
from .processes import terminate
from .sessions import SessionLike, session_bytes, session_hosts, write_k8s_secret_dir
from .upstreams import Upstream

_START_TIMEOUT = 20.0


class SidecarError(RuntimeError):
    """The sidecar process failed to start or stop; the message includes its log tail."""


class SidecarProcess:
    """`python -m oshu_sidecar` in a subprocess, with its files in `directory`.

    Layout: `ca/ca.crt`, `ca/ca.key` (a fresh session CA unless `ca` is given),
    `session/` laid out like a mounted Secret (`session/session.json` -> `..data/session.json`),
    `sidecar.log` (stderr). `hosts` (default: every exact host the session names) are mapped with
    `--connect-to HOST:PORT:127.0.0.1:<upstream port>` (HTTPS port; port 80 -> the plain HTTP port),
    and with `loopback_only` (default) a final catch-all `--connect-to ::127.0.0.1:` sends any
    other host to 127.0.0.1 on the same port, so the sidecar never resolves or reaches anything else.
    """

    def __init__(
        self,
        session: SessionLike,
        *,
        upstream: Upstream | None = None,
        hosts: Iterable[str] | None = None,
        directory: Path | None = None,
        ca: KeyPair | None = None,
        connect_to: Iterable[str] = (),
        resolve: Iterable[str] = (),
        upstream_ca_files: Iterable[Path | str] | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        reload_interval: float = 0.2,
        session_path: Path | None = None,
        python: str = sys.executable,
        loopback_only: bool = True,
    ) -> None:
        self._own_dir = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="oshu-sidecar-"))
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ca = ca or new_ca("oshu test session CA")
        self.ca_dir = self.directory / "ca"
        self.ca_dir.mkdir(exist_ok=True)
        self.ca_cert_file = self.ca_dir / "ca.crt"
        self.ca_key_file = self.ca_dir / "ca.key"
        self.ca_cert_file.write_bytes(self.ca.cert_pem)
        self.ca_key_file.write_bytes(self.ca.key_pem)
        self.ca_key_file.chmod(0o600)
        self.session_dir = self.directory / "session"
        if session_path is None:
            write_k8s_secret_dir(self.session_dir, {"session.json": session_bytes(session)})
            self.session_path = self.session_dir / "session.json"
        else:
            self.session_path = Path(session_path)  # written by someone else (e.g. the operator)
        self.log_file = self.directory / "sidecar.log"
        self.upstream = upstream
        mapped = list(connect_to)
        if upstream is not None:
            names = list(hosts) if hosts is not None else session_hosts(session)
            for name in names:
                host, port = split_host_port(name, 443)
                if port == 80:
                    mapped.append(f"{host}:80:127.0.0.1:{upstream.http_port}")
                else:
                    mapped.append(f"{host}:{port}:127.0.0.1:{upstream.port}")
                    mapped.append(f"{host}:80:127.0.0.1:{upstream.http_port}")
        if loopback_only:
            mapped.append("::127.0.0.1:")  # catch-all: any other host:port goes to loopback, never resolved
        ca_files = [
            str(p)
            for p in (upstream_ca_files if upstream_ca_files is not None else ([upstream.ca_file] if upstream else []))
        ]
        self.args = [
            python,
            "-m",
            "oshu_sidecar",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--session-file",
            str(self.session_path),
            "--ca-cert",
            str(self.ca_cert_file),
            "--ca-key",
            str(self.ca_key_file),
            "--reload-interval",
            str(reload_interval),
        ]
        for m in mapped:
            self.args += ["--connect-to", m]
        for r in resolve:
            self.args += ["--resolve", r]
        for f in ca_files:
            self.args += ["--upstream-ca-file", f]
        self.args += list(extra_args)
        self.env = without_proxy_env(env if env is not None else os.environ)
        self.proc: subprocess.Popen[bytes] | None = None
        self.listen: tuple[str, int] | None = None
        self.admin: tuple[str, int] | None = None

    # lifecycle
    def __enter__(self) -> SidecarProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def start(self, timeout: float = _START_TIMEOUT) -> SidecarProcess:
        """Start the process and wait until /readyz answers 200."""
        with open(self.log_file, "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SidecarError(f"sidecar exited with {self.proc.returncode}:\n{self.log_text()[-4000:]}")
            rec = self.find_log(lambda r: r.get("msg") == "listening")
            if rec is not None:
                self.listen = _addr(rec["listen"])
                self.admin = _addr(rec["admin"])
                break
            time.sleep(0.02)
        else:
            self.stop()
            raise SidecarError(f"sidecar did not start within {timeout} s:\n{self.log_text()[-4000:]}")
        while time.monotonic() < deadline:
            try:
                status, _ = self.admin_get("/readyz")
                if status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise SidecarError(f"sidecar never became ready:\n{self.log_text()[-4000:]}")

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait, SIGKILL if needed; returns the exit code."""
        if self.proc is None:
            return None
        return terminate(self.proc, timeout)

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    # addresses
    @property
    def proxy_url(self) -> str:
        assert self.listen is not None, "not started"
        return f"http://{self.listen[0]}:{self.listen[1]}"

    @property
    def admin_url(self) -> str:
        assert self.admin is not None, "not started"
        return f"http://{self.admin[0]}:{self.admin[1]}"

    def client_env(
        self, extra_ca_files: Iterable[Path | str] = (), base: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """The env the webhook injects into an app container, pointing at this sidecar and its CA.

        `extra_ca_files` join the CA files (e.g. the upstream's CA, for blind tunnels where
        the client sees the real upstream certificate, as it would see a public one).
        """
        ca_dir = self.directory / f"client-ca-{_secrets.token_hex(4)}"
        write_ca_mount(ca_dir, self.ca.cert_pem, [Path(p).read_bytes() for p in extra_ca_files])
        return injected_client_env(self.proxy_url, ca_dir, base=base)

    # session file
    def write_session(self, session: SessionLike) -> None:
        """Replace the session atomically, the way kubelet updates a mounted Secret (recreating it if deleted)."""
        write_k8s_secret_dir(self.session_dir, {"session.json": session_bytes(session)})

    def delete_session(self) -> None:
        """Remove the session file (and its data dir): the sidecar must revoke."""
        link = self.session_dir / "..data"
        target = os.readlink(link) if link.is_symlink() else None
        if (self.session_dir / "session.json").is_symlink():
            (self.session_dir / "session.json").unlink()
        if target is not None:
            link.unlink()
            shutil.rmtree(self.session_dir / target, ignore_errors=True)

    # observation
    def admin_get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.admin_url + path, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def metrics_text(self) -> str:
        status, body = self.admin_get("/metrics")
        if status != 200:
            raise SidecarError(f"/metrics answered {status}")
        return body.decode()

    def metric(self, name: str, **labels: str) -> float | None:
        """The value of one sample, e.g. metric("oshu_requests_total", host="api.oshu.test", outcome="forwarded")."""
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in self.metrics_text().splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            series, _, value = line.rpartition(" ")
            if "{" in series:
                sname, _, rest = series.partition("{")
                got = ",".join(sorted(p for p in _split_labels(rest.rstrip("}")) if p))
            else:
                sname, got = series, ""
            if sname == name and got == want:
                return float(value)
        return None

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"msg": "<non-JSON line>", "raw": line})
        return out

    def find_log(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
        for rec in self.log_records():
            if predicate(rec):
                return rec
        return None

    def wait_for_log(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            rec = self.find_log(predicate)
            if rec is not None:
                return rec
            if time.monotonic() >= deadline:
                raise SidecarError(f"no matching log line within {timeout} s:\n{self.log_text()[-3000:]}")
            time.sleep(0.05)

    def audit_records(self) -> list[dict[str, Any]]:
        return [r for r in self.log_records() if r.get("logger") == "oshu.sidecar.audit"]


def _split_labels(text: str) -> list[str]:
    out: list[str] = []
    cur: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return out


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)
