"""The credential hook's pure side: which bindings a host plan carries, what is scrubbed, what
decide() does with a SigV4-signed request (claim, body need, refusals), policy.withdrawn."""

from __future__ import annotations

import datetime
from unittest import mock

import pytest
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from oshu_contract.hosts import HostPattern
from oshu_contract.kinds import Kind
from oshu_contract.session import SecretBinding, new_kind_binding, new_sealed_token
from oshu_sidecar import sigv4
from oshu_sidecar.aws import minting_refusal
from oshu_sidecar.credentials import BODY_LIMIT, HANDLERS, BodyNeed, HookContext, HookRequest, Rewrite
from oshu_sidecar.decide import Facts, decide
from oshu_sidecar.http1 import parse_request_head
from oshu_sidecar.policy import Policy, withdrawn
from oshu_testkit.credential_material import AwsKey
from oshu_testkit.sessions import new_secret, new_session

S3 = "bucket.s3.us-east-1.amazonaws.com"
BEDROCK = "bedrock-runtime.us-east-1.amazonaws.com"
KEY = AwsKey()


def aws_binding(key: AwsKey = KEY) -> SecretBinding:
    return new_kind_binding(
        "AWS",
        Kind.AWS,
        new_sealed_token(),
        [HostPattern.parse("*.s3.us-east-1.amazonaws.com"), HostPattern.parse(BEDROCK)],
        key.fields(),
        {"secretAccessKey": new_sealed_token(), "sessionToken": new_sealed_token()},
    )


AWS = aws_binding()
STATIC = new_secret("API_KEY", [S3, "api.test"])
LIVE = Policy(new_session(AWS, STATIC))


def signed_head(host: str, method: str = "PUT", body: bytes = b"x", extra: dict[str, str] | None = None) -> bytes:
    f = AWS.sealed_fields
    creds = Credentials(AWS.sealed, f["secretAccessKey"], f["sessionToken"])
    req = AWSRequest(method=method, url=f"https://{host}/k", data=body, headers=extra or {})
    signer = S3SigV4Auth(creds, "s3", "us-east-1") if ".s3." in host else SigV4Auth(creds, "bedrock", "us-east-1")
    with mock.patch("botocore.auth.get_current_datetime", return_value=datetime.datetime(2026, 11, 30, 2, 0, 0)):
        signer.add_auth(req)
    fields = [("Host", host), *req.headers.items()]
    if body:
        fields.append(("Content-Length", str(len(body))))
    return (f"{method} /k HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields) + "\r\n").encode()


def test_plans_carry_non_static_bindings_and_static_substitution_only_for_static() -> None:
    plan = LIVE.plan(S3, 443)
    assert plan.intercept and plan.credentials == (AWS,)
    assert [s.name for s in plan.header_subs] == ["API_KEY"]
    assert LIVE.plan("api.test", 443).credentials == ()
    assert LIVE.plan(BEDROCK, 443).intercept and not LIVE.plan(BEDROCK, 443).header_subs
    assert not LIVE.plan("elsewhere.test", 443).intercept
    assert [s.name for s in LIVE.subs] == ["API_KEY"]


def test_every_real_aws_value_is_scrubbed_to_its_own_stand_in() -> None:
    text = f"id={KEY.access_key_id} secret={KEY.secret_access_key} token={KEY.session_token}".encode()
    names: list[str] = []
    out = LIVE.scrubber.scrub(text, names)
    f = AWS.sealed_fields
    assert out == f"id={AWS.sealed} secret={f['secretAccessKey']} token={f['sessionToken']}".encode()
    assert names == ["AWS"]


@pytest.mark.parametrize(
    ("host", "method", "body", "extra", "need"),
    [
        (S3, "PUT", b"data", {}, BodyNeed.BUFFER),  # S3 hashes the payload: the body is checked
        (S3, "GET", b"", {}, BodyNeed.NONE),
        (BEDROCK, "POST", b"{}", {}, BodyNeed.BUFFER),  # no x-amz-content-sha256: the body's hash is signed
        (S3, "PUT", b"data", {"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"}, BodyNeed.NONE),
        (S3, "PUT", b"data", {"X-Amz-Content-SHA256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"}, BodyNeed.STREAM),
        (S3, "PUT", b"data", {"X-Amz-Content-SHA256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"}, BodyNeed.STREAM),
    ],
)
def test_decide_claims_signed_requests(
    host: str, method: str, body: bytes, extra: dict[str, str], need: BodyNeed
) -> None:
    raw = signed_head(host, method, body, extra)
    if "X-Amz-Content-SHA256" in extra:  # S3SigV4Auth overrides the header: put the wanted one back
        raw = raw.replace(
            raw.split(b"X-Amz-Content-SHA256: ")[1].split(b"\r\n")[0], extra["X-Amz-Content-SHA256"].encode(), 1
        )
    d = decide(parse_request_head(raw), LIVE, Facts(True, host, 443, True))
    assert d.refusal is None and d.claim is not None
    assert d.claim.binding is AWS and d.claim.body == need and d.body_subs == ()


@pytest.mark.parametrize(
    ("raw", "policy", "code"),
    [
        (signed_head(S3), Policy(new_session(AWS), revoked_reason="revoked"), "session_revoked"),
        (signed_head(S3), Policy(new_session(AWS, expires_in=-5)), "session_expired"),
        (
            f"GET /k HTTP/1.1\r\nHost: {S3}\r\nAuthorization: AWS4-HMAC-SHA256 Credential=x\r\n\r\n".encode(),
            LIVE,
            "signature_invalid",
        ),
        (
            f"GET /k?X-Amz-Signature=ab HTTP/1.1\r\nHost: {S3}\r\n\r\n".encode(),
            LIVE,
            "signature_invalid",
        ),
        (
            f"GET /k HTTP/1.1\r\nHost: {S3}\r\nAuthorization: AWS AKIA:sig\r\n\r\n".encode(),
            LIVE,
            "signature_invalid",
        ),
    ],
)
def test_decide_refuses(raw: bytes, policy: Policy, code: str) -> None:
    d = decide(parse_request_head(raw), policy, Facts(True, S3, 443, True))
    assert d.refusal is not None and d.refusal.code == code


def test_unsigned_requests_and_plain_http_are_not_claimed() -> None:
    raw = f"GET /k HTTP/1.1\r\nHost: {S3}\r\n\r\n".encode()
    assert decide(parse_request_head(raw), LIVE, Facts(True, S3, 443, True)).claim is None
    plain = f"GET http://{S3}/k HTTP/1.1\r\nHost: {S3}\r\n\r\n".encode()
    assert decide(parse_request_head(plain), LIVE, Facts(False)).claim is None


def test_a_body_over_the_limit_is_refused_before_it_is_read() -> None:
    raw = signed_head(S3).replace(b"Content-Length: 1", b"Content-Length: %d" % (BODY_LIMIT + 1))
    d = decide(parse_request_head(raw), LIVE, Facts(True, S3, 443, True))
    assert d.refusal is not None and d.refusal.code == "payload_too_large" and d.refusal.status == 413


def test_withdrawn_when_the_binding_leaves_or_changes() -> None:
    plan = LIVE.plan(S3, 443)
    assert withdrawn(LIVE, plan, ["AWS"], False) is None
    for now in (Policy(new_session(STATIC)), Policy(new_session(aws_binding(AwsKey()), STATIC))):
        refusal = withdrawn(now, plan, ["AWS"], False)
        assert refusal is not None and refusal.code == "session_changed"
    assert withdrawn(Policy(new_session(STATIC)), plan, ["API_KEY"], False) is None


def test_hook_request_header_lookup() -> None:
    req = HookRequest("h", 443, "GET", "/", (("X-A", "1"), ("x-a", "2")), None, False)
    assert req.header("x-A") == "1" and req.header("nope") is None


def _sig(service: str) -> sigv4.Signature:
    return sigv4.Signature(False, "A", "20261130", "us-east-1", service, "20261130T020000Z", ("host",), "0" * 64)


FORM = [("Host", "sts.amazonaws.com"), ("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")]


@pytest.mark.parametrize(
    ("service", "query", "headers", "body", "refused"),
    [
        ("bedrock", "", [("Host", "h")], b"{}", False),
        ("s3", "Action=AssumeRole", [("Host", "h")], None, False),  # (S3 has no such action: not a minting service)
        ("sts", "Action=GetCallerIdentity&Version=2011-06-15", [("Host", "h")], None, False),
        ("sts", "", FORM, b"Action=GetCallerIdentity&Version=2011-06-15", False),
        ("sts", "", FORM, b"Action=AssumeRole&RoleArn=x", True),
        ("sts", "Action=GetCallerIdentity", FORM, b"Action=GetSessionToken", True),  # two actions
        ("sts", "", [("Host", "h")], b"Action=GetCallerIdentity", True),  # not a form: the action is not known
        ("iam", "Action=ListUsers", [("Host", "h")], None, True),
        ("sso", "", [("Host", "h")], None, True),
    ],
)
def test_credential_minting_services_are_refused(
    service: str, query: str, headers: list[tuple[str, str]], body: bytes | None, refused: bool
) -> None:
    refusal = minting_refusal(_sig(service), sigv4.Wire("POST", "/", query, headers), body)
    assert (refusal is not None) == refused
    if refusal is not None:
        assert refusal.code == "credential_denied" and refusal.status == 403


def test_an_absolute_form_target_is_claimed_with_its_origin_form() -> None:
    """What the client signed is the path and query; an absolute-form target must not change that."""
    raw = signed_head(S3).replace(b"PUT /k HTTP/1.1", f"PUT https://{S3}/k HTTP/1.1".encode())
    d = decide(parse_request_head(raw), LIVE, Facts(True, S3, 443, True))
    assert d.refusal is None and d.claim is not None and d.claim.request.target == "/k"


class _Broken:
    """A handler with a bug: its claim raises something other than ProxyError."""

    def claim(self, binding: SecretBinding, req: HookRequest) -> BodyNeed | None:
        raise ValueError(f"bug quoting {KEY.secret_access_key}")

    async def rewrite(self, binding: SecretBinding, req: HookRequest, body: bytes | None, ctx: HookContext) -> Rewrite:
        raise AssertionError("not reached")


def test_a_handler_bug_refuses_the_request_and_logs_no_message(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert HANDLERS.get(Kind.AWS) is not None  # registered first, so the broken one stays in place
    monkeypatch.setitem(HANDLERS._handlers, Kind.AWS, _Broken())
    d = decide(parse_request_head(signed_head(S3)), LIVE, Facts(True, S3, 443, True))
    assert d.refusal is not None and d.refusal.code == "internal_error" and d.claim is None
    assert KEY.secret_access_key not in d.refusal.message
    assert caplog.records and all(KEY.secret_access_key not in r.getMessage() for r in caplog.records)
    assert caplog.records[-1].__dict__["fields"]["error"] == "ValueError"
