"""Local HTTPS stand-ins for an OAuth2 token endpoint, Google's token endpoint and the APIs behind them.

`TokenServer` is one aiohttp server on 127.0.0.1 (own CA, leaf for every name in `names`) in a
background thread that answers by Host header:

- `/oauth/token` (on `auth.oshu.test` or any other name): a generic OAuth2 token endpoint. `client_credentials` with the
  client id/secret (Basic or in the body), `refresh_token` with the current refresh token
  (rotated on use), and a token-exchange grant authenticated by a current access token
  (answers with access, refresh and id tokens, for the "a token response reaches the agent"
  case). Issues short-lived tokens, counts requests and the most ever in flight at once.
- `oauth2.googleapis.com/token`: Google's jwt-bearer exchange. The assertion must VERIFY with
  the REAL service-account public key (google-auth's own verifier) and carry the real key id;
  the throwaway key the agent holds is refused.
- any other host (`api.oshu.test`, `us-east5-aiplatform.googleapis.com`...): an API that accepts
  only a live access token (Bearer header, `access_token` form field or query parameter; or a
  self-signed JWT of the real key): `/v1/whoami` answers 200,
  `/v1/echo-token` echoes the token it got back (an upstream that leaks it), a Vertex
  `...:rawPredict` path answers an Anthropic Messages response.

Nothing here is ever reached except through `--connect-to` pinning to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import shutil
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Awaitable, Sequence
from pathlib import Path
from urllib.parse import parse_qsl

from aiohttp import web
from google.auth import jwt as gjwt

from .ca import TestCA

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
GOOGLE_TOKEN_HOST = "oauth2.googleapis.com"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
VERTEX_HOST = "us-east5-aiplatform.googleapis.com"
AUTH_HOST = "auth.oshu.test"
API_HOST = "api.oshu.test"
NAMES = (AUTH_HOST, API_HOST, GOOGLE_TOKEN_HOST, VERTEX_HOST)


class TokenServer:
    """See the module docstring. Configure the credentials before requests arrive."""

    def __init__(self, names: Sequence[str] = NAMES, lifetime: int = 3600) -> None:
        self.names = tuple(names)
        self.directory = Path(tempfile.mkdtemp(prefix="oshu-tokens-"))
        self.ca = TestCA.new("oshu token stand-in CA").write(self.directory, "tokens-ca")
        self.lifetime = lifetime
        self.client_id = "client-" + secrets.token_hex(4)
        self.client_secret = "cs-" + secrets.token_urlsafe(24)
        self.refresh_token = "rt-" + secrets.token_urlsafe(24)
        #: Google: the REAL service account (public key PEM, key id, email).
        self.google_public_pem = b""
        self.google_kid = ""
        self.google_email = ""
        self.live: dict[str, float] = {}  # every token issued -> expiry (time.monotonic)
        self.issued: list[str] = []
        self.token_requests = 0
        self.google_requests = 0
        self.refused: list[str] = []  # why token requests were refused
        self.api_tokens: list[str] = []  # the bearer token of every API request accepted
        self.api_refused = 0
        self.in_flight = self.max_in_flight = 0
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()

    # -- lifecycle ----------------------------------------------------------------------
    def __enter__(self) -> TokenServer:
        self._thread = threading.Thread(target=self._run, name="oshu-token-standin", daemon=True)
        self._thread.start()
        if not self._started.wait(20) or not self.port:
            raise RuntimeError("token stand-in did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._runner is not None:
            fut = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
            with contextlib.suppress(Exception):
                fut.result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        shutil.rmtree(self.directory, ignore_errors=True)

    @property
    def ca_file(self) -> Path:
        return self.ca.cert_path

    def connect_to(self) -> list[str]:
        """`--connect-to` rules pinning every name to this server."""
        return [f"{name}:443:127.0.0.1:{self.port}" for name in self.names]

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._start())
        finally:
            self._started.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        pair = self.ca.issue(self.names)
        leaf = self.directory / "leaf.pem"
        leaf.write_bytes(pair.cert_pem + pair.key_pem)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(leaf)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(self._runner, sock, ssl_context=ctx).start()
        self.port = sock.getsockname()[1]

    # -- tokens -------------------------------------------------------------------------
    def _issue(self, prefix: str) -> str:
        token = prefix + secrets.token_urlsafe(24)
        self.live[token] = time.monotonic() + self.lifetime
        self.issued.append(token)
        return token

    def issue(self, prefix: str = "st-") -> str:
        """A live token made outside any grant (e.g. a static secret's real value the API accepts)."""
        return self._issue(prefix)

    def is_live(self, token: str) -> bool:
        return self.live.get(token, 0.0) > time.monotonic()

    def _refuse(self, why: str, status: int = 400, error: str = "invalid_grant") -> web.Response:
        self.refused.append(why)
        return web.json_response({"error": error, "error_description": why}, status=status)

    async def _dispatch(self, request: web.Request) -> web.Response:
        host = (request.host or "").split(":")[0]
        if request.path == "/oauth/token":  # on AUTH_HOST (or any name a test gives the endpoint)
            return await self._counted(self._oauth_token(request))
        if host == GOOGLE_TOKEN_HOST and request.path == "/token":
            return await self._google_token(request)
        return self._api(request, await request.read())

    async def _counted(self, answer: Awaitable[web.Response]) -> web.Response:
        self.token_requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.05)  # a window in which a second concurrent request would overlap
            return await answer
        finally:
            self.in_flight -= 1

    async def _oauth_token(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        grant = form.get("grant_type")
        if grant == TOKEN_EXCHANGE:
            bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
            if not self.is_live(bearer):
                return self._refuse("token exchange without a live access token", 401, "invalid_token")
            return web.json_response(
                {
                    "access_token": self._issue("xat-"),
                    "refresh_token": "xrt-" + secrets.token_urlsafe(24),
                    "id_token": "xid-" + secrets.token_urlsafe(24),
                    "expires_in": self.lifetime,
                    "token_type": "Bearer",
                    "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
                }
            )
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        basic = request.headers.get("Authorization", "")
        if basic.startswith("Basic "):
            client_id, _, client_secret = base64.b64decode(basic[6:]).decode().partition(":")
        if client_id != self.client_id or client_secret != self.client_secret:
            return self._refuse("bad client credentials", 401, "invalid_client")
        doc: dict[str, object] = {"expires_in": self.lifetime, "token_type": "Bearer"}
        if grant == "refresh_token":
            if form.get("refresh_token") != self.refresh_token:
                return self._refuse("unknown refresh token")
            self.refresh_token = "rt-" + secrets.token_urlsafe(24)  # rotated
            doc["refresh_token"] = self.refresh_token
        elif grant != "client_credentials":
            return self._refuse("unsupported grant", error="unsupported_grant_type")
        doc["access_token"] = self._issue("at-")
        return web.json_response(doc)

    async def _google_token(self, request: web.Request) -> web.Response:
        self.google_requests += 1
        form = dict(await request.post())
        if form.get("grant_type") != JWT_BEARER:
            return self._refuse("not a jwt-bearer grant", error="unsupported_grant_type")
        assertion = str(form.get("assertion", "")).encode()
        try:
            claims = gjwt.decode(assertion, certs=self.google_public_pem, audience=GOOGLE_TOKEN_URI)
            header = gjwt.decode_header(assertion)
        except Exception as e:  # google-auth raises ValueError and its own exception types
            return self._refuse(f"assertion does not verify with the real key: {e.__class__.__name__}")
        if header.get("kid") != self.google_kid or claims.get("iss") != self.google_email:
            return self._refuse("assertion names another key or account")
        return web.json_response(
            {"access_token": self._issue("ya29."), "expires_in": self.lifetime, "token_type": "Bearer"}
        )

    # -- the API ------------------------------------------------------------------------
    def _api(self, request: web.Request, body: bytes) -> web.Response:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if not token:  # RFC 6750 2.2 / 2.3: the form body or the query string
            form = dict(parse_qsl(body.decode("latin-1"))) if body else {}
            token = form.get("access_token") or request.query.get("access_token", "")
        if not (self.is_live(token) or self._real_self_signed(token)):
            self.api_refused += 1
            return web.json_response({"error": {"message": "invalid or expired token"}}, status=401)
        self.api_tokens.append(token)
        if request.path == "/v1/echo-token":
            return web.json_response({"you_sent": token})
        if request.path.endswith(":rawPredict") or request.path.endswith(":streamRawPredict"):
            return web.json_response(
                {
                    "id": "msg_standin",
                    "type": "message",
                    "role": "assistant",
                    "model": "claude-standin",
                    "content": [{"type": "text", "text": "hello from the Vertex stand-in"}],
                    "stop_reason": "end_turn",
                    "stop_sequence": None,
                    "usage": {"input_tokens": 3, "output_tokens": 6},
                }
            )
        return web.json_response({"ok": True, "path": request.path, "body_bytes": len(body)})

    def _real_self_signed(self, token: str) -> bool:
        if not self.google_public_pem or token.count(".") != 2:
            return False
        try:
            claims = gjwt.decode(token.encode(), certs=self.google_public_pem, verify=True, audience=None)
        except Exception:
            return False
        return (
            claims.get("iss") == self.google_email and gjwt.decode_header(token.encode()).get("kid") == self.google_kid
        )
