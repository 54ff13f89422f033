"""The grammar of the encodings an upstream may echo a value in, and the per-value pattern built from it.

Each encoding is a rule from a character to the *shapes* of its escapes (a shape is a
sequence of atoms: a byte class repeated a bounded or unbounded number of times); the
regex that replaces a value's escaped forms and the stream holdback walker that spots a
partial one are both generated from those shapes, so adding an encoding to `ENCODINGS`
adds it to both at once. scrub.py lists the forms and uses `ValuePattern`.

Each character of a value takes the first shape that fits (longer shapes first), with no
backtracking into it (crafted input cannot make the search blow up: a try from one
position walks at most one escape per character of the value), so in a mixed form a raw
escapable character followed by what reads as the rest of its own escape (`&` then
`amp;`) is missed; the raw value as a whole is always found (scrub.py's literal needles).
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple

#: Characters no encoding escapes: a value made only of these needs no pattern.
UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
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


def _window(shape: Shape) -> int:
    """The longest stretch of data the stream holdback lets `shape` span."""
    return sum(STREAM_PADDING + 1 if a.hi is None else a.hi for a in shape)


class ValuePattern:
    """The escaped forms of one value: a compiled regex to replace them, shapes to spot a partial one."""

    __slots__ = ("first", "max_len", "regex", "units")

    def __init__(self, value: bytes) -> None:
        self.units = tuple(
            (_lit(raw),) if len(raw) == 1 and raw[0] in UNRESERVED else char_shapes(cp, raw)
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
