"""The registry's writes go through one writer thread, never the event loop's, and are durable on return.

A real `SqliteStore` on disk; the only addition is a recorder of which thread made each call.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from oshu_contract.session import Session, parse_session
from oshu_gateway.registry import Registry
from oshu_gateway.store import SqliteStore, StoredSession

KEY = bytes(range(32))


class RecordingStore(SqliteStore):
    """SqliteStore that notes the thread of every write."""

    def __init__(self, path: Path, key: bytes) -> None:
        super().__init__(path, key)
        self.threads: list[tuple[str, int]] = []

    def put(self, rec: StoredSession) -> None:
        self.threads.append(("put", threading.get_ident()))
        super().put(rec)

    def delete(self, session_id: str) -> bool:
        self.threads.append(("delete", threading.get_ident()))
        return super().delete(session_id)

    def touch(self, usage: list[tuple[str, float, int]]) -> None:
        self.threads.append(("touch", threading.get_ident()))
        super().touch(usage)


def _session(sid: str) -> Session:
    return parse_session(
        {
            "session": sid,
            "secrets": [
                {
                    "name": "K",
                    "sealed": "SEALED_writer0123456789abcdefghij",
                    "value": "sk-writer-0123456789",
                    "hosts": ["api.oshu.test"],
                }
            ],
        }
    )


def test_writes_run_off_the_loop_and_are_durable_when_awaited(tmp_path: Path) -> None:
    db = tmp_path / "sessions.db"
    store = RecordingStore(db, KEY)
    registry = Registry(store)

    async def main() -> int:
        loop_thread = threading.get_ident()
        now = time.time()
        for i in range(3):
            await registry.add(_session(f"sess_w{i}"), f"tok_{i}", 3600, 600, now)
        # Confirmed sessions are on disk: a second connection (another process would do the same) sees them.
        other = SqliteStore(db, KEY)
        assert sorted(r.session_id for r in other.load_all()) == ["sess_w0", "sess_w1", "sess_w2"]
        registry.sessions["sess_w0"].touch(now + 1, 1)
        await registry.sweep(now + 2)
        assert await registry.delete("sess_w1", now + 3)
        assert sorted(r.session_id for r in other.load_all()) == ["sess_w0", "sess_w2"]
        assert next(r for r in other.load_all() if r.session_id == "sess_w0").request_count == 1
        other.close()
        return loop_thread

    loop_thread = asyncio.run(main())
    registry.close()
    kinds = [k for k, _ in store.threads]
    assert kinds == ["put", "put", "put", "touch", "delete"]
    writer_threads = {t for _, t in store.threads}
    assert loop_thread not in writer_threads
    assert len(writer_threads) == 1  # one writer, so writes keep their order
