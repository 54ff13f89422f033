"""Turns a VaultSession into its session Secret and status; revokes it on expiry and deletion.

Level-triggered: `reconcile()` reads the current VaultSession and the Secrets it references
and converges, whatever woke it up (kopf create/update/resume, a referenced Secret changing,
the ttl running out, a periodic resync). One lock per session serialises those callers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from . import events, material
from . import names as n
from . import reconcile_plan as rp
from .config import OperatorConfig
from .kube import Kube
from .metrics import Metrics
from .status import Outcome, changed, status_patch

log = logging.getLogger(__name__)

Key = tuple[str, str]
ANNOTATION_REVOKED_AT = n.ANNOTATION_REVOKED_AT
RETRY_DELAYS = (1, 2, 5, 10, 30, 60)


class RetryLater(Exception):
    """Transient failure (API error, write conflict): try again after `delay` seconds."""

    def __init__(self, message: str, delay: float) -> None:
        super().__init__(message)
        self.delay = delay


session_secret_name = n.session_secret_name  # built in names.py only
revoked_message = rp.revoked_message  # the decisions live in reconcile_plan.py


class Reconciler:
    def __init__(self, config: OperatorConfig, kube: Kube, metrics: Metrics) -> None:
        self.config = config
        self.kube = kube
        self.metrics = metrics
        self._locks: dict[Key, asyncio.Lock] = {}
        self._timers: dict[Key, tuple[float, asyncio.TimerHandle]] = {}
        self._failures: dict[Key, int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        # Bounds the work in flight (each reconcile moves a ~300 KiB Secret): without it an
        # operator restart would resume every session at once.
        self._slots = asyncio.Semaphore(config.max_concurrent_reconciles)
        self.post_event: Callable[..., Awaitable[None]] = lambda *a, **k: events.post(self.kube, *a, **k)

    # --- scheduling -----------------------------------------------------------------------
    def trigger(self, namespace: str, name: str, delay: float = 0.0) -> None:
        """Reconcile soon (in the background); an earlier pending run wins over a later one."""
        key = (namespace, name)
        loop = asyncio.get_running_loop()
        when = loop.time() + max(0.0, delay)
        pending = self._timers.get(key)
        if pending is not None:
            if pending[0] <= when:
                return
            pending[1].cancel()
        self._timers[key] = (when, loop.call_at(when, self._fire, key))

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        task = asyncio.ensure_future(self._background(key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _background(self, key: Key) -> None:
        try:
            await self.reconcile(*key)
        except RetryLater as e:
            self.trigger(*key, delay=e.delay)
        except Exception:  # keep the operator serving; retried after the longest backoff
            log.exception("background reconcile failed", extra={"session": "/".join(key)})
            self.trigger(*key, delay=RETRY_DELAYS[-1])

    def forget(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        pending = self._timers.pop(key, None)
        if pending:
            pending[1].cancel()
        self._failures.pop(key, None)
        self.metrics.set_phase(key, None)
        lock = self._locks.get(key)
        if lock is not None and not lock.locked():
            self._locks.pop(key, None)

    async def close(self) -> None:
        for _, handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _lock(self, key: Key) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    # --- reconcile -------------------------------------------------------------------------
    async def reconcile(self, namespace: str, name: str) -> Outcome | None:
        key = (namespace, name)
        started = time.perf_counter()
        async with self._lock(key), self._slots:
            try:
                outcome = await self._reconcile(namespace, name)
            except RetryLater as e:
                self._count_failure(key, type(e).__name__)
                raise
            except ApiException as e:
                self._count_failure(key, f"ApiException{e.status}")
                raise RetryLater(f"Kubernetes API error {e.status} {e.reason}", self._backoff(key)) from None
            except (TimeoutError, OSError) as e:
                self._count_failure(key, type(e).__name__)
                raise RetryLater(f"Kubernetes API unreachable: {type(e).__name__}", self._backoff(key)) from None
            finally:
                self.metrics.reconcile_seconds.observe(time.perf_counter() - started)
        self._failures.pop(key, None)
        self.metrics.reconciles.labels("ok").inc()
        return outcome

    def _count_failure(self, key: Key, error: str) -> None:
        self.metrics.reconciles.labels("error").inc()
        self.metrics.reconcile_errors.labels(error).inc()

    def _backoff(self, key: Key) -> float:
        count = self._failures.get(key, 0)
        self._failures[key] = count + 1
        return RETRY_DELAYS[min(count, len(RETRY_DELAYS) - 1)]

    async def _reconcile(self, namespace: str, name: str) -> Outcome | None:
        """Read, plan (reconcile_plan.plan: every decision), write the Secret, the status, wake-ups."""
        body = await self.kube.get_session(namespace, name)
        if body is None:
            self.forget(namespace, name)
            return None
        if body["metadata"].get("deletionTimestamp"):
            return None  # the deletion handler revokes
        now = material.utcnow()
        existing = await self.kube.get_secret(namespace, session_secret_name(name))
        referenced = {s: await self.kube.get_secret(namespace, s) for s in rp.secrets_to_read(body, now)}
        plan = rp.plan(body, existing, referenced, now, self.config)
        await self._write_secret(body, existing, plan)
        result = await self._finish(body, plan.outcome, now)
        for delay in rp.requeue_delays(plan, material.utcnow(), self.config.resync_interval):
            self.trigger(namespace, name, delay=delay)
        return result

    async def _write_secret(self, body: Mapping[str, Any], existing: Mapping[str, Any] | None, plan: rp.Plan) -> None:
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        action, desired = rp.secret_write(existing, plan.secret, body["metadata"]["uid"])
        try:
            if action == "create":
                await self.kube.create_secret(namespace, desired)
            elif action == "replace":
                await self.kube.replace_secret(namespace, desired["metadata"]["name"], desired)
        except ApiException as e:
            if e.status == 409:
                raise RetryLater(
                    f"session Secret {'appeared' if action == 'create' else 'changed'} concurrently", 0.2
                ) from None
            raise
        if action == "create":
            log.info("session secret created", extra={"session": f"{namespace}/{name}"})
        elif action == "replace":
            log.info("session secret updated", extra={"session": f"{namespace}/{name}", "ca_minted": plan.ca_minted})

    async def _finish(self, body: Mapping[str, Any], outcome: Outcome, now: datetime) -> Outcome:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        old = body.get("status") or {}
        patch = status_patch(old, outcome, meta.get("generation", 0), now)
        if changed(old, patch):
            try:
                await self.kube.patch_session_status(namespace, name, patch)
            except ApiException as e:
                if e.status == 404:
                    return outcome
                raise
        event = rp.event_for(old, outcome)
        if event is not None:
            await self.post_event(body, *event)
            log.info(
                "session %s",
                outcome.phase.lower(),
                extra={"session": f"{namespace}/{name}", "reason": outcome.reason, "detail": outcome.message},
            )
        self.metrics.set_phase((namespace, name), outcome.phase)
        return outcome

    # --- revocation ------------------------------------------------------------------------
    async def revoke(self, namespace: str, name: str, body: Mapping[str, Any]) -> float:
        """Mark the session file revoked; delete the Secret once kubelets had time to sync it.

        Returns the seconds still to wait (0 when the Secret is gone and deletion may proceed).
        """
        key = (namespace, name)
        async with self._lock(key), self._slots:
            secret_name = session_secret_name(name)
            existing = await self.kube.get_secret(namespace, secret_name)
            step = rp.revocation_step(existing, namespace, name, material.utcnow(), self.config.revocation_grace)
            if step.marked is not None:
                try:
                    await self.kube.replace_secret(namespace, secret_name, step.marked)
                except ApiException as e:
                    if e.status == 409:
                        raise RetryLater("session Secret changed concurrently", 0.2) from None
                    raise
                log.info("session revoked", extra={"session": f"{namespace}/{name}"})
                await self.post_event(
                    body, "Normal", "Revoked", revoked_message(secret_name, self.config.revocation_grace)
                )
            if step.remaining > 0:
                return step.remaining
            if step.delete:
                await self.kube.delete_secret(namespace, secret_name)
            self.forget(namespace, name)
            return 0.0
