"""The kopf handlers: small, each delegating to the reconciler or the admission logic.

Built per Runtime into a registry of their own (no module-level global state), so tests
and embedders can run several operators in one process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import kopf

from . import names as n
from .injection import SessionView
from .reconciler import RetryLater
from .runtime import Runtime

SESSIONS = (n.GROUP, n.VERSION, n.PLURAL)
#: What the revoke handler tells kopf while a revoked session waits out --revocation-grace.
REVOCATION_WAIT = "session revoked; waiting for kubelets to sync it into running pods"
#: Outcomes kopf would log as errors that are the operator working as designed (logs.ExpectedOutcomes).
REFUSING_WEBHOOKS = (n.WEBHOOK_HANDLER_ID, n.EPHEMERAL_HANDLER_ID)
WAITING_HANDLERS = {n.REVOKE_HANDLER_ID: REVOCATION_WAIT}

log = logging.getLogger(__name__)


def build_registry(rt: Runtime) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    _lifecycle(registry, rt)
    _sessions(registry, rt)
    _admission(registry, rt)
    return registry


def _lifecycle(registry: kopf.OperatorRegistry, rt: Runtime) -> None:
    """Login, startup and cleanup of the Runtime."""

    @kopf.on.login(id="login", registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return rt.connection_info(**kwargs)

    @kopf.on.startup(id="configure", registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        await rt.configure(settings)

    @kopf.on.cleanup(id="cleanup", registry=registry)
    async def cleanup(**_: Any) -> None:
        await rt.cleanup()


def _sessions(registry: kopf.OperatorRegistry, rt: Runtime) -> None:
    """The indices (sessions for admission, which sessions use which Secret) and the reconcile,
    revoke and Secret-changed handlers."""

    # Indexers and handlers are all coroutines: sync ones would run in kopf's thread pool.
    @kopf.index(*SESSIONS, id="sessions", registry=registry)
    async def sessions(body: kopf.Body, namespace: str, name: str, **_: Any) -> dict[Any, SessionView]:
        return {(namespace, name): SessionView.from_body(body)}

    @kopf.index(*SESSIONS, id="sessions_by_secret", registry=registry)
    async def sessions_by_secret(spec: kopf.Spec, namespace: str, name: str, **_: Any) -> dict[Any, str]:
        refs = {(s.get("secretKeyRef") or {}).get("name") for s in spec.get("secrets") or []}
        return {(namespace, ref): name for ref in refs if isinstance(ref, str)}

    @kopf.on.resume(*SESSIONS, id="reconcile", registry=registry)
    @kopf.on.create(*SESSIONS, id="reconcile", registry=registry)
    @kopf.on.update(*SESSIONS, id="reconcile", field="spec", registry=registry)
    async def reconcile(namespace: str, name: str, **_: Any) -> None:
        try:
            await rt.reconciler.reconcile(namespace, name)
        except RetryLater as e:
            raise kopf.TemporaryError(str(e), delay=e.delay) from None

    @kopf.on.delete(*SESSIONS, id=n.REVOKE_HANDLER_ID, registry=registry)
    async def revoke(body: kopf.Body, namespace: str, name: str, **_: Any) -> None:
        try:
            remaining = await rt.reconciler.revoke(namespace, name, body)
        except RetryLater as e:
            raise kopf.TemporaryError(str(e), delay=e.delay) from None
        if remaining > 0:
            log.info(
                "revoked session kept for kubelets",
                extra={"session": f"{namespace}/{name}", "delete_in_seconds": round(remaining, 1)},
            )
            raise kopf.TemporaryError(REVOCATION_WAIT, delay=remaining)

    @kopf.on.event("", "v1", "secrets", id="secret_changed", registry=registry)
    async def secret_changed(namespace: str, name: str, sessions_by_secret: kopf.Index[Any, str], **_: Any) -> None:
        for session in set(sessions_by_secret.get((namespace, name), ())):
            rt.reconciler.trigger(namespace, session)


def _lookup(sessions: kopf.Index[Any, SessionView]) -> Callable[[str, str], SessionView | None]:
    """The admission code's view of the sessions index: (namespace, name) -> the session, if any."""

    def lookup(ns: str, name: str) -> SessionView | None:
        return next(iter(sessions.get((ns, name), ())), None)

    return lookup


def _admission(registry: kopf.OperatorRegistry, rt: Runtime) -> None:
    """The mutating webhook's handlers: injection into new pods, checks of updates to injected ones."""

    @kopf.on.mutate("", "v1", "pods", id=n.WEBHOOK_HANDLER_ID, operations=["CREATE"], registry=registry)
    async def inject(
        body: kopf.Body,
        namespace: str | None,
        patch: kopf.Patch,
        warnings: list[str],
        sessions: kopf.Index[Any, SessionView],
        **kwargs: Any,
    ) -> None:
        dryrun = bool(kwargs["dryrun"])  # (kopf passes it by name to every admission handler)
        plan = await rt.admission.inject(dict(body), namespace, _lookup(sessions), dryrun=dryrun)
        if plan is not None:
            warnings.extend(plan.warnings)
            patch.fns.append(plan.apply)

    # Updates of injected pods: ephemeral containers (subresource) and in-place changes (images).
    @kopf.on.mutate(
        "", "v1", "pods", id=n.EPHEMERAL_HANDLER_ID, subresource="*", operations=["UPDATE"], registry=registry
    )
    async def ephemeral(
        body: kopf.Body,
        old: kopf.Body | None,
        namespace: str | None,
        subresource: str | None,
        sessions: kopf.Index[Any, SessionView],
        **_: Any,
    ) -> None:
        if subresource not in (None, "ephemeralcontainers"):
            return
        await rt.admission.check_update(
            dict(body), dict(old) if old is not None else None, namespace, _lookup(sessions), subresource
        )
