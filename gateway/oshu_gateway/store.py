"""Session storage behind one small interface (`SessionStore`); the embedded default is SQLite.

Real values and sealed tokens live only inside `StoredSession.document` (the session
document of the contract, as JSON, with the Google agents' key files beside it), which the SQLite store encrypts with AES-GCM
(the session id as associated data, so a row cannot be moved to another id). Client
tokens are stored as SHA-256 hashes: they are 256-bit random strings, so a plain hash is
as good as a slow one, and the proxy only ever needs to compare.

Every write is one transaction with `synchronous=FULL` in WAL mode: a `kill -9` at any
moment leaves either the whole session or none of it. While serving, `StoreWriter` runs every
store call on one dedicated thread, so an fsync never stalls the proxy's event loop; callers
await it, so a session is confirmed only once it is on disk. A database that is not ours,
damaged, or encrypted under another key is a `StoreError` at open, never a silent reset.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

APP_ID = "oshu-gateway"
SCHEMA = 1
_CHECK_PLAIN = b"oshu-gateway key check"
T = TypeVar("T")


class StoreError(RuntimeError):
    """The store cannot be used; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class StoredSession:
    """One session as persisted. `document` holds the real values (JSON bytes)."""

    session_id: str
    token_hash: bytes
    document: bytes
    created: float
    expires_at: float
    idle_ttl: float
    last_used: float
    request_count: int


class SessionStore(Protocol):
    """What the gateway needs from storage (a Kubernetes-backed store can implement the same)."""

    def load_all(self) -> list[StoredSession]: ...
    def put(self, rec: StoredSession) -> None: ...
    def delete(self, session_id: str) -> bool: ...
    def touch(self, usage: list[tuple[str, float, int]]) -> None: ...
    def close(self) -> None: ...


def load_or_create_key(path: Path) -> bytes:
    """The 256-bit AES key in `path` (created 0600 on first start)."""
    if not path.exists():
        key = AESGCM.generate_key(bit_length=256)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.hex().encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        return key
    try:
        key = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as e:
        raise StoreError(f"unusable encryption key file {path}: expected 64 hex characters ({e})") from None
    if len(key) != 32:
        raise StoreError(f"unusable encryption key file {path}: expected 64 hex characters (a 256-bit key)")
    return key


class SqliteStore:
    """SQLite in one file; values encrypted with AES-GCM under `key`."""

    def __init__(self, path: Path, key: bytes) -> None:
        self.path = path
        self._aead = AESGCM(key)
        fresh = not path.exists() or path.stat().st_size == 0
        try:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            ok = self.db.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise StoreError(f"database {path} is damaged ({ok}); restore it from a backup or move it away")
            if fresh:
                self._create()
            self._check()
        except sqlite3.DatabaseError as e:
            raise StoreError(
                f"database {path} is not a usable SQLite database ({e}); move it away or restore it"
            ) from None

    def _create(self) -> None:
        nonce = secrets.token_bytes(12)
        check = nonce + self._aead.encrypt(nonce, _CHECK_PLAIN, b"check")
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("CREATE TABLE meta (k TEXT PRIMARY KEY, v BLOB NOT NULL)")
            self.db.execute(
                "CREATE TABLE sessions (id TEXT PRIMARY KEY, token_hash BLOB NOT NULL, document BLOB NOT NULL,"
                " created REAL NOT NULL, expires_at REAL NOT NULL, idle_ttl REAL NOT NULL,"
                " last_used REAL NOT NULL, request_count INTEGER NOT NULL)"
            )
            self.db.executemany(
                "INSERT INTO meta VALUES (?, ?)", [("app", APP_ID), ("schema", str(SCHEMA)), ("key_check", check)]
            )

    def _check(self) -> None:
        try:
            meta = dict(self.db.execute("SELECT k, v FROM meta").fetchall())
        except sqlite3.DatabaseError:
            raise StoreError(f"database {self.path} is not an oshu-gateway database (no meta table)") from None
        if meta.get("app") != APP_ID:
            raise StoreError(f"database {self.path} is not an oshu-gateway database")
        if meta.get("schema") != str(SCHEMA):
            raise StoreError(f"database {self.path} has schema {meta.get('schema')}, this gateway reads {SCHEMA}")
        check = meta.get("key_check")
        try:
            if not isinstance(check, bytes) or self._aead.decrypt(check[:12], check[12:], b"check") != _CHECK_PLAIN:
                raise InvalidTag
        except InvalidTag:
            raise StoreError(
                f"database {self.path} was encrypted with another key: give the right --encryption-key-file"
            ) from None

    def _seal(self, session_id: str, plain: bytes) -> bytes:
        nonce = secrets.token_bytes(12)
        return nonce + self._aead.encrypt(nonce, plain, session_id.encode())

    def _open(self, session_id: str, blob: bytes) -> bytes:
        try:
            return self._aead.decrypt(blob[:12], blob[12:], session_id.encode())
        except InvalidTag:
            raise StoreError(f"session {session_id} in {self.path} does not decrypt (tampered row?)") from None

    def load_all(self) -> list[StoredSession]:
        rows = self.db.execute(
            "SELECT id, token_hash, document, created, expires_at, idle_ttl, last_used, request_count FROM sessions"
        ).fetchall()
        return [StoredSession(r[0], r[1], self._open(r[0], r[2]), *r[3:]) for r in rows]

    def put(self, rec: StoredSession) -> None:
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    rec.session_id,
                    rec.token_hash,
                    self._seal(rec.session_id, rec.document),
                    rec.created,
                    rec.expires_at,
                    rec.idle_ttl,
                    rec.last_used,
                    rec.request_count,
                ),
            )

    def delete(self, session_id: str) -> bool:
        with self.db:
            return self.db.execute("DELETE FROM sessions WHERE id = ?", (session_id,)).rowcount > 0

    def touch(self, usage: list[tuple[str, float, int]]) -> None:
        """Usage is bookkeeping, written every second from the event loop: no fsync for it (WAL with
        synchronous=NORMAL survives a kill -9; only an OS crash may lose the last second of it).
        Sessions themselves are written with synchronous=FULL."""
        if usage:
            self.db.execute("PRAGMA synchronous=NORMAL")
            try:
                with self.db:
                    self.db.executemany(
                        "UPDATE sessions SET last_used = ?, request_count = ? WHERE id = ?",
                        [(t, n, sid) for sid, t, n in usage],
                    )
            finally:
                self.db.execute("PRAGMA synchronous=FULL")

    def close(self) -> None:
        self.db.close()


class StoreWriter:
    """Runs a store's calls in order on one dedicated thread (the only one using its connection
    once serving starts), so writes and their fsyncs happen off the event loop."""

    def __init__(self, store: SessionStore) -> None:
        self.store = store
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="oshu-store")

    async def run(self, fn: Callable[[], T]) -> T:
        """`fn()` on the writer thread; returns when it has (a write: durably) completed."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn)

    def close(self) -> None:
        """Finish the queued calls, then close the store."""
        self._thread.shutdown(wait=True)
        self.store.close()
