"""Response scrubbing: every real value of the session becomes its sealed token, in the forms upstreams echo.

An upstream that echoes a key rarely echoes only the exact bytes the proxy sent: a
redirect re-encodes the query the proxy put the key in (each library with its own idea of
which characters to escape), a JSON error escapes its slashes, an HTML page its
ampersands (PHP's `htmlspecialchars` writes `'` as `&#039;`), a debug endpoint shows the
`Authorization: Basic` header the proxy built. Recognized, for every value of the session:

- the value itself;
- for a value with characters outside `A-Z a-z 0-9 - . _ ~`, any mix of those characters
  written raw or in any spelling an encoding's grammar allows. Each encoding is defined
  once, below, as a rule from a character to the *shapes* of its escapes (a shape is a
  sequence of atoms: a byte class repeated a bounded or unbounded number of times), and
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
  One pattern per value of up to 256 characters, compiled when the session loads. Each
  character takes the first form that fits (longer shapes first), with no backtracking
  into it (crafted input cannot make the search blow up: a try from one position walks at
  most one escape per character of the value), so in a mixed form a raw escapable
  character followed by what reads as the rest of its own escape (`&` then `amp;`) is
  missed; the raw value as a whole is always found;
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
never held). The holdback window counts at most `STREAM_PADDING` leading zeros per
escape: a whole buffer is matched with any padding, a streamed body split inside an
escape padded with more zeros than that is not.
"""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Iterable
from typing import NamedTuple, Protocol

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_URLSAFE = bytes.maketrans(b"+/", b"-_")
#: Escaped forms are recognized for values up to this length (matching work per response byte is
#: bounded by it); longer values are found raw and in base64 only.
MAX_PATTERN_VALUE = 256
#: Character steps one stream holdback may spend checking whether a tail could grow into an escaped form.
_WALK_BUDGET = 4096
#: Leading zeros of one escape the stream holdback window allows for (whole buffers: any number).
STREAM_PADDING = 32
_DIGITS = b"0123456789"
_HEX = b"0123456789abcdefABCDEF"
_PUNCT = bytes(c for c in range(0x21, 0x7F) if not chr(c).isalnum())
#: JSON's and JavaScript's one-letter escapes.
_SHORT_ESCAPES = {0x08: b"b", 0x0C: b"f", 0x0A: b"n", 0x0D: b"r", 0x09: b"t", 0x0B: b"v", 0x00: b"0"}


# -- the grammar of each encoding ----------------------------------------------------------------
class Atom(NamedTuple):
    """`chars` repeated `lo`..`hi` times (hi None: any number); with `stop`, an optional `;`
    that, when left out, may not be followed by one of `stop` (HTML's numeric references)."""

    chars: bytes
    lo: int = 1
    hi: int | None = 1
    stop: bytes = b""


Shape = tuple[Atom, ...]


def _lit(text: bytes) -> Shape:
    return tuple(Atom(bytes([c])) for c in text)


def _hex_digits(n: int, width: int = 0) -> Shape:
    """The hex digits of `n` (at least `width` of them), each in either case."""
    return tuple(Atom(bytes({c, ord(chr(c).upper())})) for c in b"%0*x" % (width, n))


def _padded(digits: bytes, case: bool) -> Shape:
    """Any number of leading zeros, then the significant digits of a number."""
    sig = digits.lstrip(b"0")
    if not sig:
        return (Atom(b"0", 1, None),)
    return (Atom(b"0", 0, None), *tuple(Atom(bytes({c, ord(chr(c).upper())}) if case else bytes([c])) for c in sig))


def percent_shapes(cp: int, raw: bytes) -> list[Shape]:
    """RFC 3986 percent-encoding of each UTF-8 byte; `+` for a space (HTML forms)."""
    out = [sum((_lit(b"%") + _hex_digits(b, 2) for b in raw), ())]
    if cp == 0x20:
        out.append(_lit(b"+"))
    return out


def backslash_shapes(cp: int, raw: bytes) -> list[Shape]:
    """JSON and JavaScript string escapes: \\uXXXX (surrogate pairs above the BMP), \\u{...}, \\xXX,
    the one-letter escapes, and a backslash before ASCII punctuation (JSON's \\/ \\" \\\\, JS's \\')."""
    if cp < 0x10000:
        units = [cp]
    else:
        units = [0xD800 + ((cp - 0x10000) >> 10), 0xDC00 + ((cp - 0x10000) & 0x3FF)]
    out = [sum((_lit(b"\\u") + _hex_digits(u, 4) for u in units), ())]
    out.append(_lit(b"\\u{") + _padded(b"%x" % cp, True) + _lit(b"}"))
    if cp < 0x100:
        out.append(_lit(b"\\x") + _hex_digits(cp, 2))
    if cp in _SHORT_ESCAPES:
        out.append(_lit(b"\\" + _SHORT_ESCAPES[cp]))
    if cp < 0x80 and cp in _PUNCT:
        out.append(_lit(b"\\" + raw))
    return out


def html_shapes(cp: int, raw: bytes) -> list[Shape]:
    """HTML/XML character references: decimal and hex (`x`/`X`, either case), any leading zeros,
    `;` optional where HTML allows (not before another digit), and the HTML5 named references."""
    out = [
        _lit(b"&#") + _padded(b"%d" % cp, False) + (Atom(b";", 0, 1, _DIGITS),),
        (Atom(b"&"), Atom(b"#"), Atom(b"xX"), *_padded(b"%x" % cp, True), Atom(b";", 0, 1, _HEX)),
    ]
    out += [_lit(b"&" + name.encode()) for name in _html_names().get(cp, ())]
    return out


#: Every encoding a value's escapable characters are recognized in. Adding one here adds it to
#: the regex and to the stream holdback at once.
ENCODINGS = (percent_shapes, backslash_shapes, html_shapes)


@functools.lru_cache(maxsize=1)
def _html_names() -> dict[int, tuple[str, ...]]:
    """Code point -> its HTML5 named references (imported on the first escapable value only)."""
    from html.entities import html5

    names: dict[int, list[str]] = {}
    for name, text in html5.items():
        # Named references with their `;` only: HTML reads a legacy `&amp` without one too, but then
        # a value's own raw `&amp` (or `&lt`) would read as one escaped character, and the rest miss.
        if len(text) == 1 and name.endswith(";"):
            names.setdefault(ord(text), []).append(name)
    return {cp: tuple(v) for cp, v in names.items()}


@functools.lru_cache(maxsize=512)
def char_shapes(cp: int, raw: bytes) -> tuple[Shape, ...]:
    """Every shape of one escapable character (code point `cp`, UTF-8 `raw`), in match order:
    escapes longest-first (so `&amp;` is tried before `&amp`), the raw bytes last."""
    escapes = [s for enc in ENCODINGS for s in enc(cp, raw)] if cp >= 0 else percent_shapes(-1, raw)
    escapes.sort(key=lambda s: -sum(a.lo for a in s))
    return (*tuple(escapes), _lit(raw))


def _atom_regex(a: Atom) -> bytes:
    cls = b"[" + b"".join(re.escape(bytes([c])) for c in a.chars) + b"]" if len(a.chars) > 1 else re.escape(a.chars)
    if a.stop:
        return b"(?:" + cls + b"|(?![" + re.escape(a.stop) + b"]))"
    if (a.lo, a.hi) == (1, 1):
        return cls
    return cls + (
        b"*"
        if a.lo == 0 and a.hi is None
        else b"+"
        if a.hi is None and a.lo == 1
        else b"{%d,%s}" % (a.lo, b"" if a.hi is None else b"%d" % a.hi)
    )


def shape_regex(shape: Shape) -> bytes:
    return b"".join(_atom_regex(a) for a in shape)


_PARTIAL, _FAIL = -1, -2


def _walk(shape: Shape, data: bytes, pos: int) -> tuple[int, int]:
    """Greedy walk of one shape from `pos` (as the regex takes it): (end, steps), end is _PARTIAL if
    `data` ends while the shape could still complete, _FAIL if it cannot match."""
    n = len(data)
    steps = 0
    for a in shape:
        if a.stop:
            if pos == n:
                return _PARTIAL, steps
            if data[pos] in a.chars:
                pos += 1
            elif data[pos] in a.stop:
                return _FAIL, steps
            continue
        k = 0
        hi = n - pos if a.hi is None else min(a.hi, n - pos)
        while k < hi and data[pos + k] in a.chars:
            k += 1
        steps += k + 1
        pos += k
        if pos == n and (a.hi is None or k < a.hi):
            return _PARTIAL, steps
        if k < a.lo:
            return _FAIL, steps
    return pos, steps


def _value_units(value: bytes) -> list[tuple[int, bytes]]:
    """(code point, UTF-8 bytes) per character of `value`; bytes that are not UTF-8 are units of
    their own (code point -1: raw and percent-encoded only)."""
    out: list[tuple[int, bytes]] = []
    for ch in value.decode("utf-8", "surrogateescape"):
        cp = ord(ch)
        if 0xDC80 <= cp <= 0xDCFF:
            out.append((-1, bytes([cp - 0xDC00])))
        else:
            out.append((cp, ch.encode()))
    return out


def b64_cores(data: bytes) -> list[bytes]:
    """The base64 of `data` preceded by 0, 1 or 2 bytes, without the characters neighbours influence."""
    out = []
    for k in range(3):
        enc = base64.b64encode(b"\0" * k + data)
        out.append(enc[(4 if k else 0) : (len(data) + k) // 3 * 4])
    return out


def _window(shape: Shape) -> int:
    """The longest stretch of data the stream holdback lets `shape` span."""
    return sum(STREAM_PADDING + 1 if a.hi is None else a.hi for a in shape)


class _Pattern:
    """The escaped forms of one value: a compiled regex to replace them, shapes to spot a partial one."""

    __slots__ = ("first", "max_len", "regex", "units")

    def __init__(self, value: bytes) -> None:
        self.units = tuple(
            (_lit(raw),) if len(raw) == 1 and raw[0] in _UNRESERVED else char_shapes(cp, raw)
            for cp, raw in _value_units(value)
        )
        # Atomic groups, escapes before the raw character: no backtracking into a character once
        # matched, so a value like `\\\\...` cannot make the search exponential on crafted input.
        # (The raw value is also a literal needle of its own, for the one form this choice could miss.)
        self.regex = re.compile(
            b"".join(
                shape_regex(u[0]) if len(u) == 1 else b"(?>" + b"|".join(shape_regex(s) for s in u) + b")"
                for u in self.units
            )
        )
        self.first = re.compile(
            b"["
            + b"".join(re.escape(bytes([c])) for c in sorted({c for s in self.units[0] for c in s[0].chars}))
            + b"]"
        )
        self.max_len = sum(max(_window(s) for s in u) for u in self.units)

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
        character in the first shape that fits, no backtracking) reaches the end of `data` first."""
        n = len(data)
        pos = start
        for shapes in self.units:
            if pos == n or budget <= 0:
                return True, budget
            for shape in shapes:
                end, steps = _walk(shape, data, pos)
                budget -= steps
                if end == _PARTIAL:
                    return True, budget
                if end != _FAIL:
                    pos = end
                    break
            else:
                return False, budget
        return False, budget  # a whole match (already replaced, or about to be by the next scrub)


class Scrubber:
    """Finds every value of a session (in every recognized form) and puts its sealed token in its place."""

    __slots__ = ("active", "literals", "needles", "patterns", "tail_bytes")

    def __init__(self, secrets: Iterable[tuple[bytes, bytes, str]]) -> None:
        """`secrets`: (value, sealed, name) triples."""
        literals: list[tuple[bytes, bytes, str]] = []
        patterns: list[tuple[_Pattern, bytes, str, int]] = []
        for value, sealed, name in secrets:
            literals.append((value, sealed, name))
            if len(value) <= MAX_PATTERN_VALUE and any(
                c not in _UNRESERVED for c in value
            ):  # (a regex template: escape backslashes; tokens have none)
                patterns.append((_Pattern(value), sealed.replace(b"\\", b"\\\\"), name, len(value)))
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
