"""The leak scan the AWS tests end with can fail: each form of each real value is caught."""

from __future__ import annotations

import base64
from urllib.parse import quote

import pytest

from oshu_testkit.aws_leaks import assert_no_aws_leak, derived_keys
from oshu_testkit.credential_material import AwsKey

KEY = AwsKey()


def _forms() -> list[bytes]:
    out = []
    for v in KEY.values():
        out += [v.encode(), quote(v, safe="").encode()]
    for k in derived_keys(KEY):
        out += [k, k.hex().encode(), base64.b64encode(k)]
    return out


@pytest.mark.parametrize("form", _forms(), ids=lambda f: f"len{len(f)}")
def test_every_form_is_caught(form: bytes) -> None:
    with pytest.raises(AssertionError):
        assert_no_aws_leak({"a response": b"prefix " + form + b" suffix"}, KEY)


def test_sealed_material_passes() -> None:
    assert_no_aws_leak({"a response": b"AWS_ACCESS_KEY_ID=SEALED_0123 kSigning=" + b"0" * 64}, KEY)
