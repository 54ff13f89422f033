"""The credential handlers of kinds `oauth2` and `gcpServiceAccount` (credentials.py's hook).

oauth2: a request to one of the binding's hosts carrying its sealed bearer token gets the
access token the proxy obtained itself (oauth2.py) in its place. gcpServiceAccount: the
agent's jwt-bearer exchange at the token endpoint is verified with the session's throwaway key
and re-signed with the real one (gcp.py); a self-signed JWT bearer sent to an API host is
re-signed the same way. For both, a token endpoint's answer that passes through to the agent
has its tokens sealed (minted.py) and a later `Bearer SEALED_...` minted that way is swapped
for the real token, only on the binding's own hosts. Per-proxy state (token sources, parsed
keys, minted tokens) lives in the hook context's `state`.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qsl, quote, urlsplit

from oshu_contract.locations import Location
from oshu_contract.session import SecretBinding
from oshu_contract.tokens import SEALED_PREFIX

from .credentials import BodyNeed, HookContext, HookRequest, ResponseTransform, Rewrite
from .errors import ProxyError
from .gcp import ServiceAccountSigner
from .minted import MintedTokens
from .oauth2 import OAuth2Client, TokenSource, pool_fetcher
from .scrub import Scrubber

_STATE_KEY = "oauth"
#: Token sources and parsed keys kept per proxy (a session reload with new material adds one).
_MAX_CACHED = 256
_SEALED = SEALED_PREFIX


class OAuthState:
    """Per proxy: the minted tokens, each oauth2 binding's token source, each gcp binding's keys."""

    def __init__(self) -> None:
        self.minted = MintedTokens()
        self._sources: dict[tuple[str, tuple[tuple[str, str], ...]], TokenSource] = {}
        self._signers: dict[tuple[str, tuple[tuple[str, str], ...]], ServiceAccountSigner] = {}

    def source(self, binding: SecretBinding, ctx: HookContext) -> TokenSource:
        key = (binding.sealed, tuple(sorted(binding.fields.items())))
        src = self._sources.get(key)
        if src is None:
            try:
                client = OAuth2Client.from_fields(binding.name, binding.fields)
            except ValueError as e:
                raise ProxyError("internal_error", str(e)) from None
            if len(self._sources) >= _MAX_CACHED:
                self._sources.clear()
            src = self._sources[key] = TokenSource(client, pool_fetcher(ctx.proxy.pool))
        return src

    def signer(self, binding: SecretBinding) -> ServiceAccountSigner:
        key = (binding.sealed, tuple(sorted(binding.fields.items())))
        signer = self._signers.get(key)
        if signer is None:
            try:
                signer = ServiceAccountSigner(binding.name, binding.sealed, binding.fields)
            except (ValueError, KeyError) as e:
                raise ProxyError(
                    "internal_error", f"secret {binding.name}: unusable service-account key ({e})"
                ) from None
            if len(self._signers) >= _MAX_CACHED:
                self._signers.clear()
            self._signers[key] = signer
        return signer

    def scrub(self, binding: SecretBinding, extra: tuple[str | None, ...] = ()) -> tuple[tuple[bytes, bytes, str], ...]:
        """(real, sealed, name) for the binding's minted real tokens and the `extra` real values (the
        proxy's own access token, shown as the binding's sealed token): what a response the agent
        gets from this binding's exchange must not contain (`Rewrite.scrub`)."""
        name, sealed = binding.name, binding.sealed.encode()
        out = [(r.encode(), s.encode(), name) for r, s in self.minted.of_binding(binding.sealed)]
        out += [(v.encode(), sealed, name) for v in dict.fromkeys(extra) if v]
        return tuple(out)

    def scrubber(self, binding: SecretBinding, extra: tuple[str | None, ...] = ()) -> Scrubber:
        """The same values as a Scrubber (a token endpoint's answer, before it leaves the handler)."""
        return Scrubber(self.scrub(binding, extra))

    def seal_response(self, binding: SecretBinding, extra: tuple[str | None, ...] = ()) -> ResponseTransform:
        """The response transform of a token endpoint request: its tokens sealed before the agent sees them."""

        async def transform(status: int, body: bytes) -> bytes:
            return seal_token_body(self, binding, body, extra)

        return transform


def seal_token_body(
    state: OAuthState, binding: SecretBinding, body: bytes, extra: tuple[str | None, ...] = ()
) -> bytes:
    """A token endpoint's body as the agent may see it: tokens sealed, any other real token scrubbed."""
    sealed = state.minted.seal_token_response(body, binding.sealed, "application/x-www-form-urlencoded")
    out = sealed if sealed is not None else body
    return state.scrubber(binding, extra).scrub(out, [])


def oauth_state(ctx: HookContext) -> OAuthState:
    state = ctx.state.get(_STATE_KEY)
    if not isinstance(state, OAuthState):
        state = ctx.state[_STATE_KEY] = OAuthState()
    return state


def swap_fields(head: bytes, pairs: list[tuple[bytes, bytes]]) -> bytes:
    """`head` with each (old, new) replaced in the field lines only (never the request line)."""
    line_end = head.find(b"\r\n")
    fields = head[line_end:]
    for old, new in pairs:
        fields = fields.replace(old, new)
    return head[:line_end] + fields


def _bearer(req: HookRequest) -> str | None:
    auth = req.header("authorization")
    if auth is None:
        return None
    scheme, _, token = auth.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _at(req: HookRequest, url: str) -> bool:
    """Whether the request is a POST to `url` (host, port and path; the query is not compared)."""
    u = urlsplit(url)
    return (
        req.method == "POST"
        and (u.hostname or "").lower() == req.host
        and (u.port or 443) == req.port
        and req.target.split("?", 1)[0] == (u.path or "/")
    )


def _carries_sealed(req: HookRequest) -> bool:
    return any(_SEALED in v for _, v in req.headers)


class OAuth2Handler:
    """credentials.Handler for Kind.OAUTH2. The sealed bearer is swapped where the binding's
    `locations` allow (headers by default; the query string; the body, buffered up to
    credentials.BODY_LIMIT: an access token and its sealed stand-in differ in length)."""

    def claim(self, binding: SecretBinding, req: HookRequest) -> BodyNeed | None:
        if _at(req, binding.fields.get("tokenUrl", "")):
            return BodyNeed.BUFFER  # the agent's own token request: minted tokens in, tokens sealed out
        if Location.BODY in binding.locations and req.has_body:
            return BodyNeed.BUFFER
        if _carries_sealed(req) or (Location.QUERY in binding.locations and binding.sealed in req.target):
            return BodyNeed.NONE
        return None

    async def rewrite(self, binding: SecretBinding, req: HookRequest, body: bytes | None, ctx: HookContext) -> Rewrite:
        state = oauth_state(ctx)
        source = state.source(binding, ctx)
        where = _sealed_places(binding, req, body)
        rw = Rewrite()
        used: list[str] = [binding.name] if where else []
        pairs = _minted_pairs(state, binding, req, used)
        query: tuple[bytes, bytes] | None = None
        if where:
            token = await source.token()
            sealed = binding.sealed.encode()
            if Location.HEADERS in where:
                pairs.append((sealed, token.encode()))
            if Location.QUERY in where:
                query = (sealed, quote(token, safe="").encode())
            if Location.BODY in where and body is not None:
                rw.body = body.replace(sealed, token.encode())
            rw.done = _on_status(source, token)
        if pairs or query:
            rw.head = lambda head: swap_query(swap_fields(head, pairs), query)
        rw.secrets = tuple(used)
        current = source.current()
        if _at(req, binding.fields.get("tokenUrl", "")):
            if body:
                rw.body, _ = state.minted.swap(rw.body if rw.body is not None else body, {binding.sealed})
            rw.response = state.seal_response(binding, (current,))
        rw.scrub = state.scrub(binding, (token if where else None, current))
        return rw


def _on_status(source: TokenSource, token: str) -> Callable[[int], None]:
    """Rewrite.done: a 401 to the access token the proxy injected drops it (revoked early upstream),
    so the next request gets a fresh one (TokenSource.rejected rations this)."""

    def done(status: int) -> None:
        if status == 401:
            source.rejected(token)

    return done


def _sealed_places(binding: SecretBinding, req: HookRequest, body: bytes | None) -> set[Location]:
    """Where this request carries the binding's sealed token in a location the binding allows."""
    places: set[Location] = set()
    if Location.HEADERS in binding.locations and any(binding.sealed in v for _, v in req.headers):
        places.add(Location.HEADERS)
    if Location.QUERY in binding.locations and binding.sealed in req.target.partition("?")[2]:
        places.add(Location.QUERY)
    if Location.BODY in binding.locations and body is not None and binding.sealed.encode() in body:
        places.add(Location.BODY)
    return places


def swap_query(head: bytes, pair: tuple[bytes, bytes] | None) -> bytes:
    """`head` with `pair` replaced in the request line's query string only."""
    if pair is None:
        return head
    line_end = head.find(b"\r\n")
    line = head[:line_end]
    q = line.find(b"?")
    if q < 0:
        return head
    return line[:q] + line[q:].replace(*pair) + head[line_end:]


def _minted_pairs(
    state: OAuthState, binding: SecretBinding, req: HookRequest, used: list[str]
) -> list[tuple[bytes, bytes]]:
    """(sealed, real) for each minted token of this binding the request's fields carry."""
    pairs: list[tuple[bytes, bytes]] = []
    for _, value in req.headers:
        if _SEALED not in value:
            continue
        for token in value.replace(",", " ").split():
            real = state.minted.lookup(token.strip('"'), {binding.sealed}) if token.startswith(_SEALED) else None
            if real is not None:
                pairs.append((token.encode(), real.encode()))
                if binding.name not in used:
                    used.append(binding.name)
    return pairs


class GcpHandler:
    """credentials.Handler for Kind.GCP."""

    def claim(self, binding: SecretBinding, req: HookRequest) -> BodyNeed | None:
        if _at(req, binding.fields.get("tokenUri", "")):
            return BodyNeed.BUFFER  # the jwt-bearer exchange: assertion re-signed, tokens sealed
        if not binding.allowed_for(req.host, req.port):
            return None  # the token endpoint's host, another path: nothing of ours
        bearer = _bearer(req)
        if _carries_sealed(req) or (bearer is not None and bearer.startswith("ey") and bearer.count(".") == 2):
            return BodyNeed.NONE
        return None

    async def rewrite(self, binding: SecretBinding, req: HookRequest, body: bytes | None, ctx: HookContext) -> Rewrite:
        state = oauth_state(ctx)
        signer = state.signer(binding)
        if _at(req, binding.fields.get("tokenUri", "")):
            rw = Rewrite(response=state.seal_response(binding), secrets=(binding.name,), scrub=state.scrub(binding))
            resigned = signer.exchange_body(body, ctx.now) if body else None
            if body and resigned is not None:
                rw.body = resigned
                # An endpoint echoing the assertion it got must not hand the agent one the real key signed.
                rw.scrub += ((_assertion(resigned), _assertion(body), binding.name),)
            return rw
        used: list[str] = []
        pairs = _minted_pairs(state, binding, req, used)
        bearer = _bearer(req)
        if bearer is not None and not bearer.startswith(_SEALED):
            real = signer.bearer(bearer.encode("latin-1"), ctx.now)
            if real is not None:
                pairs.append((bearer.encode("latin-1"), real))
                used.append(binding.name)
        scrub = state.scrub(binding) + tuple((new, old, binding.name) for old, new in pairs)
        return Rewrite(
            head=(lambda head: swap_fields(head, pairs)) if pairs else None, secrets=tuple(used), scrub=scrub
        )


def _assertion(form: bytes) -> bytes:
    """The `assertion` of a form body exchange_body accepted (it checked there is exactly one)."""
    return dict(parse_qsl(form.decode("ascii")))["assertion"].encode("ascii")
