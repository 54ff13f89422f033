"""aws-chunked re-signing against the published AWS example (S3 API reference, "Signature
Calculations for the Authorization Header: Transferring Payload in Multiple Chunks")."""

from __future__ import annotations

import dataclasses
import random

import pytest

from oshu_sidecar import sigv4
from oshu_sidecar.errors import ProxyError
from oshu_sidecar.replay import ReplayCache
from oshu_sidecar.sigv4 import Credentials, Wire
from oshu_sidecar.sigv4_stream import ChunkResigner

DOC = Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
REAL = Credentials("AKIAREALREALREAL0002", "a-real-secret/that+is/not/the/doc/one00")
SEED = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
CHUNK_SIGS = (
    "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
    "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
    "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
)
HEADERS = [
    ("Host", "s3.amazonaws.com"),
    ("x-amz-date", "20130524T000000Z"),
    ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
    (
        "Authorization",
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders="
        "content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;"
        f"x-amz-storage-class, Signature={SEED}",
    ),
    ("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"),
    ("Content-Encoding", "aws-chunked"),
    ("x-amz-decoded-content-length", "66560"),
    ("Content-Length", "66824"),
]


def _body(sigs: tuple[str, ...]) -> bytes:
    sizes = (65536, 1024, 0)
    return b"".join(
        b"%x;chunk-signature=%s\r\n%s\r\n" % (n, s.encode(), b"a" * n) for n, s in zip(sizes, sigs, strict=True)
    )


def _doc_signature() -> sigv4.Signature:
    sig = sigv4.parse_signature(HEADERS, "")
    assert sig is not None
    return sig


def test_the_published_seed_signature_verifies() -> None:
    sig = _doc_signature()
    wire = Wire("PUT", "/examplebucket/chunkObject.txt", "", HEADERS)
    sigv4.verify(wire, sig, DOC, "STREAMING-AWS4-HMAC-SHA256-PAYLOAD")


def _resigner(sealed: Credentials, sig: sigv4.Signature) -> ChunkResigner:
    r = ChunkResigner(sig, sealed, REAL)
    r.real_prev = "0" * 64  # the real head's signature (any 64 hex digits for this test)
    return r


def test_published_chunks_verify_and_resign_in_any_split() -> None:
    body = _body(CHUNK_SIGS)
    assert len(body) == 66824
    whole = _resigner(DOC, _doc_signature())
    out = whole.feed(body) + whole.flush()
    assert len(out) == len(body) and CHUNK_SIGS[0].encode() not in out
    # the output is a valid chain under the real key, seeded with the real head signature
    real_sig = sigv4.Signature(
        **{**{f: getattr(_doc_signature(), f) for f in sigv4.Signature.__slots__}, "signature": "0" * 64}
    )
    check = ChunkResigner(real_sig, REAL, REAL)
    check.real_prev = "1" * 64
    check.feed(out)
    check.flush()
    rng = random.Random(5)
    for _ in range(20):
        r = _resigner(DOC, _doc_signature())
        pieces, pos = [], 0
        while pos < len(body):
            step = rng.choice([1, 2, 7, 100, 4096, 70000])
            pieces.append(r.feed(body[pos : pos + step]))
            pos += step
        assert b"".join(pieces) + r.flush() == out


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b.replace(b"aaaa", b"aaab", 1),  # data altered
        lambda b: b.replace(CHUNK_SIGS[1].encode(), CHUNK_SIGS[0].encode()),  # signature of another chunk
        lambda b: b.replace(b";chunk-signature=", b";chunk-signatur=", 1),  # malformed header
        lambda b: b[:-5],  # truncated
        lambda b: b + b"x",  # trailing data
    ],
)
def test_tampered_streams_are_refused(mangle: object) -> None:
    assert callable(mangle)
    r = _resigner(DOC, _doc_signature())
    with pytest.raises(ProxyError) as e:
        r.feed(mangle(_body(CHUNK_SIGS)))
        r.flush()
    assert e.value.code == "signature_invalid"


def test_the_wrong_sealed_secret_fails_the_first_chunk() -> None:
    r = _resigner(Credentials(DOC.access_key_id, DOC.secret + "x"), _doc_signature())
    with pytest.raises(ProxyError):
        r.feed(_body(CHUNK_SIGS))


def test_replay_cache_remembers_until_expiry_and_stays_bounded() -> None:
    cache = ReplayCache(capacity=3)
    assert not cache.seen("a", 100.0, 0.0)
    assert cache.seen("a", 100.0, 50.0)
    assert not cache.seen("a", 200.0, 101.0)  # expired: accepted again (its date window is over anyway)
    for k in "bcde":
        assert not cache.seen(k, 500.0, 102.0)
    assert len(cache.entries) == 3 and "a" not in cache.entries


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"1" * 300, "chunk header too long"),
        (b"8000001;chunk-signature=" + b"a" * 64 + b"\r\n", "chunk over"),
        (b"1;chunk-signature=" + b"a" * 64 + b"\r\nxyz", "not followed by CRLF"),
        (b"zz;chunk-signature=" + b"a" * 64 + b"\r\n", "malformed aws-chunked chunk header"),
    ],
)
def test_malformed_frames_are_refused(body: bytes, why: str) -> None:
    r = _resigner(DOC, _doc_signature())
    with pytest.raises(ProxyError) as e:
        r.feed(body)
    assert why in e.value.message


def test_a_complete_stream_takes_nothing_more() -> None:
    r = _resigner(DOC, _doc_signature())
    r.feed(_body(CHUNK_SIGS))
    assert r.feed(b"") == b""
    with pytest.raises(ProxyError):
        r.feed(b"more")


def test_chunks_before_the_head_is_signed_again_are_an_internal_error() -> None:
    r = ChunkResigner(_doc_signature(), DOC, REAL)  # real_prev not set: the head rewrite has not run
    with pytest.raises(ProxyError) as e:
        r.feed(_body(CHUNK_SIGS))
    assert e.value.code == "internal_error"


# The trailer example of the S3 API reference ("Signature calculation: Including trailing headers"):
# same key, date and chunks; the seed is the head signature of the -TRAILER request.
T_SEED = "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e"
T_CHUNK_SIGS = (
    "b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2",
    "1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7",
    "2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992",
)
T_TRAILER = b"x-amz-checksum-crc32c:sOO8/Q=="
T_TRAILER_SIG = "d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435"


def _trailer_body(chunk_sigs: tuple[str, ...], trailer: bytes, trailer_sig: str) -> bytes:
    body = _body(chunk_sigs)[:-2]  # the last chunk is not followed by CRLF: the trailers are
    return body + trailer + b"\r\nx-amz-trailer-signature:" + trailer_sig.encode() + b"\r\n\r\n"


def _trailer_resigner(sealed: Credentials = DOC, seed: str = T_SEED, real_seed: str = "0" * 64) -> ChunkResigner:
    r = ChunkResigner(dataclasses.replace(_doc_signature(), signature=seed), sealed, REAL, trailer=True)
    r.real_prev = real_seed
    return r


def test_published_trailer_example_verifies_and_resigns() -> None:
    body = _trailer_body(T_CHUNK_SIGS, T_TRAILER, T_TRAILER_SIG)
    rng = random.Random(9)
    outs = []
    for _ in range(10):
        r, pieces, pos = _trailer_resigner(), [], 0
        while pos < len(body):
            step = rng.choice([1, 3, 50, 4096, 70000])
            pieces.append(r.feed(body[pos : pos + step]))
            pos += step
        outs.append(b"".join(pieces) + r.flush())
    out = outs[0]
    assert all(o == out for o in outs) and len(out) == len(body)
    assert T_TRAILER_SIG.encode() not in out and T_TRAILER in out
    check = _trailer_resigner(REAL, seed="0" * 64, real_seed="1" * 64)  # a valid chain under the real key
    check.feed(out)
    check.flush()


@pytest.mark.parametrize(
    "body",
    [
        _trailer_body(T_CHUNK_SIGS, b"x-amz-checksum-crc32c:AAAAAA==", T_TRAILER_SIG),  # trailer value altered
        _trailer_body(T_CHUNK_SIGS, T_TRAILER, T_CHUNK_SIGS[2]),  # another signature
        _trailer_body(T_CHUNK_SIGS, T_TRAILER, T_TRAILER_SIG).replace(
            b"x-amz-trailer-signature:", b"x-amz-trailer-sig:"
        ),
        _trailer_body(T_CHUNK_SIGS, b"bad field", T_TRAILER_SIG),
        _trailer_body(T_CHUNK_SIGS, T_TRAILER, T_TRAILER_SIG) + b"x",
    ],
    ids=["altered", "wrong-signature", "no-signature-line", "malformed-field", "trailing-data"],
)
def test_tampered_trailers_are_refused(body: bytes) -> None:
    r = _trailer_resigner()
    with pytest.raises(ProxyError) as e:
        r.feed(body)
        r.flush()
    assert e.value.code == "signature_invalid"


def test_an_endless_trailer_section_is_refused() -> None:
    r = _trailer_resigner()
    with pytest.raises(ProxyError):
        r.feed(_body(T_CHUNK_SIGS)[:-2] + b"x-amz-meta: " + b"v" * 9000)


def test_a_forgotten_signature_is_accepted_once_more() -> None:
    cache = ReplayCache()
    assert not cache.seen("s", 100.0, 0.0)
    cache.forget("s")
    cache.forget("never-seen")
    assert not cache.seen("s", 100.0, 1.0) and cache.seen("s", 100.0, 2.0)
