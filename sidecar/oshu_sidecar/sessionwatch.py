"""Session file watching: reload on change, revoke on deletion, keep the last good session.

Polls `os.stat` of the path (following symlinks), which sees ordinary rewrites as well
as Kubernetes' atomic `..data` symlink swap of a mounted Secret (the resolved inode
changes). A poll is a single stat call, so a 0.5 s interval costs nothing and the
2-second reload promise holds without inotify.

- changed and valid   -> new policy (open connections keep going; each request uses the new one)
- changed and invalid -> keep serving the last good session, log an error, set a metric
- deleted             -> revoke (the last good session's tokens get 403s)
- `"revoked": true`   -> revoke

Values a reload drops (a rotated key) stay scrubbed from responses: an upstream may still
echo one it stored (the last MAX_RETIRED are kept).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable

from oshu_contract.session import Session, SessionError, load_session_file

from .logs import log
from .policy import Policy

Signature = tuple[int, int, int, int]
#: Values of secrets dropped by a reload that are still scrubbed from responses (oldest forgotten first).
MAX_RETIRED = 16


def file_signature(path: str) -> Signature | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class SessionWatcher:
    """Owns the current Policy; calls `on_change(policy)` whenever it is replaced."""

    def __init__(
        self,
        path: str,
        on_change: Callable[[Policy], None],
        interval: float = 0.5,
        on_result: Callable[[str], None] | None = None,
    ) -> None:
        self.path = path
        self.on_change = on_change
        self.on_result = on_result or (lambda result: None)
        self.interval = interval
        self.signature: Signature | None = None
        self.last_good: Session | None = None
        self.policy: Policy | None = None
        self.load_error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._was_expired = False
        self.retired: dict[bytes, tuple[bytes, bytes, str]] = {}  # value -> (value, sealed, name)
        #: Further checks run on the same tick (the CA files live in the same mounted Secret).
        self.also_poll: list[Callable[[], None]] = []

    def load_initial(self) -> Policy:
        """First load; raises SessionError (the caller exits non-zero) if unusable."""
        self.signature = file_signature(self.path)
        if self.signature is None:
            raise SessionError(f"session file {self.path} does not exist")
        session = load_session_file(self.path)
        self.on_result("ok")
        return self._install(session, None)

    def _install(self, session: Session, revoked_reason: str | None) -> Policy:
        if self.last_good is not None:
            for s in self.last_good.secrets:  # (re)inserted at the newest end
                value = s.value.encode()
                self.retired.pop(value, None)
                self.retired[value] = (value, s.sealed.encode(), s.name)
            for s in session.secrets:  # still (or again) a secret of the session
                self.retired.pop(s.value.encode(), None)
            while len(self.retired) > MAX_RETIRED:
                del self.retired[next(iter(self.retired))]
        self.last_good = session
        self.policy = Policy(session, revoked_reason, tuple(self.retired.values()))
        self._was_expired = False
        self.on_change(self.policy)
        return self.policy

    def poll(self) -> None:
        """Check the file once and react to any change."""
        sig = file_signature(self.path)
        if sig == self.signature:
            self._check_expiry()
            return
        self.signature = sig
        assert self.last_good is not None
        if sig is None:
            log(
                logging.WARNING, "session file deleted: session revoked", session=self.last_good.session, path=self.path
            )
            self.load_error = None
            self.on_result("deleted")
            self._install(self.last_good, f"session {self.last_good.session} was revoked (session file deleted)")
            return
        try:
            session = load_session_file(self.path)
        except SessionError as e:
            self.load_error = str(e)
            self.on_result("error")
            log(
                logging.ERROR,
                "session file change rejected; still serving the last good session",
                session=self.last_good.session,
                error=str(e),
            )
            return
        self.load_error = None
        self.on_result("ok")
        policy = self._install(session, None)
        if policy.revoked_reason is not None:
            log(logging.WARNING, "session revoked", session=session.session)
        else:
            log(
                logging.INFO,
                "session reloaded",
                session=session.session,
                secrets=[s.name for s in session.secrets],
                expires_at=session.to_dict().get("expiresAt"),
            )

    def _check_expiry(self) -> None:
        policy = self.policy
        if policy is None or self._was_expired or policy.expires_at is None:
            return
        refusal = policy.inactive()
        if refusal is not None and refusal.code == "session_expired":
            self._was_expired = True
            log(logging.WARNING, "session expired", session=policy.name)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            for poll in (self.poll, *self.also_poll):
                try:
                    poll()
                except Exception:  # never let the watcher die: the proxy must keep its last good state
                    logging.getLogger("oshu.sidecar").exception("session watcher poll failed")

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
