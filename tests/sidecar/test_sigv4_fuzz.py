"""Whatever a client sends, the SigV4 code answers with a ProxyError or a result, never another
exception (which would end the connection without the JSON error)."""

from __future__ import annotations

import contextlib
import dataclasses
from urllib.parse import quote

from hypothesis import example, given, settings
from hypothesis import strategies as st

from oshu_sidecar import sigv4
from oshu_sidecar.errors import ProxyError
from oshu_sidecar.sigv4 import Credentials, Wire
from oshu_sidecar.sigv4_stream import ChunkResigner

VALID = (
    "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=A%2F20261130%2Fus-east-1%2Fs3%2Faws4_request"
    "&X-Amz-Date=20261130T000000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Signature=" + "a" * 64
)
AUTH = (
    "AWS4-HMAC-SHA256 Credential=A/20261130/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-date, Signature="
    + "b" * 64
)
PIECES = st.sampled_from(
    [
        "&",
        "=",
        "%",
        "%C2%B2",
        "%2F",
        "X-Amz-",
        "Expires",
        "Date",
        "Signature",
        "Credential",
        "/",
        ";",
        ",",
        " ",
        "²",
        "é",
        "\x00",
        "9" * 9,
        "20261130T000000Z",
        "aws4_request",
        "host",
        "AWS4-HMAC-SHA256",
        "a" * 64,
    ]
)
MUTATED = st.builds(
    lambda base, cut, extra: base[:cut] + "".join(extra) + base[cut:],
    st.sampled_from([VALID, AUTH]),
    st.integers(0, 400),
    st.lists(PIECES | st.text(max_size=8), max_size=6),
)


PARAMS = {
    "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
    "X-Amz-Credential": "A%2F20261130%2Fus-east-1%2Fs3%2Faws4_request",
    "X-Amz-Date": "20261130T000000Z",
    "X-Amz-Expires": "900",
    "X-Amz-SignedHeaders": "host",
    "X-Amz-Signature": "a" * 64,
}
#: A presigned query with any of its values replaced (valid, a piece, any text; percent-encoded or not).
QUERIES = st.fixed_dictionaries(
    {k: st.just(v) | PIECES | st.text(max_size=10) | st.text(max_size=6).map(quote) for k, v in PARAMS.items()}
).map(lambda d: "&".join(f"{k}={v}" for k, v in d.items()))


def _safe(fn: object, *args: object) -> None:
    assert callable(fn)
    with contextlib.suppress(ProxyError):
        fn(*args)


@settings(max_examples=600, deadline=None)
@given(MUTATED | QUERIES, MUTATED)
@example(VALID.replace("X-Amz-Expires=900", "X-Amz-Expires=%C2%B2"), AUTH)  # a Unicode digit: int() refuses it
def test_parsing_never_raises_anything_but_proxy_errors(query: str, auth: str) -> None:
    headers = [("Host", "h"), ("Authorization", auth), ("X-Amz-Date", "20261130T000000Z")]
    _safe(sigv4.parse_signature, headers, query)
    _safe(sigv4.parse_signature, headers[:1], query)
    for h in (headers, headers[:1]):
        try:
            sig = sigv4.parse_signature(h, query)
        except ProxyError:
            continue
        if sig is not None:
            wire = Wire("GET", "/k", query, [*h, ("x-amz-content-sha256", auth[:64])])
            _safe(sigv4.declared_payload, wire, sig)
            _safe(sigv4.verify, wire, sig, Credentials("A", "s"), "UNSIGNED-PAYLOAD")
            _safe(sigv4.check_date, sig, 1.8e9)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.booleans())
def test_chunk_streams_never_raise_anything_but_proxy_errors(body: bytes, trailer: bool) -> None:
    sig = sigv4.parse_signature([("Host", "h"), ("Authorization", AUTH), ("X-Amz-Date", "20261130T000000Z")], "")
    assert sig is not None
    r = ChunkResigner(dataclasses.replace(sig), Credentials("A", "s"), Credentials("B", "t"), trailer=trailer)
    r.real_prev = "0" * 64
    for piece in (body[: len(body) // 2], body[len(body) // 2 :], b"1;chunk-signature=" + b"z" * 64 + b"\r\nx\r\n"):
        try:
            r.feed(piece)
        except ProxyError:
            return
    _safe(r.flush)
