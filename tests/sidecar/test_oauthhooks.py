"""oauthhooks.py's pure parts: which requests the oauth2 and gcp handlers take, and the head edit."""

from __future__ import annotations

from dataclasses import replace

import pytest

from oshu_contract.hosts import HostPattern
from oshu_contract.kinds import Kind
from oshu_contract.locations import Location
from oshu_contract.pki import new_rsa_key_pem, rsa_public_pem
from oshu_contract.session import SecretBinding, new_kind_binding, new_sealed_token
from oshu_sidecar.credentials import HANDLERS, BodyNeed, HookRequest
from oshu_sidecar.oauthhooks import GcpHandler, OAuth2Handler, swap_fields, swap_query

OAUTH = new_kind_binding(
    "TOKEN",
    Kind.OAUTH2,
    new_sealed_token(),
    (HostPattern.parse("api.oshu.test"), HostPattern.parse("auth.oshu.test")),
    {"tokenUrl": "https://auth.oshu.test/oauth/token", "clientId": "c", "clientSecret": "cs-0123456789"},
)
EVERYWHERE = replace(OAUTH, locations=frozenset({Location.HEADERS, Location.QUERY, Location.BODY}))
_KEY = new_rsa_key_pem()
GCP = new_kind_binding(
    "SA",
    Kind.GCP,
    new_sealed_token(),
    (HostPattern.parse("us-east5-aiplatform.googleapis.com"),),
    {
        "privateKey": _KEY.decode(),
        "privateKeyId": "kid-0123456789",
        "clientEmail": "a@p.iam.gserviceaccount.com",
        "tokenUri": "https://oauth2.googleapis.com/token",
        "sessionPublicKey": rsa_public_pem(new_rsa_key_pem()).decode(),
    },
)


def _req(host: str, target: str = "/v1/x", method: str = "GET", **headers: str) -> HookRequest:
    return HookRequest(host, 443, method, target, tuple(headers.items()), None, method == "POST")


def test_both_kinds_are_registered() -> None:
    assert isinstance(HANDLERS[Kind.OAUTH2], OAuth2Handler) and isinstance(HANDLERS[Kind.GCP], GcpHandler)


@pytest.mark.parametrize(
    ("binding", "req", "need"),
    [
        (OAUTH, _req("api.oshu.test", Authorization=f"Bearer {OAUTH.sealed}"), BodyNeed.NONE),
        (OAUTH, _req("api.oshu.test", Authorization="Bearer SEALED_" + "a" * 40), BodyNeed.NONE),  # maybe minted
        (OAUTH, _req("api.oshu.test", Authorization="Bearer sk-plain"), None),
        (OAUTH, _req("api.oshu.test"), None),
        (OAUTH, _req("auth.oshu.test", "/oauth/token?x=1", "POST"), BodyNeed.BUFFER),
        (OAUTH, _req("auth.oshu.test", "/oauth/token", "GET"), None),
        (OAUTH, _req("auth.oshu.test", "/other", "POST"), None),
        (OAUTH, _req("api.oshu.test", f"/v1?access_token={OAUTH.sealed}"), None),  # query not allowed
        (EVERYWHERE, _req("api.oshu.test", f"/v1?access_token={OAUTH.sealed}"), BodyNeed.NONE),
        (EVERYWHERE, _req("api.oshu.test", "/v1", "POST"), BodyNeed.BUFFER),  # the token may be in the body
        (OAUTH, _req("api.oshu.test", "/v1", "POST"), None),
        (GCP, _req("oauth2.googleapis.com", "/token", "POST"), BodyNeed.BUFFER),
        (GCP, _req("oauth2.googleapis.com", "/tokeninfo", "GET", Authorization="Bearer eyJa.b.c"), None),
        (GCP, _req("us-east5-aiplatform.googleapis.com", Authorization="Bearer eyJa.b.c"), BodyNeed.NONE),
        (GCP, _req("us-east5-aiplatform.googleapis.com", Authorization="Bearer SEALED_" + "b" * 40), BodyNeed.NONE),
        (GCP, _req("us-east5-aiplatform.googleapis.com", Authorization="Bearer ya29.real"), None),
    ],
)
def test_claims(binding: SecretBinding, req: HookRequest, need: BodyNeed | None) -> None:
    assert HANDLERS[binding.kind].claim(binding, req) == need


def test_swap_fields_never_touches_the_request_line() -> None:
    head = b"GET /SEALED_x?k=SEALED_x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer SEALED_x\r\n\r\n"
    out = swap_fields(head, [(b"SEALED_x", b"real")])
    assert out == b"GET /SEALED_x?k=SEALED_x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer real\r\n\r\n"


def test_swap_query_touches_only_the_query() -> None:
    head = b"GET /SEALED_x?k=SEALED_x HTTP/1.1\r\nX: SEALED_x\r\n\r\n"
    assert swap_query(head, (b"SEALED_x", b"r%2F")) == b"GET /SEALED_x?k=r%2F HTTP/1.1\r\nX: SEALED_x\r\n\r\n"
    assert swap_query(b"GET /SEALED_x HTTP/1.1\r\n\r\n", (b"SEALED_x", b"r")) == b"GET /SEALED_x HTTP/1.1\r\n\r\n"
