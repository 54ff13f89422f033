"""Admission: find the pod's session, plan the injection, answer the API server.

Called from the kopf mutating handlers in handlers.py. Sessions come from an in-memory
index (kopf.index) so most admissions make no API call; a miss or a session without
tokens yet (applied together with the pod) falls back to a live read, waiting briefly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Mapping, NoReturn

import kopf

from . import injection
from . import names as n
from .config import OperatorConfig
from .injection import NotReady, Plan, Refused, SessionView
from .kube import Kube
from .metrics import Metrics

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
        if cached is not None:
            try:
                cached.check_usable()
                return cached
            except NotReady:
                pass
        deadline = time.monotonic() + self.config.token_wait.total_seconds()
        while True:
            body = await self.kube.get_session(namespace, name)
            if body is None:
                raise Refused(f"VaultSession {namespace}/{name} does not exist; create it first "
                              f"(kubectl get {n.SHORT_NAMES[0]} -n {namespace} lists the sessions)")
            view = SessionView.from_body(body)
            try:
                view.check_usable()
                return view
            except NotReady:
                if time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(POLL)

    async def inject(self, body: Mapping[str, Any], namespace: str | None, lookup: Lookup,
                     dryrun: bool = False) -> Plan | None:
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
        except Refused as e:
            self._refuse("refused", body, namespace, str(e))
        except NotReady as e:
            self._refuse("not_ready", body, namespace, str(e))
        self.metrics.injections.labels("injected").inc()
        if not dryrun:
            log.info("pod injected", extra={"namespace": namespace, "pod": _pod_name(body),
                                            "session": name, "containers": result.record["containers"]})
        return result

    def check_ephemeral(self, body: Mapping[str, Any], old: Mapping[str, Any] | None, namespace: str | None) -> None:
        """Refuse debug containers that could read the proxy's memory or the session Secret."""
        spec = body.get("spec") or {}
        if not self.config.injectable_namespace(namespace):
            return
        if not any(c.get("name") == n.SIDECAR_CONTAINER for c in spec.get("initContainers") or []):
            return
        before = {c.get("name") for c in ((old or {}).get("spec") or {}).get("ephemeralContainers") or []}
        session_vols = {v.get("name") for v in spec.get("volumes") or []
                        if v.get("name") == n.VOLUME_SESSION}
        for c in spec.get("ephemeralContainers") or []:
            if c.get("name") in before:
                continue
            why = None
            if c.get("targetContainerName") == n.SIDECAR_CONTAINER:
                why = f"targets the {n.SIDECAR_CONTAINER} container, whose memory holds the real keys"
            elif any(m.get("name") in session_vols for m in c.get("volumeMounts") or []):
                why = "mounts the session Secret, which holds the real keys"
            if why:
                self._refuse("refused", body, namespace,
                             f"ephemeral container {c.get('name')} {why}; debug an app container instead")

    def _refuse(self, result: str, body: Mapping[str, Any], namespace: str | None, why: str) -> NoReturn:
        """Count, log (INFO: a refusal is the webhook doing its job) and answer the API server."""
        self.metrics.injections.labels(result).inc()
        log.info("pod refused", extra={"namespace": namespace, "pod": _pod_name(body), "result": result,
                                       "detail": why})
        raise kopf.AdmissionError(why, code=REFUSED) from None


def _pod_name(body: Mapping[str, Any]) -> str:
    meta = body.get("metadata") or {}
    return meta.get("name") or f"{meta.get('generateName', '')}*"
