"""The session API: one function from (method, path, headers, body) to a response; no sockets here.

Routes: POST /v1/sessions, GET/DELETE /v1/sessions/{id}, GET /v1/ca.pem, GET /v1/openapi.json
and (no API key) /healthz, /readyz, /metrics. Errors are `{"error": {"code", "message"}}`.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

from .errors import ApiError
from .registry import Registry
from .sessions import build_session, new_client_token, new_session_id

#: Largest request body accepted (413 above).
MAX_BODY = 64 * 1024
#: Session creations per API key: a burst of CREATE_BURST, refilled at CREATE_RATE per second (429 beyond).
CREATE_BURST = 50
CREATE_RATE = 10.0
#: Every route and its methods (docs: openapi.json, checked against this by tests/gateway).
ROUTES: dict[str, tuple[str, ...]] = {
    "/healthz": ("GET",),
    "/readyz": ("GET",),
    "/metrics": ("GET",),
    "/v1/ca.pem": ("GET",),
    "/v1/openapi.json": ("GET",),
    "/v1/sessions": ("POST",),
    "/v1/sessions/{id}": ("GET", "DELETE"),
}


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


def json_response(status: int, doc: object) -> Response:
    return Response(status, json.dumps(doc, separators=(",", ":")).encode() + b"\n")


def error(e: ApiError) -> Response:
    r = json_response(e.status, {"error": {"code": e.code, "message": e.message}})
    r.headers.extend(e.headers)
    return r


class ApiKeys:
    """Management keys from a file (one per line, `#` comments), re-read when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sig: tuple[int, int, int] | None = None
        self._digests: list[bytes] = []
        self.reload()

    def reload(self) -> None:
        st = self.path.stat()
        sig = (st.st_mtime_ns, st.st_size, st.st_ino)
        if sig == self._sig:
            return
        lines = [ln.strip() for ln in self.path.read_text().splitlines()]
        self._digests = [hashlib.sha256(ln.encode()).digest() for ln in lines if ln and not ln.startswith("#")]
        self._sig = sig

    def check(self, header: bytes | None) -> bytes:
        """The key's digest (the rate-limit bucket) for `Bearer <key>`; 401 otherwise. Constant-time per key."""
        with contextlib.suppress(OSError):  # unreadable now: keep the last good list
            self.reload()
        scheme, _, key = (header or b"").strip().partition(b" ")
        digest = hashlib.sha256(key.strip()).digest()
        found = b""
        for d in self._digests:
            if hmac.compare_digest(d, digest):
                found = d
        if scheme.lower() != b"bearer" or not key or not found:
            raise ApiError(401, "unauthorized", "missing or wrong API key (Authorization: Bearer <key>)")
        return found


class RateLimit:
    """A token bucket per key."""

    def __init__(self, burst: int = CREATE_BURST, rate: float = CREATE_RATE) -> None:
        self.burst, self.rate = burst, rate
        self.buckets: dict[bytes, tuple[float, float]] = {}

    def take(self, key: bytes, now: float) -> None:
        tokens, at = self.buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        if tokens < 1.0:
            wait = max(1, int((1.0 - tokens) / self.rate + 0.999))
            raise ApiError(
                429,
                "rate_limited",
                f"at most {self.rate:g} session creations per second per API key (burst {self.burst})",
                (("Retry-After", str(wait)),),
            )
        self.buckets[key] = (tokens - 1.0, now)


def openapi_document() -> bytes:
    return resources.files(__package__).joinpath("openapi.json").read_bytes()


@dataclass(frozen=True, slots=True)
class ApiDeps:
    """What the API serves from: the sessions, the management keys, the CA and the gateway's state."""

    registry: Registry
    keys: ApiKeys
    ca_pem: bytes
    public_url: Callable[[], str]
    max_ttl: float
    default_idle_ttl: float
    ready: Callable[[], bool]
    metrics: Callable[[], bytes]


class Api:
    """Routes API requests; `counts` (route, status) -> n feeds /metrics."""

    def __init__(self, deps: ApiDeps) -> None:
        self.d = deps
        self.registry = deps.registry
        self.limit = RateLimit()
        self.counts: dict[tuple[str, int], int] = {}
        self._openapi = openapi_document()

    async def handle(self, method: str, path: str, headers: dict[str, bytes], body: bytes) -> Response:
        """The response to one API request; creations and deletions return once the store has them."""
        route = _route_of(path)
        try:
            resp = self._public(route, method)
            if resp is None:
                resp = await self._managed(route, method, path, headers, body)
        except ApiError as e:
            resp = error(e)
        key = (route, resp.status)
        self.counts[key] = self.counts.get(key, 0) + 1
        return resp

    def _public(self, route: str, method: str) -> Response | None:
        """Routes without an API key (and the 404/405 checks); None for the managed ones."""
        allowed = ROUTES.get(route)
        if allowed is None:
            raise ApiError(404, "not_found", "no such route; see /v1/openapi.json")
        if method not in allowed and not (method == "HEAD" and "GET" in allowed):
            raise ApiError(
                405, "method_not_allowed", f"{route} accepts {', '.join(allowed)}", (("Allow", ", ".join(allowed)),)
            )
        if route == "/healthz":
            return Response(200, b"ok\n", "text/plain")
        if route == "/readyz":
            return (
                Response(200, b"ready\n", "text/plain")
                if self.d.ready()
                else Response(503, b"not ready\n", "text/plain")
            )
        if route == "/metrics":
            return Response(200, self.d.metrics(), "text/plain; version=0.0.4; charset=utf-8")
        if route == "/v1/ca.pem":
            return Response(200, self.d.ca_pem, "application/x-pem-file")
        if route == "/v1/openapi.json":
            return Response(200, self._openapi)
        return None

    async def _managed(self, route: str, method: str, path: str, headers: dict[str, bytes], body: bytes) -> Response:
        key = self.d.keys.check(headers.get("authorization"))
        now = time.time()
        if route == "/v1/sessions":
            return await self._create(key, headers, body, now)
        sid = path.split("?", 1)[0][len("/v1/sessions/") :]
        if method == "DELETE":
            if not await self.registry.delete(sid, now):
                raise ApiError(404, "not_found", "no such session (unknown, deleted or expired)")
            return Response(204)
        entry = self.registry.sessions.get(sid)
        if entry is None or not entry.live(now):
            raise ApiError(404, "not_found", "no such session (unknown, deleted or expired)")
        return json_response(200, entry.metadata())

    async def _create(self, key: bytes, headers: dict[str, bytes], body: bytes, now: float) -> Response:
        ctype = headers.get("content-type", b"").split(b";")[0].strip().lower()
        if ctype != b"application/json":
            raise ApiError(415, "unsupported_media_type", "send the body as Content-Type: application/json")
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "invalid_json", "the body is not valid JSON") from None
        self.limit.take(key, now)
        sid, token = new_session_id(), new_client_token()
        new = build_session(doc, sid, token, datetime.fromtimestamp(now, UTC), self.d.max_ttl, self.d.default_idle_ttl)
        entry = await self.registry.add(new.session, token, new.ttl, new.idle_ttl, now, new.document())
        base = self.d.public_url()
        scheme, _, hostport = base.partition("://")
        return json_response(
            201,
            {
                "session_id": sid,
                "token": token,
                "sealed_secrets": {b.name: b.sealed for b in new.session.secrets},
                "secrets": new.answer_secrets(),
                "expires_at": entry.metadata()["expires_at"],
                "idle_ttl_seconds": new.idle_ttl,
                "proxy_url": f"{scheme}://{sid}:{token}@{hostport}",
                "ca_url": f"{base}/v1/ca.pem",
            },
        )


def _route_of(path: str) -> str:
    p = path.split("?", 1)[0]
    if p.startswith("/v1/sessions/") and "/" not in p[len("/v1/sessions/") :] and len(p) > len("/v1/sessions/"):
        return "/v1/sessions/{id}"
    if p in ROUTES:
        return p
    return "other"
