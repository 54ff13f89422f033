"""Kubernetes Events on VaultSessions: what users see in `kubectl describe`.

Posted directly (core/v1) rather than through kopf's per-object logger, so only the
messages written for users become Events. Messages name secrets, never values.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from typing import Any

from oshu_contract.session import format_time

from .kube import Kube
from .material import utcnow
from .names import EVENT_COMPONENT

log = logging.getLogger(__name__)


async def post(kube: Kube, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    """Best effort: a failed Event must never fail a reconcile."""
    meta = obj.get("metadata") or {}
    now = format_time(utcnow())
    body = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta.get('name')}.{secrets.token_hex(8)}", "namespace": meta.get("namespace")},
        "involvedObject": {
            "apiVersion": obj.get("apiVersion"),
            "kind": obj.get("kind"),
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": EVENT_COMPONENT},
        "reportingComponent": EVENT_COMPONENT,
        "reportingInstance": EVENT_COMPONENT,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    try:
        await kube.core.create_namespaced_event(meta.get("namespace"), body)
    except Exception as e:
        log.warning("could not post event", extra={"reason": reason, "error": type(e).__name__})
