"""Live sessions in memory (id -> `Entry`), backed by a `SessionStore`; credentials checks.

The proxy asks for a connection's policy on every request, so this is a dict lookup and
a clock read. A connection holds its `Entry`, not the id: once the session is deleted or
expires, the entry's policy is a dead one (nothing substituted, sealed tokens get 403,
values still scrubbed), also for connections that were open before.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import replace
from datetime import UTC, datetime

from oshu_contract.session import Session, format_time, parse_session
from oshu_sidecar.logs import AuditLog
from oshu_sidecar.policy import Policy

from .store import SessionStore, StoredSession, StoreWriter


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Entry:
    """One session: its policy, credentials hash, lifetimes and usage."""

    __slots__ = (
        "audit",
        "created",
        "dead",
        "expires_at",
        "idle_ttl",
        "last_used",
        "policy",
        "request_count",
        "session",
        "session_id",
        "token_hash",
        "used",
    )

    def __init__(self, rec: StoredSession, session: Session) -> None:
        self.session_id = rec.session_id
        self.token_hash = rec.token_hash
        self.session = session
        self.policy = Policy(session)
        self.created = rec.created
        self.expires_at = rec.expires_at
        self.idle_ttl = rec.idle_ttl
        self.last_used = rec.last_used
        self.request_count = rec.request_count
        self.dead: Policy | None = None
        self.used = False  # usage not yet written to the store
        self.audit: AuditLog | None = None  # its audit line writer, made on first use (GatewayProxy.audit_for)

    def deadline(self) -> float:
        return min(self.expires_at, self.last_used + self.idle_ttl)

    def live(self, now: float) -> bool:
        return self.dead is None and now < self.deadline()

    def kill(self, reason: str | None, now: float) -> None:
        """Stop substituting for good: revoked (`reason`) or expired (None)."""
        if self.dead is not None:
            return
        if reason is not None:
            self.dead = Policy(self.session, revoked_reason=reason)
        else:
            ended = datetime.fromtimestamp(min(self.deadline(), now), UTC)
            self.dead = Policy(replace(self.session, expires_at=ended))

    def current_policy(self, now: float) -> Policy:
        """The policy for a request at `now` (the hot path: two comparisons while live)."""
        if self.dead is None:
            if now < self.expires_at and now - self.last_used < self.idle_ttl:
                return self.policy
            self.kill(None, now)
        assert self.dead is not None
        return self.dead

    def touch(self, now: float, count: int = 0) -> None:
        if self.dead is None:
            self.last_used = now
            self.request_count += count
            self.used = True

    def metadata(self) -> dict[str, object]:
        """What GET /v1/sessions/{id} shows: never a value, sealed token or client token."""
        s = self.session
        return {
            "session_id": self.session_id,
            "secrets": {
                b.name: {"kind": b.kind.value, "hosts": [str(h) for h in b.hosts], "locations": sorted(b.locations)}
                for b in s.secrets
            },
            "allowed_egress": None if s.egress is None else [str(h) for h in s.egress],
            "created_at": _iso(self.created),
            "expires_at": _iso(self.expires_at),
            "idle_ttl_seconds": self.idle_ttl,
            "idle_expires_at": _iso(self.last_used + self.idle_ttl),
            "last_used_at": _iso(self.last_used),
            "request_count": self.request_count,
        }


def _iso(t: float) -> str:
    return format_time(datetime.fromtimestamp(t, UTC))


def parse_basic(value: bytes | None) -> tuple[str, str] | None:
    """(session id, token) from `Basic base64(id:token)`, or None."""
    if not value:
        return None
    scheme, _, b64 = value.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        raw = base64.b64decode(b64.strip(), validate=True).decode("ascii")
    except (ValueError, UnicodeDecodeError):
        return None
    sid, sep, tok = raw.partition(":")
    return (sid, tok) if sep and sid and tok else None


class Registry:
    """The live sessions and the store they persist in (written through `writer`, off the event loop)."""

    def __init__(self, store: SessionStore) -> None:
        self.store = store
        self.writer = StoreWriter(store)
        self.sessions: dict[str, Entry] = {}
        self.created = 0
        self.deleted = 0
        self.expired = 0

    def load(self, now: float) -> int:
        """Load every stored session; purge those that expired while the gateway was down (at start-up,
        before serving: the only store calls made from the event loop's thread)."""
        for rec in self.store.load_all():
            entry = Entry(rec, parse_session(json.loads(rec.document)))
            if entry.live(now):
                self.sessions[rec.session_id] = entry
            else:
                self.store.delete(rec.session_id)
                self.expired += 1
        return len(self.sessions)

    async def add(
        self, session: Session, token: str, ttl: float, idle_ttl: float, now: float, document: bytes | None = None
    ) -> Entry:
        """Store the new session durably, then make it live: nobody learns credentials the store lacks.
        `document` is what the store keeps (default: the session document alone)."""
        doc = session.to_json() if document is None else document
        rec = StoredSession(session.session, token_hash(token), doc, now, now + ttl, idle_ttl, now, 0)
        await self.writer.run(lambda: self.store.put(rec))
        entry = self.sessions[rec.session_id] = Entry(rec, session)
        self.created += 1
        return entry

    async def delete(self, session_id: str, now: float) -> bool:
        """Kill the session at once (open connections too); return once the store has forgotten it."""
        entry = self.sessions.pop(session_id, None)
        if entry is None:
            return False
        entry.kill(f"session {session_id} was deleted", now)
        self.deleted += 1
        await self.writer.run(lambda: self.store.delete(session_id))
        return True

    def authenticate(self, header: bytes | None, now: float) -> Entry | None:
        """The live session whose id and token `header` carries, else None (constant-time token check)."""
        creds = parse_basic(header)
        if creds is None:
            return None
        entry = self.sessions.get(creds[0])
        digest = token_hash(creds[1])
        if entry is None:
            hmac.compare_digest(digest, digest)  # same work whether or not the id exists
            return None
        if not hmac.compare_digest(digest, entry.token_hash) or not entry.live(now):
            return None
        return entry

    async def sweep(self, now: float | None = None) -> None:
        """Purge expired sessions and write usage (last used, request count) to the store."""
        now = time.time() if now is None else now
        gone = []
        for sid, entry in list(self.sessions.items()):
            if not entry.live(now):
                entry.kill(None, now)
                del self.sessions[sid]
                gone.append(sid)
                self.expired += 1
        usage = [(e.session_id, e.last_used, e.request_count) for e in self.sessions.values() if e.used]
        for e in self.sessions.values():
            e.used = False
        if gone or usage:
            await self.writer.run(lambda: self._purge_and_touch(gone, usage))

    def _purge_and_touch(self, gone: list[str], usage: list[tuple[str, float, int]]) -> None:
        for sid in gone:
            self.store.delete(sid)
        self.store.touch(usage)

    def close(self) -> None:
        self.writer.close()
