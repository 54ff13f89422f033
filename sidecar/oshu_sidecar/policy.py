"""Policy: every decision the proxy makes about a host or a request, as pure functions.

Built once per session (re)load from a `Session`, so the hot path does dictionary
lookups instead of pattern matching: per host:port it caches a `HostPlan` (intercept or
tunnel, egress allowed, which secrets may be substituted there and where).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import quote

from oshu_contract.hosts import HostPattern, any_match
from oshu_contract.kinds import SEALED_FIELDS, SECRET_FIELDS, Kind
from oshu_contract.locations import Location
from oshu_contract.session import SEALED_PREFIX, SecretBinding, Session, format_time

from .errors import ProxyError
from .scrub import Scrubber

SEALED_MARK = SEALED_PREFIX.encode()
#: Distinct host:port plans kept per policy; beyond that the cache is reset (bounded memory).
PLAN_CACHE_SIZE = 4096
OTHER_HOST_LABEL = "other"
#: Each substitution location of the contract -> the plan field the substitution code of that
#: location reads (decide.py: header values and Basic credentials, the query string, the body).
#: Total over `Location` (tests/contract checks, and ties `Location` to the CRD's enum).
SUBSTITUTES: dict[Location, str] = {
    Location.HEADERS: "header_subs",
    Location.QUERY: "query_subs",
    Location.BODY: "body_subs",
}


@dataclass(frozen=True, slots=True)
class Substitution:
    """One secret as the byte strings the substitution code needs."""

    name: str
    sealed: bytes
    value: bytes
    query_value: bytes  # percent-encoded form for a query string
    locations: frozenset[Location]


@dataclass(frozen=True, slots=True)
class HostPlan:
    """What the proxy does for one host:port under the current session."""

    host: str
    port: int
    intercept: bool
    egress_allowed: bool
    header_subs: tuple[Substitution, ...]
    query_subs: tuple[Substitution, ...]
    body_subs: tuple[Substitution, ...]
    label: str  # host label for metrics: the host if the session names it, else "other"
    #: Non-static bindings that apply here (credentials.py handlers act on the request).
    credentials: tuple[SecretBinding, ...] = ()


class Policy:
    """Decisions for one loaded session; immutable once built (a reload builds a new one)."""

    def __init__(
        self, session: Session, revoked_reason: str | None = None, retired: tuple[tuple[bytes, bytes, str], ...] = ()
    ) -> None:
        """`retired`: (value, sealed, name) of secrets earlier sessions had and this one dropped; still scrubbed."""
        self.session = session
        self.name = session.session
        self._static = tuple(s for s in session.secrets if s.kind is Kind.STATIC)
        self._others = tuple(s for s in session.secrets if s.kind is not Kind.STATIC)
        self.subs = tuple(
            Substitution(
                name=s.name,
                sealed=s.sealed.encode(),
                value=s.value.encode(),
                query_value=quote(s.value, safe="").encode(),
                locations=s.locations,
            )
            for s in self._static
        )
        self.tokens = tuple(s.sealed for s in self.subs)
        #: Finds every real value of the session in responses (raw, escaped, base64) for scrubbing.
        #: A rotated-out value can still be echoed (an upstream that stored it), so it stays scrubbed.
        self.scrubber = Scrubber(
            [(s.value, s.sealed, s.name) for s in self.subs]
            + [p for b in self._others for p in scrub_triples(b)]
            + list(retired)
        )
        self._secret_hosts: tuple[HostPattern, ...] = tuple(p for s in session.secrets for p in s.hosts)
        self._egress = session.egress
        self.expires_at: float | None = session.expires_at.timestamp() if session.expires_at else None
        if revoked_reason is None and session.revoked:
            revoked_reason = f"session {self.name} has been revoked"
        self.revoked_reason = revoked_reason
        self._plans: dict[tuple[str, int], HostPlan] = {}

    # -- hosts ------------------------------------------------------------------------
    def plan(self, host: str, port: int) -> HostPlan:
        key = (host, port)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._build_plan(host, port)
            if len(self._plans) >= PLAN_CACHE_SIZE:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def _build_plan(self, host: str, port: int) -> HostPlan:
        allowed = [s for s, b in zip(self.subs, self._static, strict=True) if b.allowed_for(host, port)]
        credentials = tuple(b for b in self._others if credential_applies(b, host, port))
        intercept = bool(allowed) or bool(credentials)
        in_egress = self._egress is not None and any_match(self._egress, host, port)
        egress_allowed = intercept or self._egress is None or in_egress
        return HostPlan(
            host=host,
            port=port,
            intercept=intercept,
            egress_allowed=egress_allowed,
            **{field: tuple(s for s in allowed if loc in s.locations) for loc, field in SUBSTITUTES.items()},
            label=self._label(host, port),
            credentials=credentials,
        )

    def _label(self, host: str, port: int) -> str:
        """The metrics label: the session's pattern naming host:port (exact before wildcard), else "other".

        A wildcard match is labelled with the pattern, not the host: `*.example.com` would
        otherwise let a client mint one time series per made-up subdomain, without bound.
        """
        matches = [p for p in (*self._secret_hosts, *(self._egress or ())) if p.matches(host, port)]
        if not matches:
            return OTHER_HOST_LABEL
        return str(min(matches, key=lambda p: p.wildcard))

    # -- session state ----------------------------------------------------------------
    def inactive(self, now: float | None = None) -> ProxyError | None:
        """Why substitution is off (revoked or expired), or None while the session is live."""
        if self.revoked_reason is not None:
            return ProxyError("session_revoked", f"{self.revoked_reason}; sealed tokens are no longer honoured")
        if self.expires_at is not None and (now if now is not None else time.time()) >= self.expires_at:
            assert self.session.expires_at is not None
            return ProxyError(
                "session_expired",
                f"session {self.name} expired at {format_time(self.session.expires_at)};"
                " sealed tokens are no longer honoured",
            )
        return None

    def seconds_until_expiry(self, now: float | None = None) -> float:
        if self.expires_at is None:
            return float("inf")
        return self.expires_at - (now if now is not None else time.time())

    def tokens_in(self, data: bytes) -> list[str]:
        """Names of the secrets whose sealed token appears in `data`."""
        if SEALED_MARK not in data:
            return []
        return [s.name for s in self.subs if s.sealed in data]


def withdrawn(policy: Policy, plan: HostPlan, names: list[str] | None, body_only: bool) -> ProxyError | None:
    """Why substitutions decided under `plan` (an earlier policy's) may no longer be made, else None.

    A reload that takes a secret away from a host (or a location away from a secret) is treated
    like revocation for requests in flight: a buffered request is not sent, a streamed body is
    cut. `names`: only these secrets (those already substituted); None: every one the plan allowed
    (a streamed body may carry any of them later). `body_only`: only body substitution matters.
    """
    inactive = policy.inactive()
    if inactive is not None:
        return inactive
    current = policy.plan(plan.host, plan.port)
    if current is plan:
        return None
    if not body_only:
        still = {(b.name, b.sealed) for b in current.credentials}
        for b in plan.credentials:
            if (names is None or b.name in names) and (b.name, b.sealed) not in still:
                return ProxyError(
                    "session_changed",
                    f"session {policy.name} changed: credential {b.name} no longer applies to {plan.host}; the"
                    " request was stopped",
                )
    pairs = [(plan.body_subs, current.body_subs)]
    if not body_only:
        pairs += [(plan.header_subs, current.header_subs), (plan.query_subs, current.query_subs)]
    for then, now in pairs:
        allowed = {(s.name, s.sealed) for s in now}
        for s in then:
            if (names is None or s.name in names) and (s.name, s.sealed) not in allowed:
                where = plan.host if plan.port == 443 else f"{plan.host}:{plan.port}"
                return ProxyError(
                    "session_changed",
                    f"session {policy.name} changed: secret {s.name} is no longer substituted for {where}"
                    " here; the request was stopped",
                )
    return None


def credential_applies(binding: SecretBinding, host: str, port: int) -> bool:
    """A non-static binding acts on its hosts and, for a Google service account, on its token endpoint
    (the agent's own client exchanges its signed JWT there)."""
    if binding.allowed_for(host, port):
        return True
    endpoint = binding.token_endpoint if binding.kind is Kind.GCP else None
    return endpoint is not None and endpoint.matches(host, port)


def scrub_triples(binding: SecretBinding) -> list[tuple[bytes, bytes, str]]:
    """(real value, what replaces it, name) for every real string of a non-static binding: a field's
    own sealed stand-in where it has one, else the binding's primary sealed token."""
    out = []
    for key in SECRET_FIELDS[binding.kind]:
        value = binding.fields.get(key)
        if value:
            stand_in = binding.sealed_fields.get(key) if key in SEALED_FIELDS[binding.kind] else None
            out.append((value.encode(), (stand_in or binding.sealed).encode(), binding.name))
    return out


def egress_refusal(host: str, port: int) -> ProxyError:
    where = host if port == 443 else f"{host}:{port}"
    return ProxyError("egress_denied", f"host {where} is not in this session's egress allowlist")


def plaintext_refusal(names: list[str]) -> ProxyError:
    return ProxyError(
        "plaintext_secret", f"refusing to send sealed token(s) of {', '.join(names)} over plain http://; use https://"
    )
