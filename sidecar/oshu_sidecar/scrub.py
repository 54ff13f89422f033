"""Response scrubbing: every real value of the session becomes its sealed token, in the forms upstreams echo.

An upstream that echoes a key rarely echoes only the exact bytes the proxy sent: a
redirect re-encodes the query the proxy put the key in (each library with its own idea of
which characters to escape), a JSON error escapes its slashes, an HTML page its
ampersands, a debug endpoint shows the `Authorization: Basic` header the proxy built.
Recognized, for every value of the session:

- the value itself;
- for a value with characters outside `A-Z a-z 0-9 - . _ ~`, any mix of those characters
  written raw, percent-encoded (either hex case), as `+` for a space, JSON-escaped
  (`\\/`, `\\"`, `\\\\`, `\\u00XX`) or as HTML character references: one pattern per value
  of up to 256 characters, compiled when the session loads. Each character takes the
  longest form that fits, with no backtracking into it (crafted input cannot make the
  search blow up; a try from one position costs at most one step per character of the
  value), so in a mixed form a raw escapable character followed by what reads as the rest
  of its own escape (`&` then `amp;`) is missed; the raw value as a whole is always found;
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
never held).
"""

from __future__ import annotations

import base64
import itertools
import re
from typing import Iterable, Protocol

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_URLSAFE = bytes.maketrans(b"+/", b"-_")
#: Escaped forms are recognized for values up to this length (matching work per response byte is
#: bounded by it); longer values are found raw and in base64 only.
MAX_PATTERN_VALUE = 256
#: Character steps one stream holdback may spend checking whether a tail could grow into an escaped form.
_WALK_BUDGET = 4096
_HTML_NAMED = {ord("&"): b"&amp;", ord("<"): b"&lt;", ord(">"): b"&gt;", ord('"'): b"&quot;", ord("'"): b"&apos;"}


def _case_variants(text: bytes) -> set[bytes]:
    """`text` with every ASCII letter in either case (hex digits of escapes: a handful of variants)."""
    options = [(bytes([c]).lower(), bytes([c]).upper()) if chr(c).isalpha() else (bytes([c]),) for c in text]
    return {b"".join(combo) for combo in itertools.product(*options)}


def char_forms(c: int) -> tuple[bytes, ...]:
    """Every way a reserved character is commonly written in a URL, JSON or HTML; longest first."""
    h = b"%02X" % c
    forms = {bytes([c]), b"&#%d;" % c}
    forms |= _case_variants(b"%" + h)
    forms |= {b"\\u" + v for v in _case_variants(b"00" + h)}
    forms |= {b"&#" + v + b";" for v in _case_variants(b"x" + h)}
    if c == 0x20:
        forms.add(b"+")
    if c in b'"\\/':
        forms.add(b"\\" + bytes([c]))
    if c in _HTML_NAMED:
        forms.add(_HTML_NAMED[c])
    return tuple(sorted(forms, key=lambda f: (-len(f), f)))


def b64_cores(data: bytes) -> list[bytes]:
    """The base64 of `data` preceded by 0, 1 or 2 bytes, without the characters neighbours influence."""
    out = []
    for k in range(3):
        enc = base64.b64encode(b"\0" * k + data)
        out.append(enc[(4 if k else 0):(len(data) + k) // 3 * 4])
    return out


class _Pattern:
    """The escaped forms of one value: a compiled regex to replace them, units to spot a partial one."""

    __slots__ = ("regex", "units", "first", "max_len")

    def __init__(self, value: bytes) -> None:
        self.units = tuple((bytes([c]),) if c in _UNRESERVED else char_forms(c) for c in value)
        # Atomic groups, longest form first: no backtracking into a character once matched, so a
        # value like `\\\\...` cannot make the search exponential on crafted input. (The raw value
        # is also a literal needle of its own, for the one form greedy choice could miss.)
        self.regex = re.compile(b"".join(
            re.escape(u[0]) if len(u) == 1 else b"(?>" + b"|".join(re.escape(f) for f in u) + b")"
            for u in self.units))
        self.first = re.compile(b"[" + b"".join(re.escape(f[:1]) for f in set(self.units[0])) + b"]")
        self.max_len = sum(len(u[0]) for u in self.units)

    def holdback(self, data: bytes, best: int) -> int:
        """Length of the longest suffix of `data` longer than `best` that could grow into a match.

        The work is bounded (`_WALK_BUDGET` character steps): past it, the tail from the
        current candidate on is held back unexamined, which is never unsafe, only later.
        """
        n = len(data)
        lo = max(0, n - self.max_len + 1)
        budget = _WALK_BUDGET
        for m in self.first.finditer(data, lo, n - best):
            could_grow, budget = self._partial(data, m.start(), budget)
            if could_grow:
                return n - m.start()
        return best

    def _partial(self, data: bytes, start: int, budget: int) -> tuple[bool, int]:
        """(whether data[start:] could still grow into a match, budget left): the regex's walk (each
        character in the longest form that fits, no backtracking) reaches the end of `data` first."""
        n = len(data)
        pos = start
        for forms in self.units:
            if pos == n or budget <= 0:
                return True, budget
            budget -= 1
            rest = n - pos
            for form in forms:
                if len(form) <= rest:
                    if data.startswith(form, pos):
                        pos += len(form)
                        break
                elif form.startswith(data[pos:]):
                    return True, budget
            else:
                return False, budget
        return False, budget  # a whole match (already replaced, or about to be by the next scrub)


class Scrubber:
    """Finds every value of a session (in every recognized form) and puts its sealed token in its place."""

    __slots__ = ("literals", "patterns", "needles", "active", "tail_bytes")

    def __init__(self, secrets: Iterable[tuple[bytes, bytes, str]]) -> None:
        """`secrets`: (value, sealed, name) triples."""
        literals: list[tuple[bytes, bytes, str]] = []
        patterns: list[tuple[_Pattern, bytes, str, int]] = []
        for value, sealed, name in secrets:
            literals.append((value, sealed, name))
            if len(value) <= MAX_PATTERN_VALUE and any(c not in _UNRESERVED for c in value):  # (a regex template: escape backslashes; tokens have none)
                patterns.append((_Pattern(value), sealed.replace(b"\\", b"\\\\"), name, len(value)))
            for core, sealed_core in zip(b64_cores(value), b64_cores(sealed)):
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
            b"".join(f for p in patterns for u in p[0].units for f in u))

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

    def stream(self) -> "StreamScrubber":
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

    __slots__ = ("scrubber", "pending", "names")

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
