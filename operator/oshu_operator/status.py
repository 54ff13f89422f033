"""A reconcile's outcome and how it is written to `.status` (conditions with observedGeneration)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from oshu_contract.session import format_time

from .names import CONDITION_READY, PHASE_READY


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one reconcile concluded. Messages name secrets and keys, never values."""

    phase: str
    reason: str
    message: str
    tokens: Mapping[str, str] = field(default_factory=dict)
    secret_name: str | None = None
    expires_at: datetime | None = None
    ca_expires_at: datetime | None = None
    resolved: int = 0
    declared: int = 0

    @property
    def ready(self) -> bool:
        return self.phase == PHASE_READY


def ready_condition(status: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    for cond in (status or {}).get("conditions") or []:
        if isinstance(cond, Mapping) and cond.get("type") == CONDITION_READY:
            return cond
    return None


def status_patch(old: Mapping[str, Any] | None, outcome: Outcome, generation: int, now: datetime) -> dict[str, Any]:
    """A JSON merge patch for `.status`; tokens of removed secrets are deleted (null)."""
    prev = ready_condition(old)
    value = "True" if outcome.ready else "False"
    since = prev.get("lastTransitionTime") if prev and prev.get("status") == value else None
    condition = {
        "type": CONDITION_READY,
        "status": value,
        "reason": outcome.reason,
        "message": outcome.message,
        "observedGeneration": generation,
        "lastTransitionTime": since or format_time(now),
    }
    old_tokens = (old or {}).get("tokens") or {}
    tokens: dict[str, str | None] = {k: None for k in old_tokens if k not in outcome.tokens}
    tokens.update(outcome.tokens)
    return {
        "phase": outcome.phase,
        "observedGeneration": generation,
        "conditions": [condition],
        "tokens": tokens or None,
        "secretName": outcome.secret_name,
        "secrets": f"{outcome.resolved}/{outcome.declared}",
        "expiresAt": format_time(outcome.expires_at) if outcome.expires_at else None,
        "caExpiresAt": format_time(outcome.ca_expires_at) if outcome.ca_expires_at else None,
    }


def changed(old: Mapping[str, Any] | None, patch: Mapping[str, Any]) -> bool:
    """Would the patch change anything? (Avoids a write, and a watch event, per no-op reconcile.)"""
    old = old or {}
    for key, value in patch.items():
        if key == "tokens":
            if {k: v for k, v in (value or {}).items() if v is not None} != (old.get("tokens") or {}):
                return True
        elif key == "conditions":
            prev = ready_condition(old)
            new = value[0]
            if prev is None or any(prev.get(k) != new[k] for k in new if k != "lastTransitionTime"):
                return True
        elif old.get(key) != value:
            return True
    return False
