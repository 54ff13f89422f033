"""The transparent listener's first-bytes reader (clienthello.py): real ClientHellos from Python's ssl
(captured through a MemoryBIO, no socket), every prefix, fragmented records, hand-built edge cases
and mutated garbage. The parser answers a ClientHello, Incomplete, or raises ClientHelloError: nothing else."""

from __future__ import annotations

import random
import ssl

import pytest

from oshu_sidecar.clienthello import (
    HTTP,
    MAX_HELLO,
    MAX_PEEK,
    OTHER,
    TLS,
    ClientHello,
    ClientHelloError,
    Incomplete,
    parse_client_hello,
    sniff,
)


def real_hello(
    server_name: str | None = "api.oshu.test",
    alpn: list[str] | None = None,
    max_version: ssl.TLSVersion | None = None,
) -> bytes:
    """The first flight of a real Python/OpenSSL client, as it would go on the wire."""
    ctx = ssl.create_default_context()
    if server_name is None:
        ctx.check_hostname = False
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if max_version is not None:
        ctx.maximum_version = max_version
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_side=False, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def record(payload: bytes, version: bytes = b"\x03\x01", ctype: int = 22) -> bytes:
    return bytes([ctype]) + version + len(payload).to_bytes(2, "big") + payload


def ext(kind: int, value: bytes) -> bytes:
    return kind.to_bytes(2, "big") + len(value).to_bytes(2, "big") + value


def sni_ext(*names: bytes, name_type: int = 0) -> bytes:
    entries = b"".join(bytes([name_type]) + len(n).to_bytes(2, "big") + n for n in names)
    return ext(0, len(entries).to_bytes(2, "big") + entries)


def built_hello(*extensions: bytes, with_extensions: bool = True, session_id: bytes = b"") -> bytes:
    """A minimal ClientHello record with the given extensions (hand-built edge cases)."""
    body = b"\x03\x03" + bytes(32) + bytes([len(session_id)]) + session_id + b"\x00\x02\x13\x01" + b"\x01\x00"
    if with_extensions:
        exts = b"".join(extensions)
        body += len(exts).to_bytes(2, "big") + exts
    msg = b"\x01" + len(body).to_bytes(3, "big") + body
    return record(msg)


def refragment(hello: bytes, size: int) -> bytes:
    """The same handshake message split into records of at most `size` bytes."""
    msg = hello[5:]
    return b"".join(record(msg[i : i + size]) for i in range(0, len(msg), size))


def outcome(data: bytes) -> ClientHello | Incomplete | str:
    try:
        return parse_client_hello(data)
    except ClientHelloError as e:
        return f"error: {e}"


# -- real hellos ------------------------------------------------------------------------
def test_real_hello_gives_the_server_name_and_its_size() -> None:
    data = real_hello("API.Oshu.TEST", alpn=["h2", "http/1.1"])
    got = parse_client_hello(data + b"more bytes the client sent later")
    assert isinstance(got, ClientHello)
    assert got.server_name == "api.oshu.test"
    assert got.alpn == ("h2", "http/1.1")
    assert not got.ech
    assert got.size == len(data)


def test_real_hello_without_sni() -> None:
    got = parse_client_hello(real_hello(None))
    assert isinstance(got, ClientHello) and got.server_name is None


def test_real_tls12_only_hello() -> None:
    got = parse_client_hello(real_hello("x.wild.oshu.test", max_version=ssl.TLSVersion.TLSv1_2))
    assert isinstance(got, ClientHello) and got.server_name == "x.wild.oshu.test"


def test_every_prefix_is_incomplete_and_asks_for_more() -> None:
    data = real_hello()
    for n in range(len(data)):
        got = parse_client_hello(data[:n])
        assert isinstance(got, Incomplete), n
        assert n < got.needed <= len(data)


@pytest.mark.parametrize("size", [1, 7, 100, 512])
def test_hello_fragmented_over_records(size: int) -> None:
    data = refragment(real_hello("frag.oshu.test"), size)
    got = parse_client_hello(data)
    assert isinstance(got, ClientHello)
    assert got.server_name == "frag.oshu.test" and got.size == len(data)
    for n in range(0, len(data), max(1, len(data) // 50)):
        assert isinstance(parse_client_hello(data[:n]), Incomplete)


# -- sniffing ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"", None),
        (b"\x16", None),
        (b"\x16\x03", TLS),
        (b"\x16\x02\x00", OTHER),
        (b"G", None),
        (b"GET / HTTP/1.", None),
        (b"GET / HTTP/1.1\r", None),
        (b"GET / HTTP/1.1\r\n", HTTP),
        (b"POST http://x/ HTTP/1.0\r\nHost: x\r\n", HTTP),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", OTHER),
        (b"GET  / HTTP/1.1\r\n", OTHER),
        (b"GET / HTTPS", OTHER),
        (b"SSH-2.0-OpenSSH_9.6 Ubuntu\r\n", OTHER),
        (b"\x00\x00\x00\x08\x04\xd2\x16\x2f", OTHER),  # PostgreSQL SSLRequest
        (b"\x80\x2e\x01\x00\x02", OTHER),  # SSLv2-style hello
        (b"A" * 40, OTHER),
    ],
)
def test_sniff(data: bytes, kind: str | None) -> None:
    assert sniff(data) == kind


def test_sniff_real_hello() -> None:
    assert sniff(real_hello()) == TLS


# -- strictness -------------------------------------------------------------------------
def test_hand_built_hello_and_ech_flag() -> None:
    got = parse_client_hello(built_hello(sni_ext(b"a.example"), ext(0xFE0D, b"\x00\x01")))
    assert isinstance(got, ClientHello) and got.server_name == "a.example" and got.ech


def test_hello_without_extensions_block() -> None:
    got = parse_client_hello(built_hello(with_extensions=False))
    assert isinstance(got, ClientHello) and got.server_name is None and got.alpn == ()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (built_hello(sni_ext(b"a.example"), sni_ext(b"b.example")), "appears twice"),
        (built_hello(sni_ext(b"a.example", b"b.example")), "more than one host_name"),
        (built_hello(sni_ext(b"a.example", name_type=1)), "unknown type"),
        (built_hello(sni_ext(b"a.example.")), "not a valid host name"),
        (built_hello(sni_ext(b"caf\xc3\xa9.example")), "not a valid host name"),
        (built_hello(sni_ext(b"a..example")), "not a valid host name"),
        (built_hello(sni_ext(b"")), "not a valid host name"),
        (built_hello(sni_ext(b"a" * 254)), "not a valid host name"),
        (built_hello(ext(0, b"\x00\x00")), "empty server_name"),
        (built_hello(ext(16, b"\x00\x01\x00")), "empty ALPN protocol"),
        (built_hello(session_id=bytes(33)), "longer than 32"),
        (record(b"\x02\x00\x00\x00"), "not ClientHello"),
        (record(b"\x01\x00\x00\x02\x03\x03"), "runs past the end"),
        (record(b"\x01\x00\x00\x02\x03\x03") + b"\x17\x03\x03\x00\x01x", "runs past the end"),
        (record(b"\x01\x00\x00\x05ab", version=b"\x03\x01") + record(b"c", ctype=23), "interrupted"),
        (record(b"abc", ctype=23), "not a TLS handshake record"),
        (record(b"abc", version=b"\x02\x00"), "record version"),
        (b"\x16\x03\x01\x40\x01", "record length"),
        (b"\x16\x03\x01\x00\x00", "record length"),
        (record(b"\x01" + (MAX_HELLO + 1).to_bytes(3, "big")), "exceeds"),
    ],
)
def test_malformed_hellos_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(ClientHelloError, match=message):
        parse_client_hello(data)


def test_data_after_the_hello_in_its_record_is_refused() -> None:
    data = real_hello()
    msg = data[5:] + b"\x00"
    with pytest.raises(ClientHelloError, match="data after the ClientHello"):
        parse_client_hello(record(msg))


def test_oversized_hello_cannot_make_the_parser_ask_beyond_its_bound() -> None:
    # 1-byte records inflate the input five-fold: the parser stops once the peek bound is passed.
    body = b"\x01" + (MAX_HELLO - 10).to_bytes(3, "big") + bytes(MAX_HELLO)
    data = b"".join(record(body[i : i + 1]) for i in range(MAX_PEEK // 6 + 10))
    with pytest.raises(ClientHelloError, match="exceed"):
        parse_client_hello(data)


def test_mutated_and_random_input_never_raises_anything_else() -> None:
    rng = random.Random(1234)
    base = real_hello("mutate.oshu.test", alpn=["http/1.1"])
    seen: set[str] = set()
    for i in range(3000):
        data = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if i % 3 == 0:
            data = data[: rng.randrange(len(data) + 1)]
        got = outcome(bytes(data))
        seen.add(type(got).__name__)
        if isinstance(got, ClientHello):
            assert got.size <= len(data)
    for _ in range(2000):
        got = outcome(bytes(rng.randrange(256) for _ in range(rng.randint(0, 64))))
        assert isinstance(got, (ClientHello, Incomplete, str))
    assert {"ClientHello", "Incomplete", "str"} <= seen  # the mutations did reach every outcome
