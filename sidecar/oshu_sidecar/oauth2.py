"""OAuth2 access tokens the proxy obtains itself, for secrets of kind `oauth2`.

The agent holds only a sealed bearer token; the proxy holds the client credentials (or a
refresh token), asks the token endpoint for an access token (`client_credentials` or
`refresh_token` grant), caches it, and refreshes it ahead of its expiry: one request to the
token endpoint at a time however many agent requests want a token (single-flight), the
current token served while a refresh ahead of time is under way. The token endpoint is
reached like any upstream: over the proxy's pool, so with verified TLS (system roots plus
`--upstream-ca-file`), its `--resolve`/`--connect-to` pinning and, in the gateway, its
address guard. Failures become `token_unavailable` errors that name the secret and the
endpoint's status or OAuth error code, never a credential or a response body.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode, urlsplit

from oshu_contract.hosts import normalize_host

from .body import BodyReader
from .channel import ChannelClosed, DeadlineExpired, HeadTooLarge
from .errors import ProxyError
from .http1 import LENGTH, NO_BODY, parse_response_head
from .logs import log
from .upstream import UpstreamConn, UpstreamPool

#: Lifetime assumed when the token endpoint does not say (`expires_in` is only RECOMMENDED).
DEFAULT_LIFETIME = 3600.0
#: Refresh this long before expiry at most (a quarter of the lifetime for short-lived tokens)...
REFRESH_AHEAD = 60.0
#: ...and stop handing a token out this long before it expires (it must still be valid upstream).
EXPIRY_MARGIN = 10.0
#: After a failed request, callers get the same error for this long instead of a new request.
FAILURE_HOLD = 2.0
#: After an API rejected the cached token (401), the next rejection is believed only this much later.
REJECT_HOLD = 30.0
#: Largest token endpoint response read.
MAX_RESPONSE = 64 * 1024
#: Time allowed for one token request (connect, send, answer).
REQUEST_TIMEOUT = 30.0
_OAUTH_ERROR_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")

#: (client, refresh token to use or None) -> (HTTP status, response body).
Fetch = Callable[["OAuth2Client", "str | None"], Awaitable[tuple[int, bytes]]]


@dataclass(frozen=True, slots=True)
class OAuth2Client:
    """A binding's token endpoint and credentials (real material: repr hides it)."""

    name: str
    host: str
    port: int
    path: str
    client_id: str
    client_secret: str = field(default="", repr=False)
    refresh_token: str = field(default="", repr=False)
    scope: str = ""
    audience: str = ""
    client_auth: str = "basic"

    @classmethod
    def from_fields(cls, name: str, fields: Mapping[str, str]) -> OAuth2Client:
        """From a binding's `fields`; ValueError naming the field if it is unusable."""
        url = urlsplit(fields.get("tokenUrl", ""))
        host = normalize_host(url.hostname or "")
        if url.scheme != "https" or not host or url.username or url.password or url.fragment:
            raise ValueError(f"secret {name}: tokenUrl must be an https:// URL without credentials")
        auth = fields.get("clientAuth") or "basic"
        if auth not in ("basic", "post"):
            raise ValueError(f"secret {name}: clientAuth must be basic or post")
        if not fields.get("clientId"):
            raise ValueError(f"secret {name}: clientId is required")
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        return cls(
            name=name,
            host=host,
            port=url.port or 443,
            path=path,
            client_id=fields["clientId"],
            client_secret=fields.get("clientSecret", ""),
            refresh_token=fields.get("refreshToken", ""),
            scope=fields.get("scope", ""),
            audience=fields.get("audience", ""),
            client_auth=auth,
        )

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == 443 else f"{host}:{self.port}"

    def token_request(self, refresh_token: str | None) -> tuple[list[tuple[str, str]], bytes]:
        """Extra header fields and the form body of a token request (pure)."""
        form: list[tuple[str, str]] = []
        if refresh_token:
            form += [("grant_type", "refresh_token"), ("refresh_token", refresh_token)]
        else:
            form.append(("grant_type", "client_credentials"))
        if self.scope:
            form.append(("scope", self.scope))
        if self.audience:
            form.append(("audience", self.audience))
        headers: list[tuple[str, str]] = []
        if self.client_secret and self.client_auth == "basic":
            # RFC 6749 2.3.1: each part form-urlencoded before base64.
            pair = f"{quote(self.client_id, safe='')}:{quote(self.client_secret, safe='')}"
            headers.append(("Authorization", "Basic " + base64.b64encode(pair.encode()).decode("ascii")))
        else:
            form.append(("client_id", self.client_id))
            if self.client_secret:
                form.append(("client_secret", self.client_secret))
        return headers, urlencode(form).encode("ascii")


@dataclass(frozen=True, slots=True)
class Grant:
    """What a successful token response gave: the access token, its lifetime, a rotated refresh token."""

    access_token: str = field(repr=False)
    lifetime: float
    refresh_token: str | None = field(default=None, repr=False)


def parse_token_response(name: str, status: int, body: bytes) -> Grant:
    """A token endpoint's answer as a `Grant`, or `token_unavailable` saying why (no value quoted)."""
    doc: object = None
    try:
        doc = json.loads(body) if body.strip().startswith(b"{") else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        doc = None
    if not 200 <= status < 300:
        code = doc.get("error") if isinstance(doc, dict) else None
        detail = f" ({code})" if isinstance(code, str) and _OAUTH_ERROR_RE.fullmatch(code) else ""
        raise unavailable(name, f"the token endpoint answered {status}{detail}")
    if not isinstance(doc, dict):
        raise unavailable(name, "the token endpoint's answer is not a JSON object")
    token = doc.get("access_token")
    if not isinstance(token, str) or not token:
        raise unavailable(name, "the token endpoint's answer has no access_token")
    kind = doc.get("token_type", "Bearer")
    if not isinstance(kind, str) or kind.lower() != "bearer":
        raise unavailable(name, "the token endpoint issued a token that is not a Bearer token")
    lifetime = doc.get("expires_in")
    if isinstance(lifetime, str) and lifetime.isascii() and lifetime.isdigit():
        lifetime = int(lifetime)
    if not isinstance(lifetime, int | float) or isinstance(lifetime, bool) or not 0 < lifetime < 10**9:
        lifetime = DEFAULT_LIFETIME  # (absent, nonsense, NaN or an infinity)
    refresh = doc.get("refresh_token")
    return Grant(token, float(lifetime), refresh if isinstance(refresh, str) and refresh else None)


def unavailable(name: str, why: str) -> ProxyError:
    return ProxyError("token_unavailable", f"no access token for secret {name}: {why}")


class TokenSource:
    """One binding's access token: cached, refreshed ahead of expiry, one request at a time.

    `fetch` performs the HTTP request (`pool_fetch` in the proxy, a plain coroutine in tests);
    `clock` is monotonic seconds.
    """

    def __init__(self, client: OAuth2Client, fetch: Fetch, clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self._fetch = fetch
        self._clock = clock
        self._refresh_token = client.refresh_token or None
        self._token: str | None = None
        self._refresh_at = 0.0  # start a refresh (in the background) from here on
        self._usable_until = 0.0  # hand the current token out until here
        self._inflight: asyncio.Task[str] | None = None
        self._failure: ProxyError | None = None
        self._failure_until = 0.0
        #: Token endpoint requests made (for tests and the metrics).
        self.requests = 0
        self._rejected_at = float("-inf")

    def rejected(self, token: str) -> bool:
        """An API answered 401 to `token`: if it is still the cached one, stop handing it out (the
        next caller fetches a new one), at most once per REJECT_HOLD (an API that refuses every
        token for another reason must not cause a token request per request). True if dropped."""
        now = self._clock()
        if token != self._token or now - self._rejected_at < REJECT_HOLD:
            return False
        self._rejected_at = now
        self._usable_until = self._refresh_at = now
        log(logging.INFO, "oauth2 access token rejected upstream; fetching a new one", secret=self.client.name)
        return True

    def current(self) -> str | None:
        """The access token held now, if any (for scrubbing; it may be stale)."""
        return self._token

    async def token(self) -> str:
        """A usable access token: the cached one, or the result of the one refresh in flight."""
        now = self._clock()
        token = self._token
        if token is not None and now < self._usable_until:
            if now >= self._refresh_at and self._inflight is None and not self._held(now):
                self._start()  # ahead of expiry: refresh in the background, keep serving this one
            return token
        if self._inflight is None:
            if self._held(now):
                assert self._failure is not None
                raise self._failure
            self._start()
        assert self._inflight is not None
        return await asyncio.shield(self._inflight)

    def _held(self, now: float) -> bool:
        """A request failed moments ago: no new one yet (a failing endpoint is not hammered)."""
        return self._failure is not None and now < self._failure_until

    def _start(self) -> None:
        task = asyncio.get_running_loop().create_task(self._refresh())
        task.add_done_callback(_consume)
        self._inflight = task

    async def _refresh(self) -> str:
        name = self.client.name
        try:
            self.requests += 1
            try:
                status, body = await self._fetch(self.client, self._refresh_token)
            except ProxyError as e:
                raise unavailable(name, f"the token endpoint could not be reached ({e.code})") from None
            grant = parse_token_response(name, status, body)
        except ProxyError as e:
            self._failure, self._failure_until = e, self._clock() + FAILURE_HOLD
            log(logging.WARNING, "oauth2 token request failed", secret=name, error=e.message)
            raise
        finally:
            self._inflight = None
        now = self._clock()
        self._failure = None
        self._token = grant.access_token
        if grant.refresh_token:
            self._refresh_token = grant.refresh_token  # rotated: the old one may no longer work
        self._usable_until = now + grant.lifetime - min(EXPIRY_MARGIN, grant.lifetime / 10)
        self._refresh_at = now + grant.lifetime - min(REFRESH_AHEAD, grant.lifetime / 4)
        log(
            logging.INFO,
            "oauth2 access token obtained",
            secret=name,
            expires_in=grant.lifetime,
            rotated=bool(grant.refresh_token),
        )
        return grant.access_token


def _consume(task: asyncio.Task[str]) -> None:
    if not task.cancelled():
        task.exception()  # a background refresh's failure is kept in the source, not logged by asyncio


def pool_fetcher(pool: UpstreamPool, timeout: float = REQUEST_TIMEOUT) -> Fetch:
    """A `Fetch` over the proxy's upstream pool (verified TLS, the proxy's routing and address guard)."""

    async def fetch(client: OAuth2Client, refresh_token: str | None) -> tuple[int, bytes]:
        headers, body = client.token_request(refresh_token)
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers)
        head = (
            f"POST {client.path} HTTP/1.1\r\nHost: {client.authority}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\nAccept: application/json\r\n"
            f"User-Agent: oshu-vault\r\nContent-Length: {len(body)}\r\n{lines}\r\n"
        ).encode("latin-1")
        return await post(pool, (client.host, client.port), head + body, timeout)

    return fetch


class _Stale(Exception):
    """A reused connection the upstream had closed before answering (nothing was read)."""


async def post(pool: UpstreamPool, target: tuple[str, int], request: bytes, timeout: float) -> tuple[int, bytes]:
    """Send one complete request over a pooled TLS connection; (status, body up to MAX_RESPONSE).
    A pooled connection the endpoint had already closed is retried once on a fresh one."""
    host, port = target
    up, reused = await pool.acquire(True, host, port)
    try:
        return await _exchange(pool, up, host, request, timeout, reused)
    except _Stale:
        up = await pool.connect((True, host, port))
        return await _exchange(pool, up, host, request, timeout, False)


async def _exchange(
    pool: UpstreamPool, up: UpstreamConn, host: str, request: bytes, timeout: float, reused: bool
) -> tuple[int, bytes]:
    done = False
    try:
        async with asyncio.timeout(timeout):
            up.write(request)
            raw = await up.read_head(MAX_RESPONSE, timeout, timeout)
            if raw is None:  # closed before a single byte of an answer: safe to send again
                if reused:
                    raise _Stale()
                raise ProxyError("upstream_protocol_error", f"{host} closed the connection before answering")
            resp = parse_response_head(raw, b"POST")
            if resp.framing == LENGTH and resp.content_length > MAX_RESPONSE:
                raise ProxyError("upstream_protocol_error", f"{host} sent a token response too large to read")
            body = bytearray()
            if resp.framing != NO_BODY:
                reader = BodyReader(up, resp.framing, resp.content_length, strict=False)
                while piece := await reader.read():
                    body += piece
                    if len(body) > MAX_RESPONSE:
                        raise ProxyError("upstream_protocol_error", f"{host} sent a token response too large")
            done = resp.keep_alive  # the whole response was read: the connection can be reused
        return resp.status, bytes(body)
    except (TimeoutError, DeadlineExpired):
        raise ProxyError("upstream_timeout", f"the token endpoint {host} did not answer in time") from None
    except (ChannelClosed, ConnectionError, HeadTooLarge):
        raise ProxyError("upstream_protocol_error", f"{host} closed or garbled the token response") from None
    finally:
        if done:
            pool.release(up)
        else:
            up.abort()
