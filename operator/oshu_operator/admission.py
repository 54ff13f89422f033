"""Admission: find the pod's session, run the rules (rules.py), plan the injection, answer.

Called from the kopf mutating handlers in handlers.py. Sessions come from an in-memory
index (kopf.index) so most admissions make no API call; a miss or a session without
tokens yet (applied together with the pod) falls back to a live read, waiting briefly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

import kopf

from . import injection, rules
from . import names as n
from .config import OperatorConfig
from .injection import Plan
from .kube import Kube
from .metrics import Metrics
from .rules import NotReady, Refused, SessionView

log = logging.getLogger(__name__)

#: Refusals use 403 so `kubectl` shows "Forbidden: admission webhook ... denied the request: <why>".
REFUSED = 403
POLL = 0.2

Lookup = Callable[[str, str], SessionView | None]


class Admission:
    def __init__(self, config: OperatorConfig, kube: Kube, metrics: Metrics) -> None:
        self.config = config
        self.kube = kube
        self.metrics = metrics

    async def _session(self, namespace: str, name: str, cached: SessionView | None) -> SessionView:
        """The session, usable: from the index, else read live, waiting up to --token-wait for its tokens."""
        if cached is not None:
            try:
                cached.check_usable()
                return cached
            except NotReady:
                pass
        deadline = time.monotonic() + self.config.token_wait.total_seconds()
        while True:
            body = await self.kube.get_session(namespace, name)
            view = SessionView.from_body(body) if body is not None else None
            try:
                rules.check_session(namespace, name, view)
                assert view is not None
                return view
            except NotReady:
                if time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(POLL)

    async def inject(
        self, body: Mapping[str, Any], namespace: str | None, lookup: Lookup, dryrun: bool = False
    ) -> Plan | None:
        """The plan for this pod, None to leave it alone; raises kopf.AdmissionError to refuse."""
        try:
            if not self.config.injectable_namespace(namespace):
                self.metrics.injections.labels("skipped").inc()
                return None
            assert namespace is not None
            name = injection.session_name_of(body)
            if name is None:
                self.metrics.injections.labels("skipped").inc()
                return None
            session = await self._session(namespace, name, lookup(namespace, name))
            result = injection.plan(body, session, self.config)
        except NotReady as e:
            self._refuse("not_ready", body, namespace, e)
        except Refused as e:
            self._refuse("refused", body, namespace, e)
        self.metrics.injections.labels("injected").inc()
        if not dryrun:
            log.info(
                "pod injected",
                extra={
                    "namespace": namespace,
                    "pod": _pod_name(body),
                    "session": name,
                    "containers": result.record["containers"],
                },
            )
        return result

    async def check_update(
        self,
        body: Mapping[str, Any],
        old: Mapping[str, Any] | None,
        namespace: str | None,
        lookup: Lookup,
        subresource: str | None = None,
    ) -> None:
        """Run the admission rules on an update of an injected pod.

        `pods/ephemeralcontainers`: the same rules as for pods, on the pod as it will be stored,
        keeping the findings about the ephemeral containers the update adds (the rest of a pod
        spec cannot change there). `pods` itself: an update can change container images, so the
        proxy container must stay as injected. The session comes from the pod's session volume
        (immutable), not from the label an update may have removed; if it cannot be read, every
        Secret counts as a real key's.
        """
        spec = body.get("spec") or {}
        if not self.config.injectable_namespace(namespace):
            return
        assert namespace is not None
        if not any(
            c.get("name") == n.SIDECAR_CONTAINER
            for pod in (body, old or {})
            for c in (pod.get("spec") or {}).get("initContainers") or []
        ):
            return  # not injected (container names cannot change, so old and new agree)
        name = injection.injected_session_of(spec) or ""  # "" (no session volume): unknown, fail closed
        if subresource is None:
            subject = rules.Subject(pod=body, namespace=namespace, session_name=name, session=None, old=old)
            findings = rules.update_findings(subject)
        else:
            before = {c.get("name") for c in ((old or {}).get("spec") or {}).get(rules.KIND_EPHEMERAL) or []}
            added = {c.get("name") for c in spec.get(rules.KIND_EPHEMERAL) or []} - before
            if not added:
                return
            session = lookup(namespace, name)
            if session is None and name:
                found = await self.kube.get_session(namespace, name)
                session = SessionView.from_body(found) if found is not None else None
            subject = rules.Subject(
                pod=body,
                namespace=namespace,
                session_name=name,
                session=session,
                injected_volumes=injection.volumes(n.session_secret_name(name)),
                old=old,
                # The pod's own rules decide (the session's enforcement may have changed since).
                enforcement=n.ENFORCEMENT_REDIRECT
                if any(c.get("name") == n.NETRULES_CONTAINER for c in spec.get("initContainers") or [])
                else n.ENFORCEMENT_PROXY,
            )
            findings = rules.ephemeral_findings(subject, added)
        if findings:
            self._refuse("refused", body, namespace, Refused(findings))

    def _refuse(self, result: str, body: Mapping[str, Any], namespace: str | None, refused: Refused) -> NoReturn:
        """Count (by result and by rule), log (INFO: a refusal is the webhook doing its job), answer."""
        self.metrics.injections.labels(result).inc()
        for rule_id in refused.rule_ids:
            self.metrics.refusals.labels(rule_id).inc()
        log.info(
            "pod refused",
            extra={
                "namespace": namespace,
                "pod": _pod_name(body),
                "result": result,
                "rules": list(refused.rule_ids),
                "detail": str(refused),
            },
        )
        raise kopf.AdmissionError(str(refused), code=REFUSED) from None


def _pod_name(body: Mapping[str, Any]) -> str:
    meta = body.get("metadata") or {}
    return meta.get("name") or f"{meta.get('generateName', '')}*"
