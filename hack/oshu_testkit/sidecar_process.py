"""Test helpers for the sidecar (the test kit, hack/oshu_testkit: not part of the product).

- `new_secret` / `new_session`: build a `Session` with fresh sealed tokens and values.
- `TestCA`: a throwaway CA (files on disk) for upstream servers.
- `Upstream`: a local HTTPS (and plain HTTP) aiohttp server on 127.0.0.1, in a background
  thread, with its own CA, recording every request it receives. Endpoints: /echo, /sse,
  /upload, /redirect, /ws, /reflect (echoes a header value back: "the upstream leaks the
  key"), /status/{code}, /bytes, /close (close-delimited), /gate (answers after `release()`).
- `SidecarProcess`: runs `python -m oshu_sidecar` as a subprocess with a session file laid
  out like a mounted Kubernetes Secret (`..data` symlink), maps test host names to the
  upstream with `--connect-to`, waits for /readyz, captures stderr, stops cleanly.
- `client_env`-style helpers give the standard proxy and CA variables a real client needs.

Everything listens on and connects to 127.0.0.1 only; host names are expected to be
under `.test` and are always mapped, so nothing is ever resolved or sent elsewhere.

Example::

    from oshu_testkit.sidecar_process import Upstream, SidecarProcess, new_secret, new_session

    with Upstream() as up:
        secret = new_secret("API_KEY", ["api.oshu.test"])
        with SidecarProcess(new_session(secret), upstream=up) as sc:
            env = sc.client_env()
            subprocess.run(["curl", "-sf", "-H", f"x-api-key: {secret.sealed}",
                            "https://api.oshu.test/echo"], env=env, check=True)
            assert up.requests[-1].header("x-api-key") == secret.value
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
import secrets as _secrets
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from aiohttp import WSMsgType, web

from oshu_sidecar.hosts import HostPattern, split_host_port
from oshu_sidecar.pki import CertificateAuthority, KeyPair, new_ca
from oshu_sidecar.session import DEFAULT_LOCATIONS, SecretBinding, Session, new_sealed_token

__all__ = [
    "DEFAULT_HOST", "PROXY_ENV_VARS", "RawClient", "RawResponse", "Recorded", "SidecarProcess", "TestCA",
    "Upstream", "new_secret", "new_session", "write_k8s_secret_dir", "swap_k8s_secret_dir",
]

DEFAULT_HOST = "api.oshu.test"
#: Variables `client_env` sets or clears; anything proxy-related inherited from the caller is dropped.
PROXY_ENV_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "WSS_PROXY", "wss_proxy",
                  "WS_PROXY", "ws_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy")
_START_TIMEOUT = 20.0


# -- sessions -----------------------------------------------------------------------------
def new_secret(name: str, hosts: Iterable[str], value: str | None = None,
               locations: Iterable[str] | None = None) -> SecretBinding:
    """A secret binding with a fresh sealed token and (unless given) a random real value."""
    return SecretBinding(
        name=name,
        sealed=new_sealed_token(),
        value=value if value is not None else "sk-test-" + _secrets.token_urlsafe(24),
        hosts=tuple(HostPattern.parse(h) for h in hosts),
        locations=frozenset(locations) if locations is not None else DEFAULT_LOCATIONS,
    )


def new_session(*secrets: SecretBinding, name: str = "agents/test", expires_in: float | None = None,
                expires_at: datetime | None = None, egress: Iterable[str] | None = None,
                revoked: bool = False) -> Session:
    """A Session; `expires_in` (seconds from now, may be negative) is shorthand for `expires_at`."""
    if expires_in is not None:
        expires_at = datetime.now(timezone.utc) + timedelta(seconds=expires_in)
    return Session(
        session=name,
        secrets=tuple(secrets),
        expires_at=expires_at,
        egress=tuple(HostPattern.parse(h) for h in egress) if egress is not None else None,
        revoked=revoked,
    )


def _session_bytes(session: Session | Mapping[str, Any] | bytes | str) -> bytes:
    if isinstance(session, Session):
        return session.to_json()
    if isinstance(session, (bytes, str)):
        return session.encode() if isinstance(session, str) else session
    return json.dumps(session).encode()


def write_k8s_secret_dir(directory: Path, files: Mapping[str, bytes]) -> None:
    """Lay out `files` like kubelet mounts a Secret: `..<ts>/` data dir, `..data` link, per-key links."""
    directory.mkdir(parents=True, exist_ok=True)
    swap_k8s_secret_dir(directory, files)
    for key in files:
        link = directory / key
        if not link.is_symlink():
            link.symlink_to(Path("..data") / key)


def swap_k8s_secret_dir(directory: Path, files: Mapping[str, bytes]) -> None:
    """Kubelet's atomic update: write a new timestamped dir, rename a new `..data` link over the old."""
    stamp = "..%s.%s" % (time.strftime("%Y_%m_%d_%H_%M_%S"), _secrets.token_hex(4))
    data_dir = directory / stamp
    data_dir.mkdir()
    for key, content in files.items():
        (data_dir / key).write_bytes(content)
    tmp_link = directory / "..data_tmp"
    if tmp_link.is_symlink():
        tmp_link.unlink()
    tmp_link.symlink_to(stamp)
    old = os.readlink(directory / "..data") if (directory / "..data").is_symlink() else None
    os.replace(tmp_link, directory / "..data")
    if old is not None and old != stamp:
        shutil.rmtree(directory / old, ignore_errors=True)


# -- CA -----------------------------------------------------------------------------------
@dataclass
class TestCA:
    """A throwaway CA; `cert_file`/`key_file` exist once `write()` has been called."""

    __test__ = False  # not a pytest test class
    pair: KeyPair
    cert_file: Path | None = None
    key_file: Path | None = None

    @classmethod
    def new(cls, name: str = "oshu test CA", permitted_dns: Iterable[str] | None = None) -> "TestCA":
        return cls(new_ca(name, permitted_dns=permitted_dns))

    def write(self, directory: Path, stem: str = "ca") -> "TestCA":
        directory.mkdir(parents=True, exist_ok=True)
        self.cert_file = directory / f"{stem}.crt"
        self.key_file = directory / f"{stem}.key"
        self.cert_file.write_bytes(self.pair.cert_pem)
        self.key_file.write_bytes(self.pair.key_pem)
        self.key_file.chmod(0o600)
        return self

    def issue(self, names: Iterable[str]) -> KeyPair:
        return CertificateAuthority.from_pem(self.pair.cert_pem, self.pair.key_pem).issue_leaf(list(names))


# -- upstream -----------------------------------------------------------------------------
@dataclass
class Recorded:
    """One request as the upstream received it."""

    method: str
    path: str
    query_string: str
    headers: list[tuple[str, str]]
    body: bytes
    scheme: str
    chunks: int = 0  # body pieces as read by the server (for streaming checks)
    raw_path: str = ""  # the request target exactly as sent (query not decoded)

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]


class Upstream:
    """A local HTTPS + HTTP server standing in for a real API (see module docstring for endpoints).

    `port` is the HTTPS port, `http_port` the plain one. `release()` opens one gate for the
    gated endpoints (`/sse?gated=1`, `/upload?gated=1`), so a test can prove streaming
    without timing anything: the next piece is only produced after the client saw the last.
    """

    def __init__(self, names: Sequence[str] = (DEFAULT_HOST, "*.oshu.test"), directory: Path | None = None,
                 ca: TestCA | None = None) -> None:
        self.names = tuple(names)
        self._own_dir = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="oshu-upstream-"))
        self.ca = ca or TestCA.new("oshu test upstream CA")
        if self.ca.cert_file is None:
            self.ca.write(self.directory, "upstream-ca")
        self.requests: list[Recorded] = []
        self.ws_messages: list[str] = []
        self.events: list[str] = []  # markers such as "upload:first-chunk"
        self.port = 0
        self.http_port = 0
        self._cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._gate: asyncio.Semaphore | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    # lifecycle
    def __enter__(self) -> "Upstream":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> "Upstream":
        self._thread = threading.Thread(target=self._run, name="oshu-test-upstream", daemon=True)
        self._thread.start()
        if not self._started.wait(_START_TIMEOUT):
            raise RuntimeError("test upstream did not start")
        if self._error is not None:
            raise RuntimeError(f"test upstream failed to start: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._runner is not None and not self._loop.is_closed():
            fut = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
            try:
                fut.result(10)
            except Exception:
                pass
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    @property
    def ca_file(self) -> Path:
        assert self.ca.cert_file is not None
        return self.ca.cert_file

    def ssl_context(self) -> ssl.SSLContext:
        pair = self.ca.issue(self.names)
        path = self.directory / "upstream-leaf.pem"
        path.write_bytes(pair.cert_pem + pair.key_pem)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(path)
        path.unlink()
        return ctx

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._start())
        except BaseException as e:  # surfaced to start()
            self._error = e
            self._started.set()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _start(self) -> None:
        self._gate = asyncio.Semaphore(0)
        app = web.Application(client_max_size=1 << 30)
        r = app.router
        r.add_route("*", "/echo", self._echo)
        r.add_route("*", "/echo/{tail:.*}", self._echo)
        r.add_get("/sse", self._sse)
        r.add_post("/upload", self._upload)
        r.add_put("/upload", self._upload)
        r.add_get("/redirect", self._redirect)
        r.add_get("/ws", self._ws)
        r.add_route("*", "/reflect", self._reflect)
        r.add_route("*", "/status/{code}", self._status)
        r.add_get("/bytes", self._bytes)
        r.add_get("/close", self._close)
        r.add_get("/gate", self._gated)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        tls = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ssl_context())
        plain = web.TCPSite(self._runner, "127.0.0.1", 0)
        await tls.start()
        await plain.start()
        self.port = tls._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.http_port = plain._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    # recording
    def _record(self, request: web.Request, body: bytes, chunks: int = 0) -> Recorded:
        rec = Recorded(request.method, request.path, request.query_string, list(request.headers.items()), body,
                       request.scheme, chunks, request.raw_path)
        with self._cond:
            self.requests.append(rec)
            self._cond.notify_all()
        return rec

    def _mark(self, event: str) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[["Upstream"], bool], timeout: float = 10.0) -> bool:
        """Block until `predicate(self)` holds (checked on every recorded event), at most `timeout` s."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))
            return True

    def release(self, n: int = 1) -> None:
        """Open the gate `n` times for gated endpoints."""
        assert self._loop is not None and self._gate is not None
        for _ in range(n):
            self._loop.call_soon_threadsafe(self._gate.release)

    def clear(self) -> None:
        with self._cond:
            self.requests.clear()
            self.events.clear()
            self.ws_messages.clear()

    @property
    def last(self) -> Recorded:
        with self._cond:
            return self.requests[-1]

    # handlers
    async def _echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        self._record(request, body)
        return web.json_response({
            "method": request.method,
            "path": request.path,
            "query": request.query_string,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body": body.decode("utf-8", "replace"),
            "body_len": len(body),
        })

    async def _sse(self, request: web.Request) -> web.StreamResponse:
        self._record(request, b"")
        n = int(request.query.get("n", "3"))
        gated = request.query.get("gated") == "1"
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        assert self._gate is not None
        for i in range(n):
            if gated and i > 0:
                await asyncio.wait_for(self._gate.acquire(), 30)
            await resp.write(f"id: {i}\ndata: event {i}\n\n".encode())
        await resp.write_eof()
        return resp

    async def _upload(self, request: web.Request) -> web.Response:
        gated = request.query.get("gated") == "1"
        h = hashlib.sha256()
        size = 0
        chunks = 0
        body = bytearray()
        async for piece in request.content.iter_any():
            if chunks == 0:
                self._mark("upload:first-chunk")
            chunks += 1
            size += len(piece)
            h.update(piece)
            if len(body) < 1 << 20:
                body += piece
        self._record(request, bytes(body), chunks)
        return web.json_response({"size": size, "sha256": h.hexdigest(), "chunks": chunks, "gated": gated})

    async def _redirect(self, request: web.Request) -> web.Response:
        self._record(request, b"")
        raise web.HTTPFound(request.query.get("to", "/echo"))

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        self._record(request, b"")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str("hello")  # the handshake headers are in self.requests, not echoed into frames
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                with self._cond:
                    self.ws_messages.append(msg.data)
                await ws.send_str("echo: " + msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    async def _reflect(self, request: web.Request) -> web.StreamResponse:
        """Echo the value of header `?header=` back in a response header and in the body.

        `split=N` streams the body in N-byte chunked pieces (values cross chunk boundaries),
        `gzip=1` compresses it, `pad=N` prefixes N filler bytes; otherwise one Content-Length body.
        """
        body_in = await request.read()
        self._record(request, body_in)
        value = request.headers.get(request.query.get("header", "x-api-key"), "")
        pad = b"." * int(request.query.get("pad", "0"))
        text = pad + f'{{"you sent": "{value}", "again": "{value}"}}\n'.encode()
        headers = {"X-Echo": value, "Content-Type": "application/json"}
        if request.query.get("gzip") == "1":
            data = gzip.compress(text)
            headers["Content-Encoding"] = "gzip"
            return web.Response(body=data, headers=headers)
        split = int(request.query.get("split", "0"))
        if split <= 0:
            return web.Response(body=text, headers=headers)
        resp = web.StreamResponse(headers=headers)
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(text), split):
            await resp.write(text[i:i + split])
            await asyncio.sleep(0)
        await resp.write_eof()
        return resp

    async def _status(self, request: web.Request) -> web.Response:
        body = await request.read()
        self._record(request, body)
        code = int(request.match_info["code"])
        return web.json_response({"status": code}, status=code)

    async def _bytes(self, request: web.Request) -> web.Response:
        self._record(request, b"")
        n = int(request.query.get("n", "1024"))
        pattern = (request.query.get("fill", "x") * 1024).encode()[:1024]
        data = (pattern * (n // 1024 + 1))[:n]
        return web.Response(body=data, content_type="application/octet-stream")

    async def _gated(self, request: web.Request) -> web.Response:
        """Answers only once the test calls `release()` (at most 30 s): a slow upstream."""
        self._record(request, b"")
        assert self._gate is not None
        try:
            await asyncio.wait_for(self._gate.acquire(), 30)
        except asyncio.TimeoutError:
            pass
        return web.json_response({"released": True})

    async def _close(self, request: web.Request) -> web.StreamResponse:
        """A close-delimited response (no Content-Length, no chunking)."""
        self._record(request, b"")
        resp = web.StreamResponse(headers={"Content-Type": "text/plain", "Connection": "close"})
        resp.force_close()
        await resp.prepare(request)
        assert request.transport is not None
        await resp.write(b"until close\n")
        return resp


# -- sidecar process ----------------------------------------------------------------------
def terminate(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int | None:
    """SIGTERM, wait up to `timeout`, then SIGKILL: how every helper here stops a child."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    return proc.returncode


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

    def __init__(self, session: Session | Mapping[str, Any] | bytes | str, *, upstream: Upstream | None = None,
                 hosts: Iterable[str] | None = None, directory: Path | None = None, ca: KeyPair | None = None,
                 connect_to: Iterable[str] = (), resolve: Iterable[str] = (),
                 upstream_ca_files: Iterable[Path | str] | None = None, extra_args: Sequence[str] = (),
                 env: Mapping[str, str] | None = None, reload_interval: float = 0.2,
                 session_path: Path | None = None, python: str = sys.executable,
                 loopback_only: bool = True) -> None:
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
            write_k8s_secret_dir(self.session_dir, {"session.json": _session_bytes(session)})
            self.session_path = self.session_dir / "session.json"
        else:
            self.session_path = Path(session_path)  # written by someone else (e.g. the operator)
        self.log_file = self.directory / "sidecar.log"
        self.upstream = upstream
        mapped = list(connect_to)
        if upstream is not None:
            names = list(hosts) if hosts is not None else _session_hosts(session)
            for name in names:
                host, port = split_host_port(name, 443)
                if port == 80:
                    mapped.append(f"{host}:80:127.0.0.1:{upstream.http_port}")
                else:
                    mapped.append(f"{host}:{port}:127.0.0.1:{upstream.port}")
                    mapped.append(f"{host}:80:127.0.0.1:{upstream.http_port}")
        if loopback_only:
            mapped.append("::127.0.0.1:")  # catch-all: any other host:port goes to loopback, never resolved
        ca_files = [str(p) for p in (upstream_ca_files if upstream_ca_files is not None
                                     else ([upstream.ca_file] if upstream else []))]
        self.args = [
            python, "-m", "oshu_sidecar",
            "--listen", "127.0.0.1:0",
            "--admin-listen", "127.0.0.1:0",
            "--session-file", str(self.session_path),
            "--ca-cert", str(self.ca_cert_file),
            "--ca-key", str(self.ca_key_file),
            "--reload-interval", str(reload_interval),
        ]
        for m in mapped:
            self.args += ["--connect-to", m]
        for r in resolve:
            self.args += ["--resolve", r]
        for f in ca_files:
            self.args += ["--upstream-ca-file", f]
        self.args += list(extra_args)
        self.env = {k: v for k, v in (env if env is not None else os.environ).items()
                    if k not in PROXY_ENV_VARS and not k.startswith("OSHU_")}
        self.proc: subprocess.Popen[bytes] | None = None
        self.listen: tuple[str, int] | None = None
        self.admin: tuple[str, int] | None = None

    # lifecycle
    def __enter__(self) -> "SidecarProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def start(self, timeout: float = _START_TIMEOUT) -> "SidecarProcess":
        """Start the process and wait until /readyz answers 200."""
        self._log_handle = open(self.log_file, "ab")
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=self._log_handle,
                                     stderr=self._log_handle, env=self.env)
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
        code = terminate(self.proc, timeout)
        if not self._log_handle.closed:
            self._log_handle.close()
        return code

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

    def client_env(self, extra_ca_files: Iterable[Path | str] = (), base: Mapping[str, str] | None = None
                   ) -> dict[str, str]:
        """Environment for an unmodified client: proxy variables and a CA bundle trusting the session CA.

        `extra_ca_files` join the bundle (e.g. the upstream's CA, for blind tunnels where
        the client sees the real upstream certificate).
        """
        bundle = self.directory / f"client-ca-{_secrets.token_hex(4)}.pem"
        parts = [self.ca.cert_pem] + [Path(p).read_bytes() for p in extra_ca_files]
        bundle.write_bytes(b"\n".join(parts))
        env = {k: v for k, v in (base if base is not None else os.environ).items()
               if k not in PROXY_ENV_VARS and not k.startswith("OSHU_")}
        url = self.proxy_url
        env.update({
            "HTTPS_PROXY": url, "https_proxy": url, "HTTP_PROXY": url, "http_proxy": url,
            "WSS_PROXY": url, "wss_proxy": url, "WS_PROXY": url, "ws_proxy": url,  # aiohttp's WebSocket client
            "NO_PROXY": "", "no_proxy": "",
            "SSL_CERT_FILE": str(bundle), "REQUESTS_CA_BUNDLE": str(bundle), "CURL_CA_BUNDLE": str(bundle),
            "NODE_EXTRA_CA_CERTS": str(bundle),
        })
        return env

    # session file
    def write_session(self, session: Session | Mapping[str, Any] | bytes | str) -> None:
        """Replace the session atomically, the way kubelet updates a mounted Secret (recreating it if deleted)."""
        write_k8s_secret_dir(self.session_dir, {"session.json": _session_bytes(session)})

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
            with urllib.request.urlopen(self.admin_url + path, timeout=timeout) as r:  # noqa: S310 - loopback only
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
    out, cur, quoted = [], [], False
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


def _session_hosts(session: Session | Mapping[str, Any] | bytes | str) -> list[str]:
    """Every exact host named by the session's secrets and egress (wildcards are skipped)."""
    if not isinstance(session, Session):
        from oshu_sidecar.session import loads_session
        session = loads_session(_session_bytes(session))
    names: list[str] = []
    for pattern in [p for s in session.secrets for p in s.hosts] + list(session.egress or ()):
        if not pattern.wildcard and str(pattern) not in names:
            names.append(str(pattern))
    return names


# -- raw protocol client ------------------------------------------------------------------
@dataclass
class RawResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    raw_head: bytes = b""

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def json(self) -> Any:
        return json.loads(self.body)


class RawClient:
    """A blocking socket to the proxy for protocol-level tests (malformed input, SNI games, pipelining).

    `connect(authority)` sends CONNECT; `start_tls(server_name)` wraps the tunnel with TLS
    trusting `ca_file` (the session CA); `send()` writes raw bytes; `response()` reads one
    HTTP/1.1 response (Content-Length, chunked, close-delimited or body-less).
    """

    def __init__(self, address: tuple[str, int], timeout: float = 10.0) -> None:
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection(address, timeout=timeout)
        self._buf = b""

    def __enter__(self) -> "RawClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def connect(self, authority: str) -> RawResponse:
        self.send(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        return self.response(method="CONNECT")

    def start_tls(self, server_name: str | None, ca_file: Path | str, check_hostname: bool = True) -> None:
        ctx = ssl.create_default_context(cafile=str(ca_file))
        ctx.check_hostname = check_hostname and server_name is not None
        if not ctx.check_hostname:
            ctx.verify_mode = ssl.CERT_NONE  # only for SNI mismatch tests: the proxy is what is under test
        assert not self._buf, "bytes after the CONNECT response"
        self.sock = ctx.wrap_socket(self.sock, server_hostname=server_name)

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self._buf += data
        return True

    def _line(self) -> bytes:
        while b"\r\n" not in self._buf:
            if not self._fill():
                raise ConnectionError("connection closed inside a line")
        line, self._buf = self._buf.split(b"\r\n", 1)
        return line

    def closed_by_peer(self) -> bool:
        """True if the proxy has closed the connection (EOF or reset) and sent nothing more."""
        try:
            return not self._buf and not self._fill()
        except (ConnectionError, ssl.SSLError):
            return True

    def response(self, method: str = "GET") -> RawResponse:
        while b"\r\n\r\n" not in self._buf:
            if not self._fill():
                raise ConnectionError(f"connection closed before a complete response head: {self._buf[:200]!r}")
        head, self._buf = self._buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        _, status, reason = (lines[0].split(" ", 2) + [""])[:3]
        headers = [(k.strip(), v.strip()) for k, _, v in (ln.partition(":") for ln in lines[1:])]
        resp = RawResponse(int(status), reason, headers, b"", head)
        code = resp.status
        te = (resp.header("transfer-encoding") or "").lower()
        if method in ("HEAD",) or code < 200 or code in (204, 304) or (method == "CONNECT" and code == 200):
            return resp
        if te == "chunked":
            body = b""
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line():
                        pass
                    break
                while len(self._buf) < size + 2:
                    if not self._fill():
                        raise ConnectionError("closed inside a chunk")
                body += self._buf[:size]
                self._buf = self._buf[size + 2:]
            resp.body = body
        elif resp.header("content-length") is not None:
            n = int(resp.header("content-length") or 0)
            while len(self._buf) < n:
                if not self._fill():
                    raise ConnectionError("closed inside the body")
            resp.body, self._buf = self._buf[:n], self._buf[n:]
        else:
            while self._fill():
                pass
            resp.body, self._buf = self._buf, b""
        return resp

    def request(self, method: str, target: str, headers: Mapping[str, str] | Sequence[tuple[str, str]] = (),
                body: bytes = b"") -> RawResponse:
        items = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
        if body and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in items):
            items.append(("Content-Length", str(len(body))))
        head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in items) + "\r\n"
        self.send(head.encode("latin-1") + body)
        return self.response(method)
