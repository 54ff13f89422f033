"""Substitution: sealed tokens out, real values in (requests); and the reverse (responses).

Requests: every header value (including the base64 `user:password` of
`Authorization: Basic`), and -- only for secrets that opt in via `locations` -- the query
string and the body. Responses: every real value of the session is replaced by its
sealed token, in headers and body, streaming, including values split across reads.

Everything here works on bytes with plain `in`/`replace` (C speed); nothing is compiled
per request. Callers pass the precomputed `Substitution`s of a `HostPlan`.
"""

from __future__ import annotations

import base64
import binascii
from typing import Iterable

from .policy import SEALED_MARK, Policy, Substitution


def decode_basic(value: bytes) -> bytes | None:
    """The decoded credentials of an `Authorization: Basic ...` value, or None."""
    if value[:6].lower() != b"basic ":
        return None
    try:
        return base64.b64decode(value[6:].strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


def tokens_in_request(policy: Policy, raw_head: bytes, fields: Iterable[tuple[bytes, bytes]],
                      basic_auth: bool) -> list[str]:
    """Names of the session's secrets whose sealed token the request head carries anywhere."""
    names = policy.tokens_in(raw_head)
    if basic_auth:
        for name, value in fields:
            if name.lower() == b"authorization":
                creds = decode_basic(value)
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


def substitute_fields(fields: list[tuple[bytes, bytes]], subs: tuple[Substitution, ...],
                      names: list[str]) -> list[tuple[bytes, bytes]]:
    """Header fields with sealed tokens of `subs` replaced; appends substituted names to `names`."""
    out = []
    for name, value in fields:
        if SEALED_MARK in value:
            value = _replace(value, subs, names)
        elif value[:6].lower() == b"basic " and name.lower() == b"authorization":
            creds = decode_basic(value)
            if creds is not None and SEALED_MARK in creds:
                replaced = _replace(creds, subs, names)
                if replaced != creds:
                    value = b"Basic " + base64.b64encode(replaced)
        out.append((name, value))
    return out


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


def _holdback(data: bytes, needles: Iterable[bytes]) -> int:
    """Length of the longest suffix of `data` that is a proper prefix of some needle."""
    best = 0
    n = len(data)
    for needle in needles:
        span = min(len(needle) - 1, n)
        if span <= best:
            continue
        first = needle[:1]
        p = data.find(first, n - span)
        while p != -1 and n - p > best:
            if needle.startswith(data[p:]):
                best = n - p
                break
            p = data.find(first, p + 1)
    return best


class StreamReplacer:
    """Replaces needles in a stream of pieces, including needles split across pieces.

    Holds back only the shortest tail that could still grow into a needle: an SSE event
    ending in a blank line is never held (values contain no line breaks), so streaming
    stays immediate.
    """

    __slots__ = ("pairs", "needles", "pending", "names")

    def __init__(self, pairs: tuple[tuple[bytes, bytes, str], ...]) -> None:
        self.pairs = pairs
        self.needles = tuple(p[0] for p in pairs)
        self.pending = b""
        self.names: list[str] = []

    def feed(self, data: bytes) -> bytes:
        if self.pending:
            data = self.pending + data
            self.pending = b""
        data = replace_all(data, self.pairs, self.names)
        keep = _holdback(data, self.needles)
        if keep:
            self.pending = data[-keep:]
            return data[:-keep]
        return data

    def flush(self) -> bytes:
        data, self.pending = self.pending, b""
        return data
