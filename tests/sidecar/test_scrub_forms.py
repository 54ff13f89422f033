"""Scrubbing every spelling an encoding allows, not a list of spellings (issue 12, item 6).

Before: the scrubber knew `&#39;`, `&#x27;` and `&apos;` for `'` and nothing else, so a key
with a `'` echoed through PHP's `htmlspecialchars(..., ENT_QUOTES)` (`&#039;`) reached the
client, as did any zero-padded reference (`&#047;`, `&#x002F;`). The forms here are made
by independent encoders (the stdlib's, and spellings written out by hand) and checked
against independent decoders (`html.unescape`, `json.loads`, `unquote`) before they are
used, so the test does not share a definition with the code under test.
"""

from __future__ import annotations

import html
import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote, unquote

import pytest

from oshu_contract.session import SecretBinding
from oshu_sidecar.scrub import Scrubber
from oshu_testkit.leaks import scan_sidecar
from oshu_testkit.scripted import ScriptedUpstream, header_value, read_until_close, tls_client
from oshu_testkit.sessions import new_secret, new_session
from oshu_testkit.sidecar_process import SidecarProcess
from oshu_testkit.upstreams import HOST

SEALED = b"SEALED_0123456789abcdefghijklmn"
#: Every escapable ASCII character and a few non-ASCII ones (two-, three- and four-byte UTF-8).
VALUE = "k/'\"&<>\\ %+=?#;:@!$()*,[]{}|^`" + "é€😀" + "z"


def html_numeric(cp: int, rng: random.Random, semicolon: bool = True) -> str:
    """A decimal or hex reference with random zero padding and case, as HTML reads them."""
    zeros = "0" * rng.choice([0, 1, 2, 3, 7, 40])
    if rng.random() < 0.5:
        digits = zeros + str(cp)
        ref = "&#" + digits
    else:
        digits = "".join(c.upper() if rng.random() < 0.5 else c for c in zeros + format(cp, "x"))
        ref = "&#" + rng.choice("xX") + digits
    return ref + (";" if semicolon else "")


def js_escape(ch: str, rng: random.Random) -> str:
    """A JSON or JavaScript string escape of one character, hex digits in random case."""
    cp = ord(ch)
    options = ["\\u{" + "0" * rng.choice([0, 2, 5]) + format(cp, "x") + "}"]
    options.append(json.dumps(ch, ensure_ascii=True)[1:-1])  # \uXXXX, surrogate pairs, \" \\ \n
    if cp < 0x100:
        options.append(f"\\x{cp:02x}")
    if ch in "'\"/\\&<>":
        options.append("\\" + ch)
    text = rng.choice(options)
    return "".join(c.upper() if c in "abcdef" and rng.random() < 0.5 else c for c in text)


def _decodes_to(piece: str, kind: str, ch: str) -> bool:
    """Whether one escaped character decodes back to `ch` with the decoder of its encoding."""
    if kind == "percent":
        return unquote(piece) == ch
    if kind == "js":  # ECMAScript string escapes; JSON's are the \\uXXXX and \\" \\\\ \\/ subset
        if piece.startswith("\\u{"):
            return chr(int(piece[3:-1], 16)) == ch
        if piece.startswith("\\x"):
            return chr(int(piece[2:], 16)) == ch
        if piece.startswith("\\u") or piece[1:] in '"\\/':
            return json.loads('"' + piece + '"') == ch
        return len(piece) == 2 and piece[1] == ch and not ch.isalnum()  # identity escape
    return html.unescape(piece + "\x01") == ch + "\x01"


def mixed_form(value: str, rng: random.Random) -> str:
    """`value` with each escapable character written raw or in a random encoding, as an encoder could.

    A reference without `;` is only used where HTML would not read on into the next character,
    and a raw backslash is never followed by an escape (no encoder writes that)."""
    out: list[str] = []
    for i, ch in enumerate(value):
        if ch.isalnum() and ord(ch) < 128:
            out.append(ch)
            continue
        after = value[i + 1] if i + 1 < len(value) else ""
        kind = rng.choice(["raw", "percent", "js", "html", "html-bare", "html-named"])
        if out and out[-1] == "\\" and kind == "js":
            kind = "raw"
        if kind == "percent":
            piece = "".join(rng.choice(["%%%02x", "%%%02X"]) % b for b in ch.encode())
        elif kind == "js":
            piece = js_escape(ch, rng)
        elif kind == "html":
            piece = html_numeric(ord(ch), rng)
        elif kind == "html-bare" and after and after not in "0123456789abcdefABCDEF;":
            piece = html_numeric(ord(ch), rng, semicolon=False)
        elif kind == "html-named" and ch in "&<>\"'/":
            piece = html.escape(ch, quote=True) if ch != "/" else "&sol;"
        else:
            kind, piece = "raw", ch
        assert kind == "raw" or _decodes_to(piece, kind, ch), (piece, ch)
        out.append(piece)
    return "".join(out)


def test_php_htmlspecialchars_output_is_scrubbed() -> None:
    """The reported case: `htmlspecialchars($key, ENT_QUOTES)` writes `'` as `&#039;`."""
    value = b"sk-it's/a&key"
    scrubber = Scrubber([(value, SEALED, "K")])
    php = b"sk-it&#039;s/a&amp;key"
    for text in (
        php,
        php.replace(b"/", b"&#047;"),
        php.replace(b"/", b"&#x002F;"),
        php.replace(b"/", b"&#X002f;"),
        b"sk-it&#0000000000039;s&#x2f;a&#38;key",
        b"sk-it&#39s&#47a&#x26key",
    ):
        assert html.unescape(text.decode()) == value.decode()  # what a browser shows: the key
        names: list[str] = []
        assert scrubber.scrub(b"<p>" + text + b"</p>", names) == b"<p>" + SEALED + b"</p>", text
        assert names == ["K"]


def test_random_mixes_of_every_encoding_are_scrubbed_whole_and_streamed() -> None:
    """500 generated spellings of a value with every escapable character; each decodes to the value."""
    scrubber = Scrubber([(VALUE.encode(), SEALED, "K")])
    rng = random.Random(12)
    for i in range(500):
        form = mixed_form(VALUE, rng)
        text = ('data: {"echo": "' + form + '"}\n\n').encode()
        names: list[str] = []
        out = scrubber.scrub(text, names)
        assert out == b'data: {"echo": "' + SEALED + b'"}\n\n', form
        if i % 25 == 0:  # streamed, cut at every point
            for cut in range(len(text) + 1):
                stream = scrubber.stream()
                assert stream.feed(text[:cut]) + stream.feed(text[cut:]) + stream.flush() == out, (form, cut)


@pytest.mark.parametrize("encode", ["json", "percent-lower", "percent-upper", "html-escape"])
def test_standard_encoders_output_is_scrubbed(encode: str) -> None:
    """What the stdlib's encoders write, including non-ASCII characters as JSON surrogate pairs."""
    scrubber = Scrubber([(VALUE.encode(), SEALED, "K")])
    form = {
        "json": json.dumps(VALUE)[1:-1],  # ensure_ascii: \u00e9, \u20ac, \ud83d\ude00
        "percent-lower": quote(VALUE, safe="").lower().replace("%", "%"),
        "percent-upper": quote(VALUE, safe=""),
        "html-escape": html.escape(VALUE).encode("ascii", "xmlcharrefreplace").decode(),
    }[encode]
    decoded = {"json": lambda f: json.loads('"' + f + '"'), "html-escape": html.unescape}.get(encode, unquote)(form)
    assert decoded == VALUE
    assert scrubber.scrub(form.encode(), []) == SEALED


def test_near_misses_are_left_alone() -> None:
    """Another character, a reference that reads on into more digits, a broken escape: not the value."""
    value = b"a'b"
    scrubber = Scrubber([(value, SEALED, "K")])
    for text in (b"a&#0040;b", b"a&#x028;b", b"a&#391b", b"a&#x27fb", b"a%2b", b"a\\u00277b", b"a&#;b", b"a&apos b"):
        assert scrubber.scrub(text, []) == text, text


def test_padding_cannot_make_scrubbing_blow_up() -> None:
    """Long zero runs against a value of 256 escapable characters: each try walks a bounded number of escapes.

    (No timing assertion: with backtracking across characters each call would outlast the test timeout.)
    """
    value = b"'" * 255 + b"x"
    scrubber = Scrubber([(value, SEALED, "K")])
    crafted = (b"&#" + b"0" * 500 + b"39;") * 300 + b"y"
    for _ in range(20):
        assert scrubber.scrub(crafted, []) == crafted
    stream = scrubber.stream()
    out = b"".join(stream.feed(crafted[i : i + 997]) for i in range(0, len(crafted), 997)) + stream.flush()
    assert out == crafted
    assert scrubber.scrub(crafted[:-1] + b"x", []) != crafted[:-1] + b"x"  # one more char and it is the value


def padded_everywhere(head: bytes, body: bytes) -> bytes:
    """An upstream that writes the key it received as PHP's htmlspecialchars would, in every corner."""
    v = header_value(head, b"x-api-key").decode()
    php = html.escape(v, quote=True).replace("&#x27;", "&#039;").replace("/", "&#x002F;").encode()
    payload = b"<p>invalid key " + php + b"</p>\n"
    chunks = b"".join(
        b"%x\r\n%b\r\n" % (len(payload[i : i + 3]), payload[i : i + 3]) for i in range(0, len(payload), 3)
    )
    return (
        b"HTTP/1.1 103 Early Hints\r\nLink: </hint?k=" + php + b">\r\n\r\n"
        b"HTTP/1.1 302 Bad " + php + b"\r\nLocation: https://api.oshu.test/x?k=" + php + b"\r\n"
        b"X-Echo: "
        + php
        + b"\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n"
        + chunks
        + b"0\r\nX-T: "
        + php
        + b"\r\n\r\n"
    )


@pytest.fixture
def scripted(tmp_path: Path) -> Iterator[Callable[..., tuple[ScriptedUpstream, SidecarProcess]]]:
    """A ScriptedUpstream for HOST and a sidecar reaching HOST there; logs and metrics leak-scanned."""
    started: list[tuple[ScriptedUpstream, SidecarProcess, list[str]]] = []

    def make(
        respond: Callable[[bytes, bytes], bytes], *secrets: SecretBinding
    ) -> tuple[ScriptedUpstream, SidecarProcess]:
        up = ScriptedUpstream(tmp_path / f"up{len(started)}", [HOST], respond).__enter__()
        sc = SidecarProcess(
            new_session(*secrets),
            directory=tmp_path / f"sc{len(started)}",
            connect_to=up.connect_to([HOST]),
            upstream_ca_files=[up.ca.cert_path],
        )
        started.append((up, sc, [s.value for s in secrets]))
        sc.start()
        return up, sc

    yield make
    for up, sc, values in started:
        try:
            scan_sidecar(sc, values)
        finally:
            sc.stop()
            up.__exit__()


def test_zero_padded_references_are_scrubbed_in_every_corner_of_a_response(
    scripted: Callable[..., tuple[ScriptedUpstream, SidecarProcess]],
) -> None:
    """Body (3-byte chunks, so escapes are split), header, Location, trailer, 103 hint, reason phrase."""
    key = new_secret("API_KEY", [HOST], value='sk-it\'s/a<b>&"c"')
    up, sc = scripted(padded_everywhere, key)
    with tls_client(sc, f"{HOST}:443") as c:
        c.send(
            b"GET /leak HTTP/1.1\r\nHost: api.oshu.test\r\nx-api-key: %b\r\nConnection: close\r\n\r\n"
            % key.sealed.encode()
        )
        seen = read_until_close(c)
    assert up.received and header_value(up.received[0][0], b"x-api-key") == key.value.encode()
    php = html.escape(key.value, quote=True).replace("&#x27;", "&#039;").replace("/", "&#x002F;").encode()
    assert b"&#039;" in php and php not in seen
    assert key.value not in html.unescape(seen.decode("latin-1"))
    assert key.value.encode() not in seen and quote(key.value, safe="").encode() not in seen
    t = key.sealed.encode()
    for where in (
        b"Link: </hint?k=" + t,
        b"302 Bad " + t,
        b"Location: https://api.oshu.test/x?k=" + t,
        b"X-Echo: " + t,
        b"X-T: " + t,
    ):
        assert where in seen, where
    assert _dechunk(seen.split(b"\r\n\r\n", 2)[2]).startswith(b"<p>invalid key " + t + b"</p>\n")


def _dechunk(data: bytes) -> bytes:
    out = b""
    for _ in range(10_000):
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return out
        out += rest[:size]
        data = rest[size + 2 :]
    raise AssertionError("too many chunks")
