"""The credential handler of kind `aws`: verify the agent's SigV4 signature, sign again for real.

The agent's SDK signs with the sealed access key id and sealed secret (and sealed session
token). For a request to one of the binding's hosts the handler checks the signature with the
sealed secret, the date window, a replay of the same signature and the payload hash against
the body; any failure refuses the request (nothing forwarded). Otherwise the forwarded head is
signed with the real key for the same region, service and date (and the real session token in
place of the sealed one); aws-chunked bodies are re-signed chunk by chunk (sigv4_stream.py).
Requests carrying no SigV4 signature at all pass through untouched.
"""

from __future__ import annotations

import functools
import hashlib

from oshu_contract.session import SecretBinding

from .credentials import BodyNeed, HookContext, HookRequest, Rewrite
from .errors import ProxyError
from .replay import ReplayCache
from .sigv4 import (
    DATE_WINDOW,
    EMPTY_SHA256,
    STREAMING_PAYLOADS,
    STREAMING_SIGNED_TRAILER,
    UNHASHED_PAYLOADS,
    Credentials,
    Signature,
    Wire,
    check_date,
    declared_payload,
    header,
    parse_amz_date,
    parse_query,
    parse_signature,
    resign_headers,
    resign_query,
    sigv4_error,
    verify,
)
from .sigv4_stream import ChunkResigner

_REPLAY_KEY = "aws.replay"
#: Services whose answers are (or can be) new credentials of the account -- temporary keys, access
#: keys, login profiles. Signed with the real key, their responses would give the agent real
#: credentials the proxy does not know and cannot scrub, usable without it: refused, except the
#: read-only identity check SDKs and CLIs use.
MINTING_SERVICES = frozenset({"sts", "iam", "sso", "sso-oauth", "cognito-identity", "signin"})
_READ_ONLY = frozenset({("sts", "GetCallerIdentity")})


def minting_refusal(sig: Signature, wire: Wire, body: bytes | None) -> ProxyError | None:
    """Why a request to a credential-minting service is not signed with the real key, else None."""
    if sig.service not in MINTING_SERVICES:
        return None
    pairs = parse_query(wire.query)
    if body is not None and "x-www-form-urlencoded" in (header(wire.headers, "content-type") or ""):
        pairs += parse_query(body.decode("latin-1").replace("+", " "))
    actions = {v for n, v in pairs if n == "Action"}
    if len(actions) == 1 and (sig.service, *actions) in _READ_ONLY:
        return None
    what = f"{sig.service} {', '.join(sorted(actions))}" if actions else f"{sig.service} requests"
    return ProxyError(
        "credential_denied",
        f"AWS SigV4: {what} would hand the agent new real credentials; not signed with the session's key",
    )


def sealed_credentials(binding: SecretBinding) -> Credentials:
    return Credentials(
        binding.sealed, binding.sealed_fields["secretAccessKey"], binding.sealed_fields.get("sessionToken") or None
    )


def real_credentials(binding: SecretBinding) -> Credentials:
    f = binding.fields
    return Credentials(f["accessKeyId"], f["secretAccessKey"], f.get("sessionToken") or None)


@functools.lru_cache(maxsize=64)
def _signature(req: HookRequest) -> tuple[Wire, Signature] | None:
    """The parsed request and its signature (cached: claim and rewrite both ask; not mutated)."""
    wire = Wire.of(req.method, req.target, list(req.headers))
    sig = parse_signature(wire.headers, wire.query)
    return None if sig is None else (wire, sig)


class AwsHandler:
    """credentials.Handler for Kind.AWS."""

    def claim(self, binding: SecretBinding, req: HookRequest) -> BodyNeed | None:
        found = _signature(req)
        if found is None:
            return None
        wire, sig = found
        declared = declared_payload(wire, sig)
        if declared in STREAMING_PAYLOADS:
            return BodyNeed.STREAM
        if declared in UNHASHED_PAYLOADS:
            return BodyNeed.NONE
        return BodyNeed.BUFFER

    async def rewrite(self, binding: SecretBinding, req: HookRequest, body: bytes | None, ctx: HookContext) -> Rewrite:
        found = _signature(req)
        assert found is not None  # claimed
        wire, sig = found
        check_date(sig, ctx.now)
        declared = declared_payload(wire, sig)
        actual = hashlib.sha256(body).hexdigest() if body is not None else EMPTY_SHA256
        payload = declared if declared is not None else actual
        sealed, real = sealed_credentials(binding), real_credentials(binding)
        verify(wire, sig, sealed, payload)
        hashed = declared is not None and declared not in UNHASHED_PAYLOADS and declared not in STREAMING_PAYLOADS
        if hashed and declared != actual:
            raise sigv4_error("payload_hash_mismatch", "x-amz-content-sha256 is not the SHA-256 of the body")
        refusal = minting_refusal(sig, wire, body)
        if refusal is not None:
            raise refusal
        done: _Forget | None = None
        if not sig.presigned:  # a presigned URL is meant to be fetched again until it expires
            cache = ctx.state.get(_REPLAY_KEY)
            if not isinstance(cache, ReplayCache):
                cache = ctx.state[_REPLAY_KEY] = ReplayCache()
            if cache.seen(sig.signature, parse_amz_date(sig.amz_date) + DATE_WINDOW, ctx.now):
                raise sigv4_error("signature_replayed", "this exact signed request was already sent; sign it anew")
            done = _Forget(cache, sig.signature)
        stream = None
        if declared in STREAMING_PAYLOADS:
            stream = ChunkResigner(sig, sealed, real, trailer=declared == STREAMING_SIGNED_TRAILER)
        return Rewrite(
            head=_Resign(sig, real, payload, stream),
            stream=stream,
            secrets=(binding.name,),
            done=done,
        )


#: Answers after which an SDK retries: the same request signed again within the same second has
#: the same signature, and is a retry of a request that was not served, not a replay.
RETRYABLE = frozenset({0, 408, 429, 500, 502, 503, 504})


class _Forget:
    """Rewrite.done of a header-signed request: a retryable failure takes its signature out of the
    replay memory again."""

    __slots__ = ("cache", "signature")

    def __init__(self, cache: ReplayCache, signature: str) -> None:
        self.cache, self.signature = cache, signature

    def __call__(self, status: int) -> None:
        if status in RETRYABLE:
            self.cache.forget(self.signature)


class _Resign:
    """The head rewrite: the forwarded head signed again with the real credentials."""

    __slots__ = ("payload", "real", "sig", "stream")

    def __init__(self, sig: Signature, real: Credentials, payload: str, stream: ChunkResigner | None) -> None:
        self.sig, self.real, self.payload, self.stream = sig, real, payload, stream

    def __call__(self, head: bytes) -> bytes:
        lines = head[:-4].split(b"\r\n")
        method, target, version = lines[0].split(b" ")
        fields = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            fields.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
        token = self.real.token
        if token is not None:
            fields = [(n, token if n.lower() == "x-amz-security-token" else v) for n, v in fields]
        wire = Wire.of(method.decode("latin-1"), target.decode("latin-1"), fields)
        if self.sig.presigned:
            new_target = wire.path + "?" + resign_query(wire, self.sig, self.real, self.payload)
            lines[0] = b" ".join((method, new_target.encode("latin-1"), version))
        else:
            signed, auth = resign_headers(wire, self.sig, self.real, self.payload)
            if self.stream is not None:
                self.stream.real_prev = signed.signature
            fields = [(n, auth if n.lower() == "authorization" else v) for n, v in fields]
        return b"\r\n".join([lines[0], *(f"{n}: {v}".encode("latin-1") for n, v in fields)]) + b"\r\n\r\n"
