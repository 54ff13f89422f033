"""The credential hook: how secrets that are not a static header act on a request.

A static secret is a string swapped in the head (substitute.py). The other kinds (AWS SigV4,
OAuth2, Google service accounts) must read and rewrite the request: verify what the agent
signed with its sealed material, sign again with the real one, exchange tokens. Each kind has
a `Handler`; `HANDLERS` maps kind -> handler. For a request to a host where a non-static
binding applies, `claim()` (pure, called by decide.py) asks each binding's handler whether it
takes the request and how it needs the body; the exchange then buffers the body if asked
(bounded), awaits `Handler.rewrite()` -- which returns a `Rewrite` or raises ProxyError (the
client gets the JSON error, nothing is forwarded) -- and applies the rewrite: the upstream head,
the body (whole or piece by piece) and optionally the buffered response.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Protocol

from oshu_contract.kinds import Kind
from oshu_contract.session import SecretBinding

from .errors import ProxyError
from .http1 import LENGTH, NO_BODY, RequestHead, split_fields

if TYPE_CHECKING:
    from .server import Proxy

_log = logging.getLogger("oshu.sidecar")
#: Largest request body a handler may ask to have buffered (a larger one is refused: payload_too_large).
BODY_LIMIT = 16 << 20
#: Largest response body a response transform is given (a larger one: upstream_protocol_error).
RESPONSE_LIMIT = 1 << 20


class BodyNeed(IntEnum):
    """How a handler needs the request body."""

    NONE = 0  # not at all: it streams through untouched (also: no body)
    BUFFER = 1  # whole, before `rewrite` (bounded by BODY_LIMIT); `rewrite` gets the bytes
    STREAM = 2  # piece by piece through `Rewrite.stream` as it is uploaded


@dataclass(frozen=True, slots=True)
class HookRequest:
    """The request as the client sent it (header values latin-1 decoded), for a handler to read."""

    host: str
    port: int
    method: str
    target: str  # origin-form path and query, as received
    headers: tuple[tuple[str, str], ...]
    content_length: int | None  # None: chunked (or no body when `has_body` is False)
    has_body: bool

    def header(self, name: str) -> str | None:
        """The first value of field `name` (case-insensitive), or None."""
        name = name.lower()
        return next((v for n, v in self.headers if n.lower() == name), None)


class StreamTransform(Protocol):
    """Rewrites a streamed request body piece by piece; raising ProxyError stops the upload and the
    client gets that error (the upstream never receives a complete request)."""

    def feed(self, data: bytes) -> bytes: ...

    def flush(self) -> bytes: ...


#: (status, response body) -> the body the agent gets (Content-Length is set from it).
ResponseTransform = Callable[[int, bytes], Awaitable[bytes]]


@dataclass(slots=True)
class Rewrite:
    """What a handler does to a request it took. Every field is optional."""

    #: The final upstream head (request line and fields as forwarded, after the proxy's own edits,
    #: ending in CRLF CRLF) -> the head to send. Pure; may raise ProxyError.
    head: Callable[[bytes], bytes] | None = None
    #: The buffered body to send instead (BodyNeed.BUFFER); Content-Length is fixed up.
    body: bytes | None = None
    #: Body transform for BodyNeed.STREAM (also applied to a body that arrived whole), run after `head`.
    #: It must keep a Content-Length body's length (the head has gone out, or is built, before).
    stream: StreamTransform | None = None
    #: Buffered response transform (a token endpoint's JSON), bodies up to RESPONSE_LIMIT.
    response: ResponseTransform | None = None
    #: Names of the bindings used (audit line and metrics `secrets`).
    secrets: tuple[str, ...] = ()
    #: Extra (real value, sealed stand-in, name) scrubbed from this exchange's response (minted tokens).
    scrub: tuple[tuple[bytes, bytes, str], ...] = ()
    #: Called once when the exchange ends, with the status the client got (0: none).
    done: Callable[[int], None] | None = None


@dataclass(slots=True)
class HookContext:
    """What `rewrite` may use besides the request: the running proxy (its upstream pool, to call a
    token endpoint over verified TLS), the clock, and per-binding state that outlives a request."""

    proxy: Proxy
    now: float
    state: dict[str, object] = field(default_factory=dict)


class Handler(Protocol):
    """One credential kind. `claim` is pure (a security decision); `rewrite` may do I/O."""

    def claim(self, binding: SecretBinding, req: HookRequest) -> BodyNeed | None:
        """None: not this handler's request (forwarded as is); else how the body is needed.
        Raises ProxyError to refuse (a malformed credential)."""
        ...

    async def rewrite(self, binding: SecretBinding, req: HookRequest, body: bytes | None, ctx: HookContext) -> Rewrite:
        """The rewrite of a claimed request; raises ProxyError to refuse it."""
        ...


class Registry:
    """Kind -> handler, filled by `_register()` on first use: the handler modules import this one,
    so registering while it is still being imported would fail for whichever is imported first."""

    __slots__ = ("_filled", "_handlers")

    def __init__(self) -> None:
        self._handlers: dict[Kind, Handler] = {}
        self._filled = False

    def _fill(self) -> None:
        if not self._filled:
            self._filled = True
            _register()

    def get(self, kind: Kind) -> Handler | None:
        self._fill()
        return self._handlers.get(kind)

    def __getitem__(self, kind: Kind) -> Handler:
        self._fill()
        return self._handlers[kind]

    def __setitem__(self, kind: Kind, handler: Handler) -> None:
        self._handlers[kind] = handler


#: Kind -> handler. Handlers register in `_register()` below (one line each).
HANDLERS = Registry()


@dataclass(frozen=True, slots=True)
class Claim:
    """A handler took the request: which one, for which binding, and how it needs the body."""

    handler: Handler
    binding: SecretBinding
    body: BodyNeed
    request: HookRequest


def hook_request(head: RequestHead, host: str, port: int, target: bytes) -> HookRequest:
    """`target`: the origin-form path and query (an absolute-form request target is not what was signed)."""
    fields = tuple((n.decode("latin-1"), v.decode("latin-1")) for n, v in split_fields(head.raw, head.line_end + 2))
    return HookRequest(
        host=host,
        port=port,
        method=head.method.decode("latin-1"),
        target=target.decode("latin-1"),
        headers=fields,
        content_length=head.content_length if head.framing == LENGTH else None,
        has_body=head.framing != NO_BODY,
    )


def claim(
    bindings: tuple[SecretBinding, ...], head: RequestHead, host: str, port: int, target: bytes | None = None
) -> Claim | None:
    """The first binding whose handler takes this request (pure; ProxyError refuses the request)."""
    req: HookRequest | None = None
    for binding in bindings:
        handler = HANDLERS.get(binding.kind)
        if handler is None:
            continue
        if req is None:
            req = hook_request(head, host, port, head.target if target is None else target)
        try:
            need = handler.claim(binding, req)
        except ProxyError:
            raise
        except Exception as e:  # a handler bug: refused (nothing forwarded), logged without its message
            raise handler_failed(binding, "claim", e) from None
        if need is not None:
            if need == BodyNeed.BUFFER and req.content_length is not None and req.content_length > BODY_LIMIT:
                raise ProxyError(
                    "payload_too_large",
                    f"the body is over {BODY_LIMIT >> 20} MiB, the most {binding.kind.value} credentials buffer",
                )
            return Claim(handler, binding, need if req.has_body else BodyNeed.NONE, req)
    return None


def handler_failed(binding: SecretBinding, step: str, e: Exception) -> ProxyError:
    """A handler raised something other than ProxyError: logged by type only (its message could
    quote real material), answered as internal_error; the request is not forwarded."""
    _log.error(
        "credential handler failed",
        extra={"fields": {"kind": binding.kind.value, "secret": binding.name, "step": step, "error": type(e).__name__}},
    )
    return ProxyError("internal_error", f"the {binding.kind.value} credential handler failed; nothing was sent")


_STATES: weakref.WeakKeyDictionary[Proxy, dict[str, object]] = weakref.WeakKeyDictionary()


def context(proxy: Proxy) -> HookContext:
    """The hook context of one request: per-proxy handler state, the current time."""
    state = _STATES.get(proxy)
    if state is None:
        state = _STATES[proxy] = {}
    return HookContext(proxy, time.time(), state)


def _register() -> None:
    from .aws import AwsHandler  # (imported here: the handler modules import this one)

    HANDLERS[Kind.AWS] = AwsHandler()
    from .oauthhooks import GcpHandler, OAuth2Handler

    HANDLERS[Kind.OAUTH2], HANDLERS[Kind.GCP] = OAuth2Handler(), GcpHandler()
