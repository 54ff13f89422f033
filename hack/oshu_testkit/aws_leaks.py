"""Leak scans for AWS material: the real key id, secret and session token (raw, percent-encoded)
and the signing keys derived from the secret (kDate, kRegion, kService, kSigning: raw, hex, base64),
which a proxy that re-signs holds in memory and must never let out either."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac

from .credential_material import AwsKey
from .leaks import assert_no_secret

__all__ = ["assert_no_aws_leak", "derived_keys"]


def derived_keys(
    key: AwsKey, services: tuple[str, ...] = ("s3", "bedrock", "sts"), region: str = "us-east-1"
) -> list[bytes]:
    """kDate, kRegion, kService, kSigning of the real secret for the days around now."""
    today = datetime.datetime.now(datetime.UTC).date()
    out = []
    for day in (today - datetime.timedelta(days=1), today, today + datetime.timedelta(days=1)):
        for service in services:
            k = hmac.new(
                ("AWS4" + key.secret_access_key).encode(), day.strftime("%Y%m%d").encode(), hashlib.sha256
            ).digest()
            out.append(k)
            for part in (region, service, "aws4_request"):
                k = hmac.new(k, part.encode(), hashlib.sha256).digest()
                out.append(k)
    return out


def assert_no_aws_leak(texts: dict[str, bytes], key: AwsKey) -> None:
    """No real value (raw, percent-encoded) and no derived signing key (raw, hex, base64) in any text."""
    assert_no_secret(dict(texts), key.values())
    for where, text in texts.items():
        for k in derived_keys(key):
            for form in (k, k.hex().encode(), base64.b64encode(k), base64.urlsafe_b64encode(k).rstrip(b"=")):
                assert form not in text, f"a derived signing key of the real secret appears in {where}"
