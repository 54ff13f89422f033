"""Secrets of the other kinds end to end through a real gateway process, created with the Python SDK,
used by real clients holding only what `sandbox_env()` gives them:

- boto3 (S3 put/get, a presigned GET, Bedrock InvokeModel) and the AWS CLI through
  `HTTPS_PROXY=https://sess:tok@gateway` (and the plain `http://` listener), against the test kit's
  AWS stand-in, which checks every signature with botocore's signer and the REAL key;
- a request signed with anything but the sealed secret: 403 signature_invalid, nothing forwarded;
- another session's proxy credentials with this session's sealed AWS keys: nothing re-signed.

The AWS client is tests/credentials/aws_client.py (the same one the sidecar's tests run).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from oshu_vault_sdk import SecretsProxyClient, Session, aws_secret

from oshu_testkit.aws_standin import AwsStandIn
from oshu_testkit.credential_material import AwsKey
from oshu_testkit.gateway_process import GatewayProcess
from oshu_testkit.leaks import assert_no_secret

from .conftest import run_sandboxed

ROOT = Path(__file__).resolve().parents[2]
AWS_CLIENT = ROOT / "tests" / "credentials" / "aws_client.py"
BEDROCK = "bedrock-runtime.us-east-1.amazonaws.com"
S3 = "bucket.s3.amazonaws.com"
AWS_CLI = Path(sys.executable).parent / "aws"


@pytest.fixture(scope="module")
def key() -> AwsKey:
    return AwsKey()


@pytest.fixture(scope="module")
def aws(key: AwsKey) -> Iterator[AwsStandIn]:
    with AwsStandIn(key) as standin:
        yield standin


@pytest.fixture(scope="module")
def gw(aws: AwsStandIn) -> Iterator[GatewayProcess]:
    pins = [a for h in (BEDROCK, S3) for a in ("--connect-to", f"{h}:443:127.0.0.1:{aws.port}")]
    with GatewayProcess(None, extra_args=["--upstream-ca-file", str(aws.ca_file), *pins]) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def client(gw: GatewayProcess) -> SecretsProxyClient:
    return SecretsProxyClient(gw.base_url, gw.api_key, ca_file=str(gw.ca_file))


@pytest.fixture(scope="module")
def session(client: SecretsProxyClient, key: AwsKey) -> Iterator[Session]:
    secret = aws_secret(key.access_key_id, key.secret_access_key, ["*.s3.amazonaws.com", BEDROCK], key.session_token)
    with client.create_session({"AWS": secret}) as s:
        yield s


@pytest.fixture(autouse=True)
def _every_signature_real(aws: AwsStandIn) -> Iterator[None]:
    """Whatever reached the stand-in in a test was signed with the real key."""
    aws.failures.clear()
    yield
    assert not aws.failures, aws.failures


def _sandbox(gw: GatewayProcess, s: Session, tmp_path: Path, plain: bool = False) -> dict[str, str]:
    """Exactly the sandbox's environment (the gateway CA is the only root it needs here)."""
    env = s.sandbox_env(ca_path=str(gw.ca_file))
    if plain:
        for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
            env[name] = gw.proxy_url({"session_id": s.session_id, "token": s.token}, tls=False)
    return env | {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "AWS_EC2_METADATA_DISABLED": "true"}


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_sandboxed([sys.executable, str(AWS_CLIENT), *args], env)


def _audit(gw: GatewayProcess, session_id: str, outcome: str) -> dict[str, Any]:
    """The session's audit line for BEDROCK with `outcome` (written in batches: waited for, 10 s at most)."""
    for _ in range(100):
        for x in gw.log_records():
            if x.get("session") == session_id and x.get("host") == BEDROCK and x.get("outcome") == outcome:
                return x
        time.sleep(0.1)
    raise AssertionError(f"no {outcome} audit line for {session_id}")


def _ok(r: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert r.returncode == 0, r.stderr[-3000:]
    out: dict[str, Any] = json.loads(r.stdout)
    return out


@pytest.mark.parametrize("plain", [False, True], ids=["https-proxy", "http-proxy"])
def test_boto3_through_the_gateway_is_resigned_with_the_real_key(
    gw: GatewayProcess, aws: AwsStandIn, session: Session, key: AwsKey, tmp_path: Path, plain: bool
) -> None:
    env = _sandbox(gw, session, tmp_path, plain)
    assert env["AWS_ACCESS_KEY_ID"].startswith("SEALED_") and env["AWS_SESSION_TOKEN"].startswith("SEALED_")
    before = len(aws.requests)
    reply = _ok(_run(env, "bedrock"))
    assert reply["content"][0]["text"].startswith("stand-in reply")
    put = _ok(_run(env, "put", "kinds/obj.bin", "abc", "70000", "stream"))  # aws-chunked, signed chunks
    assert _ok(_run(env, "get", "kinds/obj.bin"))["sha256"] == put["sha256"]
    url = _ok(_run(env, "presign", "kinds/obj.bin"))["url"]
    assert "SEALED_" in url and key.access_key_id not in url
    got = subprocess.run(  # the presigned URL, fetched through the gateway: re-signed in the query string
        [
            "curl",
            "-sf",
            "--proxy",
            env["HTTPS_PROXY"],
            "--proxy-cacert",
            env["AWS_CA_BUNDLE"],
            "--cacert",
            env["AWS_CA_BUNDLE"],
            url,
        ],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert got.returncode == 0 and hashlib.sha256(got.stdout).hexdigest() == put["sha256"], got.stderr[-2000:]
    assert any(x.kind == "presigned" for x in aws.requests[before:])
    seen = aws.requests[before:]
    assert {s.host for s in seen} >= {BEDROCK, S3} and len(seen) >= 3
    texts: dict[str, str | bytes] = {"gateway log": gw.log_text(), "client": json.dumps([reply, put, url])}
    texts["metrics"] = gw.request("GET", "/metrics", api_key="")[2]
    assert_no_secret(texts, key.values())


def test_the_aws_cli_through_the_gateway(
    gw: GatewayProcess, aws: AwsStandIn, session: Session, key: AwsKey, tmp_path: Path
) -> None:
    env = _sandbox(gw, session, tmp_path) | {"AWS_DEFAULT_REGION": "us-east-1"}
    src = tmp_path / "up.txt"
    src.write_text("from the AWS CLI\n" * 100)
    cli = [str(AWS_CLI), "s3"]
    cfg = tmp_path / "config"
    cfg.write_text("[default]\ns3 =\n    addressing_style = virtual\n")
    env["AWS_CONFIG_FILE"] = str(cfg)
    r = run_sandboxed([*cli, "cp", str(src), "s3://bucket/cli/up.txt"], env)
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_sandboxed([*cli, "cp", "s3://bucket/cli/up.txt", "-"], env)
    assert r.returncode == 0 and r.stdout == src.read_text(), r.stderr[-3000:]
    assert aws.objects["cli/up.txt"] == src.read_bytes()
    assert_no_secret({"cli": r.stdout + r.stderr, "gateway log": gw.log_text()}, key.values())


def test_a_signature_not_made_with_the_sealed_secret_is_refused(
    gw: GatewayProcess, aws: AwsStandIn, session: Session, tmp_path: Path
) -> None:
    env = _sandbox(gw, session, tmp_path) | {"AWS_SECRET_ACCESS_KEY": "a-guess-at-the-secret-0123456789"}
    before = len(aws.requests)
    r = _run(env, "bedrock")
    assert r.returncode != 0 and "(403)" in r.stderr, r.stderr[-2000:]
    assert len(aws.requests) == before  # nothing forwarded
    assert _audit(gw, session.session_id, "signature_invalid")["status"] == 403


def test_another_sessions_credentials_get_nothing_resigned(
    gw: GatewayProcess, aws: AwsStandIn, client: SecretsProxyClient, session: Session, tmp_path: Path
) -> None:
    with client.create_session({"OTHER": {"value": "sk-other-0123456789", "hosts": ["api.oshu.test"]}}) as other:
        env = _sandbox(gw, session, tmp_path)  # this session's sealed AWS keys...
        for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
            env[name] = other.proxy_url  # ...through the other session's proxy credentials
        before = len(aws.requests)
        r = _run(env, "bedrock")
        assert r.returncode != 0
        # not intercepted for the other session: a blind tunnel to the stand-in, whose certificate the
        # sandbox does not trust; no request arrives, let alone one re-signed with the real key
        assert len(aws.requests) == before


def test_an_aws_session_survives_kill_9(aws: AwsStandIn, key: AwsKey, tmp_path: Path) -> None:
    pins = ["--connect-to", f"{BEDROCK}:443:127.0.0.1:{aws.port}"]
    with GatewayProcess(None, directory=tmp_path, extra_args=["--upstream-ca-file", str(aws.ca_file), *pins]) as g:
        c = SecretsProxyClient(g.base_url, g.api_key, ca_file=str(g.ca_file))
        s = c.create_session(
            {"AWS": aws_secret(key.access_key_id, key.secret_access_key, [BEDROCK], key.session_token)}
        )
        g.kill9()
        g.start()
        env = _sandbox(g, s, tmp_path)
        for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):  # port 0: a new one after restart
            env[name] = g.proxy_url({"session_id": s.session_id, "token": s.token})
        assert _ok(_run(env, "bedrock"))["content"][0]["text"].startswith("stand-in reply")


def test_deleting_the_session_stops_resigning_on_an_open_connection(
    gw: GatewayProcess, aws: AwsStandIn, client: SecretsProxyClient, key: AwsKey
) -> None:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    s = client.create_session(
        {"AWS": aws_secret(key.access_key_id, key.secret_access_key, [BEDROCK], key.session_token)}
    )
    env = s.sandbox_env(ca_path=str(gw.ca_file))
    cfg = Config(
        region_name="us-east-1",
        retries={"max_attempts": 1},
        proxies={"https": s.proxy_url},
        proxies_config={"proxy_ca_bundle": str(gw.ca_file)},
    )
    br = boto3.client(
        "bedrock-runtime",
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=env["AWS_SESSION_TOKEN"],
        config=cfg,
        verify=str(gw.ca_file),
    )
    body = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 5, "messages": []})
    first = br.invoke_model(modelId="m", body=body)
    assert first["body"].read() and first["ResponseMetadata"]["HTTPStatusCode"] == 200  # read: the tunnel is pooled
    s.delete()
    before = len(aws.requests)
    with pytest.raises(ClientError) as refused:  # the same pooled tunnel, opened while the session lived
        br.invoke_model(modelId="m", body=body)
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert len(aws.requests) == before
    assert _audit(gw, s.session_id, "session_revoked")["status"] == 403
