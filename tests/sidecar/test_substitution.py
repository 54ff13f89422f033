"""Where sealed tokens are swapped for real values, and where they are deliberately not."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote, unquote_plus

import pytest

from oshu_contract.session import SecretBinding
from oshu_testkit.clients import curl, header_of
from oshu_testkit.rawclient import RawClient
from oshu_testkit.sidecar_process import SidecarProcess
from oshu_testkit.upstreams import HOST, OTHER, PORTED, WILD, Upstream


def test_any_header_value_is_substituted(
    sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    api, body_key = keys["API_KEY"], keys["BODY_KEY"]
    status, _, _, err = curl(
        sidecar.client_env(),
        f"https://{HOST}/echo",
        "-H",
        f"X-Custom: pre-{api.sealed}-post",
        "-H",
        f"X-Two: {api.sealed},{body_key.sealed}",
    )
    assert status == 200, err
    assert upstream.last.header("x-custom") == f"pre-{api.value}-post"
    assert upstream.last.header("x-two") == f"{api.value},{body_key.value}"
    # The request carried a real key, so the proxy asked for an uncompressed (scrubbable) response.
    assert upstream.last.header("accept-encoding") == "identity"


@pytest.mark.parametrize("user_first", [True, False])
def test_basic_auth_credentials_are_substituted(
    user_first: bool, sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    key = keys["API_KEY"]
    creds = f"{key.sealed}:x" if user_first else f"alice:{key.sealed}"
    status, _, _, err = curl(sidecar.client_env(), f"https://{HOST}/echo", "-u", creds)
    assert status == 200, err
    got = upstream.last.header("authorization")
    assert got is not None and got.startswith("Basic ")
    assert base64.b64decode(got[6:]).decode() == creds.replace(key.sealed, key.value)


def test_token_of_a_secret_not_allowed_here_is_left_alone(
    sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    api, other = keys["API_KEY"], keys["OTHER_KEY"]
    env = sidecar.client_env()
    assert curl(env, f"https://{HOST}/echo", "-H", f"x-api-key: {other.sealed}")[0] == 200
    assert upstream.last.header("x-api-key") == other.sealed
    assert (
        curl(env, f"https://{OTHER}/echo", "-H", f"x-api-key: {api.sealed}", "-H", f"x-other: {other.sealed}")[0] == 200
    )
    assert upstream.last.header("x-api-key") == api.sealed
    assert upstream.last.header("x-other") == other.value


def test_query_substitution_only_for_secrets_that_opt_in(
    sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    q, api = keys["QUERY_KEY"], keys["API_KEY"]
    status, _, _, err = curl(sidecar.client_env(), f"https://{HOST}/echo?key={q.sealed}&other={api.sealed}&n=1")
    assert status == 200, err
    rec = upstream.last
    params = dict(p.split("=", 1) for p in rec.raw_path.split("?", 1)[1].split("&"))
    assert unquote_plus(params["key"]) == q.value  # percent-encoded on the wire
    assert params["key"] == quote(q.value, safe="")
    assert params["other"] == api.sealed  # API_KEY is header-only
    assert params["n"] == "1"


def test_body_substitution_only_for_secrets_that_opt_in(
    sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    b, api = keys["BODY_KEY"], keys["API_KEY"]
    payload = json.dumps({"key": b.sealed, "other": api.sealed})
    status, _, body, err = curl(
        sidecar.client_env(),
        f"https://{HOST}/echo",
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        payload,
    )
    assert status == 200, err
    sent = json.loads(upstream.last.body)
    assert sent == {"key": b.value, "other": api.sealed}
    assert upstream.last.header("content-length") == str(len(upstream.last.body))
    echo = json.loads(body)
    assert b.value not in body and echo["body_len"] == len(upstream.last.body)


def test_body_substitution_in_a_chunked_upload_across_chunks(
    sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    b = keys["BODY_KEY"]
    data = f"prefix {b.sealed} suffix".encode()
    cut = data.index(b"SEALED_") + 10  # the token straddles two chunks
    with RawClient(sidecar.listen) as c:
        assert c.connect(f"{HOST}:443").status == 200
        c.start_tls(HOST, sidecar.ca_cert_file)
        c.send(f"POST /upload HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        for piece in (data[:cut], data[cut:]):
            c.send(b"%x\r\n%b\r\n" % (len(piece), piece))
        c.send(b"0\r\n\r\n")
        resp = c.response()
    assert resp.status == 200
    assert upstream.last.body == data.replace(b.sealed.encode(), b.value.encode())


def test_body_is_not_touched_by_default(
    sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    api = keys["API_KEY"]
    assert curl(sidecar.client_env(), f"https://{HOST}/echo", "--data-binary", api.sealed)[0] == 200
    assert upstream.last.body == api.sealed.encode()


def test_wildcard_host_matches_subdomains_only(
    sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    w = keys["WILD_KEY"]
    env = sidecar.client_env(extra_ca_files=[upstream.ca_file])
    assert curl(env, f"https://{WILD}/echo", "-H", f"x-api-key: {w.sealed}")[0] == 200
    assert upstream.last.header("x-api-key") == w.value
    # The apex is not covered by *.wild.oshu.test: blind tunnel, token untouched.
    assert curl(env, "https://wild.oshu.test/echo", "-H", f"x-api-key: {w.sealed}")[0] == 200
    assert upstream.last.header("x-api-key") == w.sealed


def test_port_is_part_of_the_host_pattern(
    sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    p = keys["PORT_KEY"]
    env = sidecar.client_env()
    assert curl(env, f"https://{PORTED}/echo", "-H", f"x-api-key: {p.sealed}")[0] == 200
    assert upstream.last.header("x-api-key") == p.value
    assert upstream.last.header("host") == PORTED
    assert curl(env, f"https://{HOST}/echo", "-H", f"x-api-key: {p.sealed}")[0] == 200
    assert upstream.last.header("x-api-key") == p.sealed


def test_host_matching_ignores_case_and_trailing_dot(
    sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    api = keys["API_KEY"]
    with RawClient(sidecar.listen) as c:
        assert c.connect("API.Oshu.Test.:443").status == 200
        c.start_tls("api.oshu.test", sidecar.ca_cert_file)
        resp = c.request("GET", "/echo", {"Host": "Api.OSHU.test.", "x-api-key": api.sealed})
    assert resp.status == 200
    assert upstream.last.header("x-api-key") == api.value


def test_keys_never_reach_the_response(
    sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    api = keys["API_KEY"]
    status, headers, body, _ = curl(sidecar.client_env(), f"https://{HOST}/echo", "-H", f"x-api-key: {api.sealed}")
    assert status == 200
    assert header_of(json.loads(body), "x-api-key") == api.sealed
    assert api.value not in json.dumps(headers)
