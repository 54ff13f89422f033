"""minted.py without sockets: token responses sealed, sealed tokens swapped back only for their
binding, bounded and expiring (a fake clock)."""

from __future__ import annotations

import json
from urllib.parse import parse_qsl

from oshu_contract.tokens import is_sealed_token, new_sealed_token
from oshu_sidecar.minted import DEFAULT_TTL, MAX_TTL, MintedTokens, ScrubberWith
from oshu_sidecar.scrub import Scrubber


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_json_token_response_is_sealed_and_swapped_back_for_its_binding_only() -> None:
    clock = Clock()
    minted = MintedTokens(clock)
    body = json.dumps(
        {
            "access_token": "ya29.real-access",
            "refresh_token": "1//real-refresh",
            "id_token": "eyJ.real.id",
            "expires_in": 60,
            "token_type": "Bearer",
            "scope": "a b",
        }
    ).encode()
    sealed = minted.seal_token_response(body, "GCP")
    assert sealed is not None
    doc = json.loads(sealed)
    assert all(is_sealed_token(doc[k]) for k in ("access_token", "refresh_token", "id_token"))
    assert doc["expires_in"] == 60 and doc["scope"] == "a b"
    for real in (b"ya29.real-access", b"1//real-refresh", b"eyJ.real.id"):
        assert real not in sealed
    header = b"Bearer " + doc["access_token"].encode()
    assert minted.swap(header, {"GCP"}) == (b"Bearer ya29.real-access", ["GCP"])
    assert minted.swap(header, {"OTHER"}) == (header, [])  # another binding's hosts: stays worthless
    unknown = b"Bearer " + new_sealed_token().encode()
    assert minted.swap(unknown, {"GCP"}) == (unknown, [])
    assert {r for r, _, _ in minted.secret_values()} == {"ya29.real-access", "1//real-refresh", "eyJ.real.id"}
    clock.now += 61  # the access token expired with its expires_in; the refresh token did not
    assert minted.swap(header, {"GCP"}) == (header, [])
    assert minted.lookup(doc["refresh_token"], {"GCP"}) == "1//real-refresh"
    clock.now += MAX_TTL
    assert minted.lookup(doc["refresh_token"], {"GCP"}) is None


def test_the_same_real_token_keeps_its_sealed_token() -> None:
    minted = MintedTokens(Clock())
    a = minted.seal("real-token-1", "B")
    assert minted.seal("real-token-1", "B") == a
    assert minted.seal("real-token-1", "C") != a  # per binding


def test_form_encoded_responses_and_responses_without_tokens() -> None:
    minted = MintedTokens(Clock())
    out = minted.seal_token_response(
        b"access_token=gho_realtoken123&scope=repo&token_type=bearer", "GH", "application/x-www-form-urlencoded"
    )
    assert out is not None
    form = dict(parse_qsl(out.decode()))
    assert is_sealed_token(form["access_token"]) and form["scope"] == "repo"
    assert minted.seal_token_response(b'{"error":"invalid_grant"}', "GH") is None
    assert minted.seal_token_response(b"access_token=x1234567890", "GH", "text/plain") is None
    assert minted.seal_token_response(b"{not json", "GH") is None
    assert minted.seal_token_response(b"[1, 2]", "GH") is None
    assert minted.seal_token_response(b"%%%", "GH", "application/x-www-form-urlencoded") is None
    assert minted.seal_token_response(b'{"access_token":"short"}', "GH") is None  # too short to scrub safely
    already = b'{"access_token":"' + new_sealed_token().encode() + b'"}'
    assert minted.seal_token_response(already, "GH") is None


def test_expires_in_forms_and_caps() -> None:
    clock = Clock()
    minted = MintedTokens(clock)
    for expires_in, ttl in (
        ("120", 120),
        (None, DEFAULT_TTL),
        (True, DEFAULT_TTL),
        (-5, DEFAULT_TTL),
        (10**9, MAX_TTL),
    ):
        doc = {"access_token": f"real-token-{expires_in}"}
        if expires_in is not None:
            doc["expires_in"] = expires_in  # type: ignore[assignment]
        out = minted.seal_token_response(json.dumps(doc).encode(), "B")
        assert out is not None
        token = json.loads(out)["access_token"]
        clock.now += ttl - 1
        assert minted.lookup(token, {"B"}) == doc["access_token"]
        clock.now += 2
        assert minted.lookup(token, {"B"}) is None


def test_the_map_is_bounded_oldest_first() -> None:
    minted = MintedTokens(Clock(), max_entries=3)
    tokens = [minted.seal(f"real-token-{i}", "B") for i in range(5)]
    assert len(minted) == 3
    assert minted.lookup(tokens[0], {"B"}) is None and minted.lookup(tokens[1], {"B"}) is None
    assert minted.lookup(tokens[4], {"B"}) == "real-token-4"
    generation = minted.generation
    minted.seal("real-token-9", "B")
    assert minted.generation > generation


def test_oversized_bodies_are_left_alone() -> None:
    minted = MintedTokens(Clock())
    assert minted.seal_token_response(b'{"access_token":"' + b"a" * (1 << 20) + b'"}', "B") is None


def test_scrubber_with_finds_the_sessions_values_and_the_extra_ones_also_split_across_pieces() -> None:
    base = Scrubber([(b"sk-session-value-123", b"SEALED_" + b"s" * 40, "STATIC")])
    extra = ScrubberWith(base, [(b"ya29.real-access-token", b"SEALED_" + b"m" * 40, "SA")])
    names: list[str] = []
    text = b'{"a":"sk-session-value-123","b":"ya29.real-access-token"}'
    out = extra.scrub(text, names)
    assert b"sk-session" not in out and b"ya29" not in out and names == ["SA", "STATIC"]
    stream = extra.stream()
    pieces = [stream.feed(text[:40]), stream.feed(text[40:]), stream.flush()]
    assert b"".join(pieces) == out
    assert ScrubberWith(Scrubber([]), []).active is False


def test_scrubber_with_replaces_an_extra_value_that_contains_a_session_value_whole() -> None:
    base = Scrubber([(b"kid-0123456789abcdef", b"SEALED_" + b"k" * 40, "SA")])
    jwt = b"header.kid-0123456789abcdef.signature-by-the-real-key"
    extra = ScrubberWith(base, [(jwt, b"the-agents-own-jwt", "SA")])
    assert extra.scrub(b'{"you_sent":"' + jwt + b'"}', []) == b'{"you_sent":"the-agents-own-jwt"}'
