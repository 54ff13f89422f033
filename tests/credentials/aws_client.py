"""A real AWS client run by the tests as a subprocess, configured only by the standard AWS and
proxy environment variables (AWS_ACCESS_KEY_ID... HTTPS_PROXY, AWS_CA_BUNDLE): prints JSON."""

from __future__ import annotations

import hashlib
import io
import json
import sys

import boto3
from botocore.config import Config

BUCKET = "bucket"


def main(op: str, *args: str) -> dict[str, object]:
    cfg = Config(region_name="us-east-1", s3={"addressing_style": "virtual"}, retries={"max_attempts": 1})
    if op == "put":
        # "signed": the payload hash is signed too (a file body then also sends Expect: 100-continue)
        signed = Config(
            s3={"addressing_style": "virtual", "payload_signing_enabled": True},
            request_checksum_calculation="when_required",
        )
        s3 = boto3.client("s3", config=cfg.merge(signed) if args[3].startswith("signed") else cfg)
        body = (args[1] * (int(args[2]) // len(args[1]) + 1))[: int(args[2])].encode()
        stream = io.BytesIO(body) if args[3] in ("stream", "signed-stream") else body
        r = s3.put_object(Bucket=BUCKET, Key=args[0], Body=stream)
        return {"etag": r["ETag"], "sha256": hashlib.sha256(body).hexdigest()}
    if op == "get":
        s3 = boto3.client("s3", config=cfg)
        data = s3.get_object(Bucket=BUCKET, Key=args[0])["Body"].read()
        return {"sha256": hashlib.sha256(data).hexdigest(), "len": len(data)}
    if op in ("presign", "presign-v2"):
        version = "s3v4" if op == "presign" else "s3"
        s3 = boto3.client("s3", config=cfg.merge(Config(signature_version=version)))
        return {
            "url": s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": args[0]}, ExpiresIn=600)
        }
    if op == "whoami":
        return dict(boto3.client("sts", config=cfg).get_caller_identity())
    if op == "bedrock":
        br = boto3.client("bedrock-runtime", config=cfg)
        r = br.invoke_model(
            modelId="anthropic.claude-3-5-sonnet-20240620-v1:0",
            body=json.dumps(
                {
                    "anthropic_version": "bedrock-2023-05-31",
                    "max_tokens": 10,
                    "messages": [{"role": "user", "content": "hi"}],
                }
            ),
        )
        return json.loads(r["body"].read())
    if op == "anthropic":
        from anthropic import AnthropicBedrock

        client = AnthropicBedrock(aws_region="us-east-1", max_retries=0)
        msg = client.messages.create(
            model="anthropic.claude-3-5-sonnet-20240620-v1:0",
            max_tokens=10,
            messages=[{"role": "user", "content": "hello"}],
        )
        return {"text": msg.content[0].text, "model": msg.model}  # type: ignore[union-attr]
    raise SystemExit(f"unknown op {op}")


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:])))
