"""The kopf handlers: small, each delegating to the reconciler or the admission logic.

Built per Runtime into a registry of their own (no module-level global state), so tests
and embedders can run several operators in one process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, cast

import kopf

from . import credspec
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

#: What the indices are keyed by: (namespace, name) of a session, or of a Secret.
Key = tuple[str | None, str]


def _namespace(namespace: str | None) -> str:
    """VaultSessions are namespaced: kopf's callback protocols allow None, the API never sends it."""
    if namespace is None:
        raise kopf.PermanentError("a VaultSession without a namespace")
    return namespace


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
    async def sessions(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> dict[Key, SessionView]:
        return {(namespace, name): SessionView.from_body(body)}

    @kopf.index(*SESSIONS, id="sessions_by_secret", registry=registry)
    async def sessions_by_secret(spec: kopf.Spec, namespace: str | None, name: str, **_: Any) -> dict[Key, str]:
        # secretKeyRef or secretRef, whichever the entry's kind uses
        refs = {credspec.reference_of(s) for s in spec.get("secrets") or [] if isinstance(s, Mapping)}
        return {(namespace, ref): name for ref in refs if isinstance(ref, str)}

    @kopf.on.resume(*SESSIONS, id="reconcile", registry=registry)
    @kopf.on.create(*SESSIONS, id="reconcile", registry=registry)
    @kopf.on.update(*SESSIONS, id="reconcile", field="spec", registry=registry)
    async def reconcile(namespace: str | None, name: str, **_: Any) -> None:
        try:
            await rt.reconciler.reconcile(_namespace(namespace), name)
        except RetryLater as e:
            raise kopf.TemporaryError(str(e), delay=e.delay) from None

    @kopf.on.delete(*SESSIONS, id=n.REVOKE_HANDLER_ID, registry=registry)
    async def revoke(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> None:
        try:
            remaining = await rt.reconciler.revoke(_namespace(namespace), name, body)
        except RetryLater as e:
            raise kopf.TemporaryError(str(e), delay=e.delay) from None
        if remaining > 0:
            log.info(
                "revoked session kept for kubelets",
                extra={"session": f"{namespace}/{name}", "delete_in_seconds": round(remaining, 1)},
            )
            raise kopf.TemporaryError(REVOCATION_WAIT, delay=remaining)

    @kopf.on.event("", "v1", "secrets", id="secret_changed", registry=registry)
    async def secret_changed(namespace: str | None, name: str, **kwargs: Any) -> None:
        # Indices arrive as keyword arguments named after them, outside kopf's callback protocols.
        by_secret: kopf.Index[Key, str] = kwargs["sessions_by_secret"]
        for session in set(by_secret.get((namespace, name), ())):
            rt.reconciler.trigger(_namespace(namespace), session)


def _lookup(sessions: kopf.Index[Key, SessionView]) -> Callable[[str, str], SessionView | None]:
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
        dryrun: bool,
        **kwargs: Any,
    ) -> None:
        sessions: kopf.Index[Key, SessionView] = kwargs["sessions"]  # an index, outside WebhookFn
        plan = await rt.admission.inject(dict(body), namespace, _lookup(sessions), dryrun=dryrun)
        if plan is not None:
            warnings.extend(plan.warnings)
            apply = plan.apply

            def mutate(raw: kopf.RawBody) -> None:
                apply(cast("dict[str, Any]", raw))  # kopf hands over the pod dict itself

            patch.fns.append(mutate)

    # Updates of injected pods: ephemeral containers (subresource) and in-place changes (images).
    @kopf.on.mutate(
        "", "v1", "pods", id=n.EPHEMERAL_HANDLER_ID, subresource="*", operations=["UPDATE"], registry=registry
    )
    async def ephemeral(
        body: kopf.Body,
        namespace: str | None,
        subresource: str | None,
        **kwargs: Any,
    ) -> None:
        old: kopf.Body | None = kwargs.get("old")  # UPDATE reviews: passed by name, outside WebhookFn
        sessions: kopf.Index[Key, SessionView] = kwargs["sessions"]
        if subresource not in (None, "ephemeralcontainers"):
            return
        await rt.admission.check_update(
            dict(body), dict(old) if old is not None else None, namespace, _lookup(sessions), subresource
        )
