"""Fixtures for the credential-kind tests: an AWS stand-in that checks signatures with the real key,
a real sidecar whose session holds an aws binding, and the agent's environment (sealed material only)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from oshu_contract.hosts import HostPattern
from oshu_contract.kinds import Kind
from oshu_contract.session import SecretBinding, new_kind_binding, new_sealed_token
from oshu_testkit.aws_leaks import assert_no_aws_leak
from oshu_testkit.aws_standin import AwsStandIn
from oshu_testkit.credential_material import AwsKey
from oshu_testkit.sessions import new_session
from oshu_testkit.sidecar_process import SidecarProcess

S3_HOSTS = ("bucket.s3.amazonaws.com", "bucket.s3.us-east-1.amazonaws.com")
BEDROCK = "bedrock-runtime.us-east-1.amazonaws.com"
STS_HOSTS = ("sts.amazonaws.com", "sts.us-east-1.amazonaws.com")
AWS_HOSTS = (*S3_HOSTS, BEDROCK, *STS_HOSTS)


def aws_binding(key: AwsKey, with_token: bool = True) -> SecretBinding:
    sealed_fields = {"secretAccessKey": new_sealed_token()}
    if with_token:
        sealed_fields["sessionToken"] = new_sealed_token()
    return new_kind_binding(
        "AWS",
        Kind.AWS,
        new_sealed_token(),
        [HostPattern.parse(h) for h in ("*.s3.amazonaws.com", "*.s3.us-east-1.amazonaws.com", BEDROCK, *STS_HOSTS)],
        key.fields(with_token),
        sealed_fields,
    )


@pytest.fixture(scope="module")
def aws_key() -> AwsKey:
    return AwsKey()


@pytest.fixture(scope="module")
def binding(aws_key: AwsKey) -> SecretBinding:
    return aws_binding(aws_key)


@pytest.fixture(scope="module")
def aws(aws_key: AwsKey) -> Iterator[AwsStandIn]:
    with AwsStandIn(aws_key) as standin:
        yield standin


@pytest.fixture(autouse=True)
def _no_signature_failures(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every request the stand-in received in a test verified with the real key."""
    if "aws" not in request.fixturenames:
        yield
        return
    standin: AwsStandIn = request.getfixturevalue("aws")
    standin.failures.clear()
    yield
    assert not standin.failures, standin.failures


@pytest.fixture(scope="module")
def agent_saw() -> dict[str, bytes]:
    """Everything the agent's clients received (outputs, responses, error bodies), scanned at the end."""
    return {}


@pytest.fixture(scope="module")
def sidecar(
    aws: AwsStandIn,
    binding: SecretBinding,
    aws_key: AwsKey,
    agent_saw: dict[str, bytes],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[SidecarProcess]:
    sc = SidecarProcess(
        new_session(binding),
        directory=tmp_path_factory.mktemp("sidecar"),
        connect_to=[f"{h}:443:127.0.0.1:{aws.port}" for h in AWS_HOSTS],
        upstream_ca_files=[aws.ca_file],
        extra_args=["--log-level", "debug"],  # the most the sidecar ever logs: all of it is scanned
    )
    with sc:
        yield sc
        assert_no_aws_leak({**agent_saw, "metrics": sc.metrics_text().encode(), "log": sc.log_text().encode()}, aws_key)
    assert_no_aws_leak({"log after stop": sc.log_text().encode()}, aws_key)
    assert sc.returncode == 0, sc.log_text()[-3000:]


def agent_env(sc: SidecarProcess, binding: SecretBinding, tmp: Path) -> dict[str, str]:
    """What the webhook gives the agent: proxy, CA bundle and the SEALED AWS material only."""
    env = sc.client_env()
    env.update(
        AWS_ACCESS_KEY_ID=binding.sealed,
        AWS_SECRET_ACCESS_KEY=binding.sealed_fields["secretAccessKey"],
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=str(tmp / "no-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp / "no-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
        HOME=str(tmp),
    )
    if "sessionToken" in binding.sealed_fields:
        env["AWS_SESSION_TOKEN"] = binding.sealed_fields["sessionToken"]
    return env
