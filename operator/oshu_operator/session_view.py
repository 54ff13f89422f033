"""The session as admission sees it: sealed tokens, names and kinds from a VaultSession's spec and
status, never a real value. What the webhook injects for each secret (env, the agent files of the
CA volume) is derived here from one table (credspec), and the admission rules check against it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from oshu_contract.kinds import Kind

from . import credspec
from . import names as n
from .spec import RedirectSpec, SpecError, parse_enforcement


@dataclass(frozen=True, slots=True)
class SessionView:
    """What admission needs from a VaultSession: tokens and names, no real values."""

    namespace: str
    name: str
    uid: str
    env_names: tuple[str, ...]
    tokens: Mapping[str, str]
    source_secrets: Mapping[str, str]  # real Secret name -> one env name it backs
    phase: str | None = None
    message: str | None = None
    deleting: bool = False
    enforcement: str | None = None  # spec.enforcement; None: the operator's default
    redirect: RedirectSpec = field(default_factory=RedirectSpec)
    kinds: Mapping[str, Kind] = field(default_factory=dict)  # secret name -> its kind (absent: static)

    @property
    def session_secret(self) -> str:
        return n.session_secret_name(self.name)

    def kind(self, name: str) -> Kind:
        return self.kinds.get(name, Kind.STATIC)

    @property
    def env(self) -> dict[str, str]:
        """Variable -> value the injection sets for the session's secrets (sealed tokens, the path of
        a gcp entry's service-account file), per kind (credspec.agent_env)."""
        return {
            var: value
            for name in self.env_names
            for var, value in credspec.agent_env(name, self.kind(name), self.tokens)
        }

    @property
    def missing_tokens(self) -> list[str]:
        """Secrets whose status tokens the injection needs but the reconciler has not minted yet."""
        return [
            name
            for name in self.env_names
            if any(t not in self.tokens for t in credspec.required_tokens(name, self.kind(name)))
        ]

    @property
    def agent_files(self) -> tuple[str, ...]:
        """Session Secret keys of the agents' files (gcp service-account JSONs), for the CA volume."""
        return tuple(n.agent_file_key(name) for name in self.env_names if self.kind(name) is Kind.GCP)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> SessionView:
        meta = body.get("metadata") or {}
        spec = body.get("spec") or {}
        status = body.get("status") or {}
        entries = [s for s in spec.get("secrets") or [] if isinstance(s, Mapping) and isinstance(s.get("name"), str)]
        sources: dict[str, str] = {}
        for s in entries:
            ref = credspec.reference_of(s)  # secretKeyRef or secretRef, whichever the kind uses
            if ref is not None:
                sources.setdefault(ref, s["name"])
        cond: Mapping[str, Any] = next(
            (c for c in status.get("conditions") or [] if c.get("type") == n.CONDITION_READY), {}
        )
        phase, message = status.get("phase"), cond.get("message")
        try:
            enforcement, redirect = parse_enforcement(spec)
        except SpecError as e:  # the CRD prevents it; if not, refuse as the reconciler would
            enforcement, redirect, phase, message = None, RedirectSpec(), n.PHASE_INVALID, str(e)
        return cls(
            namespace=meta.get("namespace", ""),
            name=meta.get("name", ""),
            uid=meta.get("uid", ""),
            env_names=tuple(s["name"] for s in entries),
            tokens=dict(status.get("tokens") or {}),
            source_secrets=sources,
            phase=phase,
            message=message,
            deleting=bool(meta.get("deletionTimestamp")),
            enforcement=enforcement,
            redirect=redirect,
            kinds={s["name"]: credspec.kind_of(s) for s in entries},
        )

    def check_usable(self) -> None:
        """Raise Refused (deleted, expired, invalid) or NotReady (tokens not minted yet)."""
        from .rules import check_session  # the rules import this module

        check_session(self.namespace, self.name, self)
