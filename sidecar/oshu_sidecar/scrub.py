"""Response scrubbing: every real value of the session becomes its sealed token, in the forms upstreams echo.

An upstream that echoes a key rarely echoes only the exact bytes the proxy sent: a
redirect re-encodes the query the proxy put the key in (each library with its own idea of
which characters to escape), a JSON error escapes its slashes, an HTML page its
ampersands (PHP's `htmlspecialchars` writes `'` as `&#039;`), a debug endpoint shows the
`Authorization: Basic` header the proxy built. Recognized, for every value of the session:

- the value itself;
- for a value with characters outside `A-Z a-z 0-9 - . _ ~`, any mix of those characters
  written raw or in any spelling an encoding's grammar allows. Each encoding is defined
  once, in escapes.py, as a rule from a character to the *shapes* of its escapes, and
  the regex and the stream holdback walker are both generated from those shapes:
  percent-encoding of each UTF-8 byte (hex digits in either case), `+` for a space;
  backslash escapes of JSON and JavaScript strings (`\\uXXXX` in either case and as
  surrogate pairs, `\\u{...}` with any zero padding, `\\xXX`, the short escapes, and a
  backslash before any ASCII punctuation: `\\/`, `\\"`, `\\'`); HTML and XML character
  references: decimal and hexadecimal (`x` or `X`, either hex case) with any number of
  leading zeros, with or without the `;` where HTML allows it (not before a character
  that would continue the number), and every named reference of the HTML5 table for that
  character, with its `;` (`&apos;`, `&sol;`, `&AMP;`: a legacy `&amp` without one would
  make a value's own raw `&amp` ambiguous).
  One pattern per value of up to 256 characters, compiled when the session loads, linear
  in the data (no backtracking into a matched character; see escapes.py for the one mixed
  form this misses); the raw value as a whole is always found;
- base64 (standard and URL-safe alphabets) at each of the three byte alignments: the part
  of the encoding that depends on the value alone, which covers `Authorization: Basic`.
  At most two bytes of the value at each end share a base64 character with their
  neighbours and are not recognized on their own.

Most API keys use only unreserved characters: for them scrubbing is a handful of `in`
scans (C speed) and nothing is compiled. Matches are replaced by the sealed token (the
base64 forms by the same alignment of the token's base64). Everything here is built once
per session by `Scrubber`; the per-response work is `scrub()` on whole buffers or a
`StreamScrubber` for streamed bodies, which holds back only a tail that could still grow
into a match (no form contains a line break, so an SSE event ending in a blank line is
never held). The holdback window counts at most `escapes.STREAM_PADDING` leading zeros per
escape: a whole buffer is matched with any padding, a streamed body split inside an
escape padded with more zeros than that is not.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Protocol

from .escapes import UNRESERVED, ValuePattern

_URLSAFE = bytes.maketrans(b"+/", b"-_")
#: Escaped forms are recognized for values up to this length (matching work per response byte is
#: bounded by it); longer values are found raw and in base64 only.
MAX_PATTERN_VALUE = 256


def b64_cores(data: bytes) -> list[bytes]:
    """The base64 of `data` preceded by 0, 1 or 2 bytes, without the characters neighbours influence."""
    out = []
    for k in range(3):
        enc = base64.b64encode(b"\0" * k + data)
        out.append(enc[(4 if k else 0) : (len(data) + k) // 3 * 4])
    return out


class Scrubber:
    """Finds every value of a session (in every recognized form) and puts its sealed token in its place."""

    __slots__ = ("active", "literals", "needles", "patterns", "tail_bytes")

    def __init__(self, secrets: Iterable[tuple[bytes, bytes, str]]) -> None:
        """`secrets`: (value, sealed, name) triples."""
        literals: list[tuple[bytes, bytes, str]] = []
        patterns: list[tuple[ValuePattern, bytes, str, int]] = []
        for value, sealed, name in secrets:
            literals.append((value, sealed, name))
            if len(value) <= MAX_PATTERN_VALUE and any(
                c not in UNRESERVED for c in value
            ):  # (a regex template: escape backslashes; tokens have none)
                patterns.append((ValuePattern(value), sealed.replace(b"\\", b"\\\\"), name, len(value)))
            for core, sealed_core in zip(b64_cores(value), b64_cores(sealed), strict=False):
                if not core:  # a value of a few bytes has no base64 core at some alignment ("" is in everything)
                    continue
                literals.append((core, sealed_core, name))
                safe = core.translate(_URLSAFE)
                if safe != core:
                    literals.append((safe, sealed_core.translate(_URLSAFE), name))
        # Patterns first (a value with escapable characters may contain an unreserved-only one,
        # never the reverse), then literals; each longest first, so a value containing another
        # is replaced whole.
        literals.sort(key=lambda p: -len(p[0]))
        patterns.sort(key=lambda p: -p[3])
        self.literals = tuple(literals)
        self.patterns = tuple(patterns)
        self.needles = tuple(p[0] for p in literals)
        self.active = bool(literals)
        #: Bytes that occur in some form: a piece ending in any other byte (a line break, say) holds nothing back.
        self.tail_bytes = frozenset(b"".join(self.needles)) | frozenset(
            c for p in patterns for u in p[0].units for s in u for a in s for c in a.chars
        )

    def scrub(self, data: bytes, names: list[str]) -> bytes:
        """`data` with every recognized form of every value replaced; appends the names found to `names`."""
        for pattern, sealed, name, _ in self.patterns:
            if pattern.regex.search(data) is not None:
                data = pattern.regex.sub(sealed, data)
                if name not in names:
                    names.append(name)
        for needle, repl, name in self.literals:
            if needle in data:
                data = data.replace(needle, repl)
                if name not in names:
                    names.append(name)
        return data

    def holdback(self, data: bytes) -> int:
        """Length of the tail of `data` that could still grow into a recognized form."""
        if not data or data[-1] not in self.tail_bytes:
            return 0
        best = holdback(data, self.needles)
        for pattern, _, _, _ in self.patterns:
            best = pattern.holdback(data, best)
        return best

    def stream(self) -> StreamScrubber:
        return StreamScrubber(self)


def holdback(data: bytes, needles: Iterable[bytes]) -> int:
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


class _Replacer(Protocol):
    def scrub(self, data: bytes, names: list[str]) -> bytes: ...

    def holdback(self, data: bytes) -> int: ...


class StreamScrubber:
    """Scrubs a body that arrives in pieces, including forms split across pieces.

    `scrubber` is anything with `scrub(data, names)` and `holdback(data)`: a session's
    `Scrubber`, or the sealed-token needles of a streamed request body (substitute.py).
    """

    __slots__ = ("names", "pending", "scrubber")

    def __init__(self, scrubber: _Replacer) -> None:
        self.scrubber = scrubber
        self.pending = b""
        self.names: list[str] = []

    def feed(self, data: bytes) -> bytes:
        if self.pending:
            data = self.pending + data
            self.pending = b""
        data = self.scrubber.scrub(data, self.names)
        keep = self.scrubber.holdback(data)
        if keep:
            self.pending = data[-keep:]
            return data[:-keep]
        return data

    def flush(self) -> bytes:
        data, self.pending = self.pending, b""
        return data
