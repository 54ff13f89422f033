"""Substitution: sealed tokens out, real values in, on requests.

Requests: every header value (including the base64 `user:password` of
`Authorization: Basic`), and -- only for secrets that opt in via `locations` -- the query
string and the body. (Responses, where real values go back to sealed tokens, are
scrub.py's job.)

Everything here works on bytes with plain `in`/`replace` (C speed); nothing is compiled
per request. Callers pass the precomputed `Substitution`s of a `HostPlan`.
"""

from __future__ import annotations

import base64
import binascii

from .policy import SEALED_MARK, Policy, Substitution
from .scrub import StreamScrubber, holdback


def decode_basic(value: bytes) -> bytes | None:
    """The decoded credentials of an `Authorization: Basic ...` value, or None."""
    if value[:6].lower() != b"basic ":
        return None
    try:
        return base64.b64decode(value[6:].strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


def tokens_in_request(policy: Policy, raw_head: bytes, authorization: tuple[int, int] | None) -> list[str]:
    """Names of the session's secrets whose sealed token the request head carries anywhere.

    `authorization` is the value span of an `Authorization: Basic` field, whose decoded
    credentials are searched too.
    """
    names = policy.tokens_in(raw_head)
    if authorization is not None:
        creds = decode_basic(raw_head[authorization[0] : authorization[1]].strip(b" \t"))
        if creds is not None:
            names.extend(n for n in policy.tokens_in(creds) if n not in names)
    return names


def _replace(data: bytes, subs: tuple[Substitution, ...], names: list[str], query: bool = False) -> bytes:
    for s in subs:
        if s.sealed in data:
            data = data.replace(s.sealed, s.query_value if query else s.value)
            if s.name not in names:
                names.append(s.name)
    return data


def substitute_head(
    raw: bytes, start: int, authorization: tuple[int, int] | None, subs: tuple[Substitution, ...], names: list[str]
) -> list[tuple[int, int, bytes]]:
    """Edits (for `http1.edit_head`) replacing sealed tokens of `subs` in header values of `raw[start:]`.

    Only values are touched (a token inside a field name stays as it is); the base64
    credentials of `Authorization: Basic` are decoded, substituted and re-encoded.
    Appends the names of substituted secrets to `names`.
    """
    edits = []
    pos = raw.find(SEALED_MARK, start)
    while pos != -1:
        line_start = raw.rfind(b"\r\n", 0, pos) + 2
        line_end = raw.find(b"\r\n", pos)
        colon = raw.find(b":", line_start, line_end)
        if 0 <= colon < pos:
            value = raw[colon + 1 : line_end]
            replaced = _replace(value, subs, names)
            if replaced != value:
                edits.append((colon + 1, line_end, replaced))
        pos = raw.find(SEALED_MARK, line_end)
    if authorization is not None:
        vs, ve = authorization
        creds = decode_basic(raw[vs:ve].strip(b" \t"))
        if creds is not None and SEALED_MARK in creds:
            replaced = _replace(creds, subs, names)
            if replaced != creds:
                edits.append((vs, ve, b" Basic " + base64.b64encode(replaced)))
    return edits


def substitute_query(target: bytes, subs: tuple[Substitution, ...], names: list[str]) -> bytes:
    """The request target with sealed tokens in its query string replaced (percent-encoded)."""
    path, sep, query = target.partition(b"?")
    if not sep or SEALED_MARK not in query:
        return target
    return path + b"?" + _replace(query, subs, names, query=True)


def redact_query(target: bytes) -> str:
    """The path for logs: query parameter names kept, every value dropped."""
    path, sep, query = target.partition(b"?")
    text = path.decode("latin-1")
    if not sep:
        return text
    keys = [p.split(b"=", 1)[0].decode("latin-1") for p in query.split(b"&") if p]
    return text + "?" + "&".join(k + "=" for k in keys)


def replace_all(data: bytes, pairs: tuple[tuple[bytes, bytes, str], ...], names: list[str]) -> bytes:
    """Replace every needle of `pairs` (needle, replacement, name) in a complete buffer."""
    for needle, repl, name in pairs:
        if needle in data:
            data = data.replace(needle, repl)
            if name not in names:
                names.append(name)
    return data


class _Needles:
    """Exact byte strings to replace (sealed tokens in a streamed request body), in the shape a
    StreamScrubber drives: `scrub` a buffer, `holdback` the tail that could still grow into one."""

    __slots__ = ("needles", "pairs")

    def __init__(self, pairs: tuple[tuple[bytes, bytes, str], ...]) -> None:
        self.pairs = pairs
        self.needles = tuple(p[0] for p in pairs)

    def scrub(self, data: bytes, names: list[str]) -> bytes:
        return replace_all(data, self.pairs, names)

    def holdback(self, data: bytes) -> int:
        return holdback(data, self.needles)


class StreamReplacer(StreamScrubber):
    """Replaces needles in a stream of pieces, including needles split across pieces.

    Holds back only the shortest tail that could still grow into a needle: an SSE event
    ending in a blank line is never held (values contain no line breaks), so streaming
    stays immediate.
    """

    __slots__ = ()

    def __init__(self, pairs: tuple[tuple[bytes, bytes, str], ...]) -> None:
        super().__init__(_Needles(pairs))
