"""Turns a VaultSession into its session Secret and status; revokes it on expiry and deletion.

Level-triggered: `reconcile()` reads the current VaultSession and the Secrets it references
and converges, whatever woke it up (kopf create/update/resume, a referenced Secret changing,
the ttl running out, a periodic resync). One lock per session serialises those callers.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Awaitable, Callable, Mapping

from kubernetes_asyncio.client.exceptions import ApiException
from oshu_contract.session import (SecretBinding, Session, SessionError, format_time, new_binding, new_session,
                                   parse_time, recorded_tokens)

from . import events, material
from . import names as n
from .config import OperatorConfig, revocation_grace_problem
from .kube import Kube
from .metrics import Metrics
from .spec import SessionSpec, SpecError, check_session_name, parse_spec
from .status import Outcome, changed, ready_condition, status_patch

log = logging.getLogger(__name__)

Key = tuple[str, str]
ANNOTATION_REVOKED_AT = n.ANNOTATION_REVOKED_AT
RETRY_DELAYS = (1, 2, 5, 10, 30, 60)


class RetryLater(Exception):
    """Transient failure (API error, write conflict): try again after `delay` seconds."""

    def __init__(self, message: str, delay: float) -> None:
        super().__init__(message)
        self.delay = delay


@dataclass(frozen=True, slots=True)
class Resolved:
    bindings: list[SecretBinding]
    problems: list[tuple[str, str]]  # (reason, message)


session_secret_name = n.session_secret_name  # built in names.py only


def _owned_by(secret: Mapping[str, Any], uid: str) -> bool:
    return any(o.get("uid") == uid for o in (secret.get("metadata") or {}).get("ownerReferences") or [])


def revoked_message(secret_name: str, grace: timedelta) -> str:
    """The Revoked event: when the Secret goes, and a warning when that may beat the kubelet."""
    problem = revocation_grace_problem(grace)
    return f"session revoked; Secret {secret_name} is deleted after {int(grace.total_seconds())}s" + (
        f" (warning: {problem})" if problem else ""
    )


def _session_id(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


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
        except Exception:  # noqa: BLE001 - keep the operator serving; retried by resync
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
            except (OSError, asyncio.TimeoutError) as e:
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
        body = await self.kube.get_session(namespace, name)
        if body is None:
            self.forget(namespace, name)
            return None
        meta = body["metadata"]
        if meta.get("deletionTimestamp"):
            return None  # the deletion handler revokes
        now = material.utcnow()
        status = body.get("status") or {}
        secret_name = session_secret_name(name)
        existing = await self.kube.get_secret(namespace, secret_name)
        if existing is not None and not _owned_by(existing, meta["uid"]):
            # Left over from an earlier session of the same name: reuse nothing from it.
            existing = dict(existing, data={})
        old_file = material.decode_data((existing or {}).get("data"), n.KEY_SESSION_FILE)

        try:
            check_session_name(name)
            spec = parse_spec(body.get("spec"))
        except SpecError as e:
            tokens = {k: v for k, v in (status.get("tokens") or {}).items() if isinstance(v, str)}
            outcome = Outcome(n.PHASE_INVALID, "InvalidSpec", str(e), tokens=tokens, secret_name=secret_name,
                              declared=len((body.get("spec") or {}).get("secrets") or []))
            session = Session(session=_session_id(namespace, name), secrets=(), revoked=False)
            await self._write_secret(body, existing, session, spec_hosts=(), expires_at=None, now=now)
            return await self._finish(body, outcome, now)

        tokens = material.stable_tokens(spec.names, status.get("tokens"), recorded_tokens(old_file))
        created = parse_time(meta["creationTimestamp"], "creationTimestamp")
        expires_at = created + spec.ttl if spec.ttl is not None else None

        if expires_at is not None and now >= expires_at:
            session = Session(session=_session_id(namespace, name), secrets=(), expires_at=expires_at,
                              egress=spec.egress, revoked=True)
            ca = await self._write_secret(body, existing, session, spec.intercepted_hosts, expires_at, now)
            outcome = Outcome(n.PHASE_EXPIRED, "Expired", f"session expired at {format_time(expires_at)} (ttl {spec.ttl})",
                              tokens=tokens, secret_name=secret_name, expires_at=expires_at,
                              ca_expires_at=ca.not_after, resolved=0, declared=len(spec.secrets))
            return await self._finish(body, outcome, now)

        resolved = await self._resolve(namespace, spec, tokens)
        session = new_session(_session_id(namespace, name), resolved.bindings, expires_at=expires_at,
                              egress=spec.egress)
        ca = await self._write_secret(body, existing, session, spec.intercepted_hosts, expires_at, now)
        if resolved.problems:
            reason = resolved.problems[0][0]
            message = "; ".join(m for _, m in resolved.problems)
            phase = n.PHASE_PENDING
        else:
            reason, phase = "SessionReady", n.PHASE_READY
            message = f"{len(spec.secrets)} sealed secret(s) ready in Secret {secret_name}"
        outcome = Outcome(phase, reason, message, tokens=tokens, secret_name=secret_name, expires_at=expires_at,
                          ca_expires_at=ca.not_after, resolved=len(resolved.bindings), declared=len(spec.secrets))
        result = await self._finish(body, outcome, now)
        if expires_at is not None:
            self.trigger(namespace, name, delay=(expires_at - material.utcnow()).total_seconds() + 0.05)
        # Level-triggered safety net; also where a CA with a third of its life left is renewed.
        self.trigger(namespace, name, delay=self.config.resync_interval.total_seconds())
        return result

    async def _resolve(self, namespace: str, spec: SessionSpec, tokens: Mapping[str, str]) -> Resolved:
        """Read each referenced Secret key; missing or unusable ones become problems, never errors."""
        cache: dict[str, dict[str, Any] | None] = {}
        bindings: list[SecretBinding] = []
        problems: list[tuple[str, str]] = []
        for s in spec.secrets:
            if s.secret_name not in cache:
                cache[s.secret_name] = await self.kube.get_secret(namespace, s.secret_name)
            secret = cache[s.secret_name]
            if secret is None:
                problems.append(("SecretNotFound", f"Secret {s.secret_name} (for {s.name}) not found"))
                continue
            raw = (secret.get("data") or {}).get(s.key)
            if raw is None:
                problems.append(("SecretKeyNotFound", f"Secret {s.secret_name} has no key {s.key} (for {s.name})"))
                continue
            try:
                value = base64.b64decode(raw, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                problems.append(("SecretValueInvalid", f"Secret {s.secret_name} key {s.key} (for {s.name}) is not UTF-8 text"))
                continue
            # `kubectl create secret --from-file` keeps the file's final newline; it is never part of a key.
            value = value.removesuffix("\n").removesuffix("\r")
            try:  # the session file's own checks, through the contract's constructor
                binding = new_binding(s.name, tokens[s.name], value, s.hosts, s.locations)
            except SessionError as e:
                problems.append(("SecretValueInvalid", f"Secret {s.secret_name} key {s.key}: {e}"))
                continue
            bindings.append(binding)
        return Resolved(bindings, problems)

    async def _write_secret(self, body: Mapping[str, Any], existing: Mapping[str, Any] | None, session: Session,
                            spec_hosts: Any, expires_at: datetime | None, now: datetime) -> material.CAState:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        old = (existing or {}).get("data") or {}
        ca = material.choose_ca(
            material.stored_ca(old),
            common_name=f"oshu-vault session {namespace}/{name}", hosts=spec_hosts, expires_at=expires_at,
            now=now, default_validity=self.config.ca_validity,
        )
        data = material.secret_data(session.to_json(), ca.pair, self.config.sidecar.upstream_ca_pem)
        labels = {n.LABEL_MANAGED_BY: n.MANAGED_BY, n.LABEL_SESSION_OWNER: name}
        owner = {"apiVersion": n.API_VERSION, "kind": n.KIND, "name": name, "uid": meta["uid"], "controller": True}
        desired = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": n.SESSION_SECRET_TYPE,
            "metadata": {"name": session_secret_name(name), "namespace": namespace, "labels": labels,
                         "ownerReferences": [owner]},
            "data": data,
        }
        if existing is None:
            try:
                await self.kube.create_secret(namespace, desired)
            except ApiException as e:
                if e.status == 409:
                    raise RetryLater("session Secret appeared concurrently", 0.2) from None
                raise
            log.info("session secret created", extra={"session": f"{namespace}/{name}"})
            return ca
        emeta = existing.get("metadata") or {}
        same = (old == data and (emeta.get("labels") or {}).get(n.LABEL_SESSION_OWNER) == name
                and _owned_by(existing, meta["uid"]))
        if not same:
            desired["metadata"]["resourceVersion"] = emeta.get("resourceVersion")
            try:
                await self.kube.replace_secret(namespace, desired["metadata"]["name"], desired)
            except ApiException as e:
                if e.status == 409:
                    raise RetryLater("session Secret changed concurrently", 0.2) from None
                raise
            log.info("session secret updated", extra={"session": f"{namespace}/{name}", "ca_minted": ca.minted})
        return ca

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
        prev = ready_condition(old) or {}
        if (prev.get("reason"), prev.get("message")) != (outcome.reason, outcome.message):
            await self.post_event(body, "Normal" if outcome.ready else "Warning", outcome.reason, outcome.message)
            log.info("session %s", outcome.phase.lower(),
                     extra={"session": f"{namespace}/{name}", "reason": outcome.reason, "detail": outcome.message})
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
            now = material.utcnow()
            if existing is not None:
                ann = (existing.get("metadata") or {}).get("annotations") or {}
                revoked_at = ann.get(ANNOTATION_REVOKED_AT)
                if revoked_at is None:
                    data = dict(existing.get("data") or {})
                    session = Session(session=_session_id(namespace, name), secrets=(), revoked=True)
                    data[n.KEY_SESSION_FILE] = base64.b64encode(session.to_json()).decode("ascii")
                    existing = dict(existing)
                    existing["data"] = data
                    existing["metadata"] = dict(existing["metadata"], annotations={**ann, ANNOTATION_REVOKED_AT: format_time(now)})
                    try:
                        await self.kube.replace_secret(namespace, secret_name, existing)
                    except ApiException as e:
                        if e.status == 409:
                            raise RetryLater("session Secret changed concurrently", 0.2) from None
                        raise
                    log.info("session revoked", extra={"session": f"{namespace}/{name}"})
                    await self.post_event(body, "Normal", "Revoked", revoked_message(secret_name, self.config.revocation_grace))
                    revoked = now
                else:
                    revoked = parse_time(revoked_at, ANNOTATION_REVOKED_AT)
                remaining = (revoked + self.config.revocation_grace - now).total_seconds()
                if remaining > 0:
                    return remaining
                await self.kube.delete_secret(namespace, secret_name)
            self.forget(namespace, name)
            return 0.0

