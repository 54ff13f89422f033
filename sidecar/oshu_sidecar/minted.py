"""Tokens a token endpoint minted for a session: the agent gets sealed stand-ins, the proxy keeps the real ones.

A token endpoint's answer (`{"access_token": ..., "refresh_token": ..., "id_token": ...}`,
JSON or form-encoded) passes through the proxy on its way to the agent; each token in it is
replaced by a fresh sealed token before the agent sees it (`seal_token_response`). A later
request to one of the binding's hosts carrying `Bearer SEALED_...` gets the real token back
(`swap`); the same sealed token sent anywhere else stays worthless. The map is bounded
(oldest first out) and each entry expires with the token it stands for (`expires_in`,
capped). The real values are scrubbed from responses like the session's own secrets
(`secret_values`). Pure apart from the clock, which is passed in.
"""

from __future__ import annotations

import json
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

from oshu_contract.tokens import SEALED_IN_BYTES_RE, SEALED_PREFIX, new_sealed_token

from .scrub import Scrubber

#: Fields of a token response that carry tokens (RFC 6749 5.1, OpenID Connect Core 3.1.3.3).
TOKEN_FIELDS = ("access_token", "refresh_token", "id_token")
#: Lifetime assumed when a response says nothing (`expires_in` is only RECOMMENDED)...
DEFAULT_TTL = 3600.0
#: ...and the longest kept whatever it says (a refresh token often has no stated lifetime).
MAX_TTL = 24 * 3600.0
#: Entries kept at most; beyond that the oldest go (their sealed tokens stop working).
MAX_ENTRIES = 4096
#: Shortest real token worth sealing (scrubbing shorter strings would mangle ordinary text).
MIN_TOKEN = 8
#: Largest token response body parsed (token responses are a few KiB at most).
MAX_RESPONSE = 1 << 20
SEALED_MARK = SEALED_PREFIX.encode()


@dataclass(frozen=True, slots=True)
class Minted:
    """One real token, the binding whose token endpoint minted it, and when it stops counting."""

    real: str
    binding: str
    expires_at: float


class MintedTokens:
    """sealed <-> real for tokens minted during a session (bounded, expiring)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_entries: int = MAX_ENTRIES) -> None:
        self.clock = clock
        self.max_entries = max_entries
        self._by_sealed: OrderedDict[str, Minted] = OrderedDict()
        self._by_real: dict[tuple[str, str], str] = {}
        #: Bumped on every change, so a caller can cache what it derives (a scrubber) until the next one.
        self.generation = 0
        self._per_binding: dict[str, tuple[int, tuple[tuple[str, str], ...]]] = {}

    def __len__(self) -> int:
        return len(self._by_sealed)

    def seal(self, real: str, binding: str, ttl: float = DEFAULT_TTL) -> str:
        """The sealed stand-in of `real` (the same one if it was already sealed for `binding`)."""
        now = self.clock()
        expires_at = now + min(max(ttl, 0.0), MAX_TTL)
        sealed = self._by_real.get((binding, real))
        if sealed is not None:
            self._by_sealed[sealed] = Minted(real, binding, max(expires_at, self._by_sealed[sealed].expires_at))
            self._by_sealed.move_to_end(sealed)
            return sealed
        self._expire(now)
        while len(self._by_sealed) >= self.max_entries:
            self._drop(next(iter(self._by_sealed)))
        sealed = new_sealed_token()
        self._by_sealed[sealed] = Minted(real, binding, expires_at)
        self._by_real[(binding, real)] = sealed
        self.generation += 1
        return sealed

    def lookup(self, sealed: str, bindings: Collection[str]) -> str | None:
        """The real token behind `sealed` if it is live and was minted for one of `bindings`."""
        entry = self._by_sealed.get(sealed)
        if entry is None or entry.binding not in bindings:
            return None
        if entry.expires_at <= self.clock():
            self._drop(sealed)
            return None
        return entry.real

    def swap(self, data: bytes, bindings: Collection[str]) -> tuple[bytes, list[str]]:
        """`data` (a header value, a form body) with each live minted sealed token of `bindings`
        replaced by its real token; also the binding names used. Other sealed tokens stay as they are."""
        if not self._by_sealed or SEALED_MARK not in data:
            return data, []
        used: list[str] = []

        def real(m: re.Match[bytes]) -> bytes:
            token = m.group(0).decode("ascii")
            value = self.lookup(token, bindings)
            if value is None:
                return m.group(0)
            binding = self._by_sealed[token].binding
            if binding not in used:
                used.append(binding)
            return value.encode()

        return SEALED_IN_BYTES_RE.sub(real, data), used

    def secret_values(self) -> tuple[tuple[str, str, str], ...]:
        """(real, sealed, binding) of every entry kept, for scrubbing responses."""
        return tuple((m.real, sealed, m.binding) for sealed, m in self._by_sealed.items())

    def of_binding(self, binding: str) -> tuple[tuple[str, str], ...]:
        """(real, sealed) of every entry kept for `binding` (cached until the next change: it is
        asked on every request the binding's handler rewrites)."""
        hit = self._per_binding.get(binding)
        if hit is not None and hit[0] == self.generation:
            return hit[1]
        found = tuple((m.real, sealed) for sealed, m in self._by_sealed.items() if m.binding == binding)
        if len(self._per_binding) >= 1024:
            self._per_binding.clear()
        self._per_binding[binding] = (self.generation, found)
        return found

    def _expire(self, now: float) -> None:
        for sealed in [s for s, m in self._by_sealed.items() if m.expires_at <= now]:
            self._drop(sealed)

    def _drop(self, sealed: str) -> None:
        entry = self._by_sealed.pop(sealed)
        self._by_real.pop((entry.binding, entry.real), None)
        self.generation += 1

    def seal_token_response(self, body: bytes, binding: str, content_type: str = "") -> bytes | None:
        """A token endpoint's response body with every token in it sealed, or None when it carries
        no token (nothing changed). JSON objects and form-encoded bodies are understood."""
        if len(body) > MAX_RESPONSE:
            return None
        doc = _json_object(body)
        if doc is not None:
            if not self._seal_fields(doc, binding):
                return None
            return json.dumps(doc, separators=(",", ":")).encode()
        if "form" not in content_type.lower():
            return None
        try:
            pairs = parse_qsl(body.decode("ascii"), keep_blank_values=True, strict_parsing=True)
        except (UnicodeDecodeError, ValueError):
            return None
        form: dict[str, object] = dict(pairs)
        if not self._seal_fields(form, binding):
            return None
        return urlencode([(k, form[k] if k in TOKEN_FIELDS else v) for k, v in pairs]).encode("ascii")

    def _seal_fields(self, doc: dict[str, object], binding: str) -> bool:
        ttl = _ttl(doc.get("expires_in"))
        changed = False
        for name in TOKEN_FIELDS:
            value = doc.get(name)
            if isinstance(value, str) and len(value) >= MIN_TOKEN and not value.startswith(SEALED_PREFIX):
                # A refresh token outlives the access token it came with: keep it for the cap.
                doc[name] = self.seal(value, binding, MAX_TTL if name == "refresh_token" else ttl)
                changed = True
        return changed


def _json_object(body: bytes) -> dict[str, object] | None:
    stripped = body.strip()
    if not stripped.startswith(b"{"):
        return None
    try:
        doc = json.loads(stripped)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


def _ttl(expires_in: object) -> float:
    """`expires_in` as seconds (a number or a numeric string, as some endpoints send), else the default."""
    if isinstance(expires_in, str) and expires_in.strip().isascii() and expires_in.strip().isdigit():
        expires_in = int(expires_in)  # (ASCII digits only: "²" is a digit to isdigit() and not to int())
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and expires_in > 0:
        return MAX_TTL if expires_in >= MAX_TTL else float(expires_in)  # (a huge int overflows float)
    return DEFAULT_TTL


class ScrubberWith(Scrubber):
    """A session's scrubber followed by extra values of one exchange (the minted tokens and the
    proxy's own access token of the binding a handler used), for the response the agent gets."""

    __slots__ = ("base",)

    def __init__(self, base: Scrubber, extra: Iterable[tuple[bytes, bytes, str]]) -> None:
        super().__init__(extra)
        self.base = base
        self.active = self.active or base.active

    def scrub(self, data: bytes, names: list[str]) -> bytes:
        # The extra values first: a JWT the real key signed carries the real key id in its base64url
        # header, which the session's scrubber would rewrite and so hide the JWT from its own needle.
        return self.base.scrub(super().scrub(data, names), names)

    def holdback(self, data: bytes) -> int:
        return max(self.base.holdback(data), super().holdback(data))
