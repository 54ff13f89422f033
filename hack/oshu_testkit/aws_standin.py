"""A local HTTPS stand-in for S3 and Bedrock that checks every request's SigV4 signature with
botocore's own signer and the REAL key, the way AWS would: a request signed with anything else
is answered 403 SignatureDoesNotMatch and recorded in `failures` (tests assert it stays empty).

S3 (virtual-hosted `BUCKET.s3[.REGION].amazonaws.com`): PUT/GET/HEAD of objects (plain,
aws-chunked with STREAMING-UNSIGNED-PAYLOAD-TRAILER or with signed chunks, whose chunk
signatures are checked in the real chain), ListObjectsV2, presigned GETs. Bedrock runtime
(`bedrock-runtime.REGION.amazonaws.com`): POST /model/{id}/invoke answers an Anthropic
Messages response. Served on 127.0.0.1 only; the sidecar reaches it by --connect-to.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import hashlib
import hmac
import json
import struct
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth, SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from .ca import TestCA
from .credential_material import AwsKey
from .upstreams import _loopback_socket

NAMES = ("*.amazonaws.com", "*.s3.amazonaws.com", "*.s3.us-east-1.amazonaws.com", "*.us-east-1.amazonaws.com")
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
_EMPTY = hashlib.sha256(b"").hexdigest()


@dataclass
class Seen:
    method: str
    host: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    decoded: bytes = b""
    kind: str = ""  # "header" | "presigned"


@dataclass
class AwsStandIn:
    """Start with `with AwsStandIn(key) as aws:`; `port`, `ca_file`, `requests`, `failures`, `objects`."""

    key: AwsKey
    with_token: bool = True
    #: False: answer without checking signatures (benchmarks: the same upstream work for every case).
    verify: bool = True
    ca: TestCA = field(default_factory=lambda: TestCA.new("oshu test AWS stand-in CA"))
    requests: list[Seen] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    objects: dict[str, bytes] = field(default_factory=dict)
    #: Object keys whose next PUT is answered 503 SlowDown (then served): a throttled first attempt.
    fail_once: set[str] = field(default_factory=set)
    #: Multipart uploads in progress: upload id -> part number -> bytes.
    uploads: dict[str, dict[int, bytes]] = field(default_factory=dict)
    port: int = 0

    def __post_init__(self) -> None:
        import tempfile
        from pathlib import Path

        self.directory = Path(tempfile.mkdtemp(prefix="oshu-aws-"))
        self.ca.write(self.directory, "aws-ca")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="oshu-aws-standin")

    @property
    def ca_file(self) -> Any:
        return self.ca.cert_file

    def __enter__(self) -> AwsStandIn:
        self._thread.start()
        if not self._ready.wait(20):
            raise RuntimeError("AWS stand-in did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        import shutil

        if self._loop is not None and self._runner is not None:
            fut = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
            fut.result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        shutil.rmtree(self.directory, ignore_errors=True)

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        loop.run_until_complete(self._start())
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _start(self) -> None:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        import ssl

        pair = self.ca.issue(list(NAMES))
        leaf = self.directory / "leaf.pem"
        leaf.write_bytes(pair.cert_pem + pair.key_pem)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(leaf)
        leaf.unlink()
        sock = _loopback_socket()
        await web.SockSite(self._runner, sock, ssl_context=ctx).start()
        self.port = sock.getsockname()[1]

    # -- the signature check -------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        host = request.headers.get("Host", "")
        seen = Seen(request.method, host, request.raw_path, list(request.headers.items()), body, body)
        if self.verify:
            self.requests.append(seen)
        problem = self.check(seen) if self.verify else None
        if problem is not None:
            self.failures.append(f"{request.method} {host}{request.raw_path}: {problem}")
            return web.Response(
                status=403, text=f"<Error><Code>SignatureDoesNotMatch</Code><Message>{problem}</Message></Error>"
            )
        if host.startswith("bedrock-runtime.") and request.path.endswith("/invoke-with-response-stream"):
            model = request.path.split("/")[2]
            return web.Response(body=bedrock_stream(model), content_type="application/vnd.amazon.eventstream")
        if host.startswith("bedrock-runtime."):
            return _bedrock(request, body)
        if host.startswith("sts."):
            return _sts(self.key.access_key_id)
        return self._s3(request, seen)

    def check(self, seen: Seen) -> str | None:
        """None if `seen` is signed with the real key (as botocore computes it), else what is wrong."""
        headers = {k.lower(): v for k, v in seen.headers}
        url = f"https://{seen.host}{seen.target}"
        query = urlsplit(url).query
        service = "s3" if ".s3." in f".{seen.host}" else seen.host.split(".")[0].replace("-runtime", "")
        service = "bedrock" if seen.host.startswith("bedrock") else service
        region = "us-east-1"
        real = Credentials(
            self.key.access_key_id, self.key.secret_access_key, self.key.session_token if self.with_token else None
        )
        if "X-Amz-Signature=" in query:
            seen.kind = "presigned"
            params = dict(p.split("=", 1) for p in query.split("&"))
            given = params.pop("X-Amz-Signature")
            from urllib.parse import unquote

            cred = unquote(params["X-Amz-Credential"]).split("/")
            if cred[0] != real.access_key or (
                real.token and unquote(params.get("X-Amz-Security-Token", "")) != real.token
            ):
                return "presigned URL not for the real access key / session token"
            stripped = url.replace("&X-Amz-Signature=" + given, "").replace("X-Amz-Signature=" + given + "&", "")
            signed = unquote(params["X-Amz-SignedHeaders"]).split(";")
            req = AWSRequest(method=seen.method, url=stripped, headers={h: headers[h] for h in signed})
            signer_cls: Any = S3SigV4QueryAuth if service == "s3" else SigV4QueryAuth
            signer = signer_cls(real, cred[3], cred[2], expires=int(params["X-Amz-Expires"]))
            stamp = params["X-Amz-Date"]
        else:
            seen.kind = "header"
            auth = headers.get("authorization", "")
            try:
                cred_part, signed_part, sig_part = (
                    p.strip().split("=", 1)[1] for p in auth.split(" ", 1)[1].split(",")
                )
            except (IndexError, ValueError):
                return "no SigV4 Authorization header"
            given = sig_part
            cred = cred_part.split("/")
            if cred[0] != real.access_key:
                return "not signed with the real access key id"
            if real.token and headers.get("x-amz-security-token") != real.token:
                return "not the real session token"
            signed = signed_part.split(";")
            req = AWSRequest(method=seen.method, url=url, headers={h: headers[h] for h in signed}, data=seen.body)
            signer = (S3SigV4Auth if cred[3] == "s3" else SigV4Auth)(real, cred[3], cred[2])
            stamp = headers.get("x-amz-date", "")
            declared = headers.get("x-amz-content-sha256")
            if declared and len(declared) == 64 and declared != hashlib.sha256(seen.body).hexdigest():
                return "XAmzContentSHA256Mismatch"
        req.context["timestamp"] = stamp
        expected = signer.signature(signer.string_to_sign(req, signer.canonical_request(req)), req)
        if not hmac.compare_digest(expected, given):
            return "SignatureDoesNotMatch (real key)"
        _ = region
        if headers.get("content-encoding", "").startswith("aws-chunked"):
            decoded = _decode_chunked(seen.body, headers.get("x-amz-content-sha256", ""), real, cred, stamp, given)
            if isinstance(decoded, str):
                return decoded
            seen.decoded = decoded
        else:
            seen.decoded = seen.body
        return None

    # -- S3 ------------------------------------------------------------------------------------
    def _multipart(self, request: web.Request, key: str, seen: Seen) -> web.Response | None:
        """CreateMultipartUpload, UploadPart, CompleteMultipartUpload (parts joined in number order)."""
        q = request.query
        if request.method == "POST" and "uploads" in q:
            upload_id = f"upload-{len(self.uploads) + 1}"
            self.uploads[upload_id] = {}
            return _xml(
                "InitiateMultipartUploadResult",
                f"<Bucket>bucket</Bucket><Key>{key}</Key><UploadId>{upload_id}</UploadId>",
            )
        if request.method == "PUT" and "partNumber" in q and "uploadId" in q:
            self.uploads[q["uploadId"]][int(q["partNumber"])] = seen.decoded
            return web.Response(status=200, headers={"ETag": f'"{hashlib.md5(seen.decoded).hexdigest()}"'})
        if request.method == "POST" and "uploadId" in q:
            parts = self.uploads.pop(q["uploadId"])
            self.objects[key] = b"".join(parts[n] for n in sorted(parts))
            return _xml(
                "CompleteMultipartUploadResult", f"<Bucket>bucket</Bucket><Key>{key}</Key><ETag>&quot;mp&quot;</ETag>"
            )
        return None

    def _s3(self, request: web.Request, seen: Seen) -> web.StreamResponse:
        key = request.path.lstrip("/")
        multipart = self._multipart(request, key, seen)
        if multipart is not None:
            return multipart
        if request.method == "PUT" and key in self.fail_once:
            self.fail_once.discard(key)
            return web.Response(status=503, text="<Error><Code>SlowDown</Code></Error>")
        if request.method == "PUT":
            self.objects[key] = seen.decoded
            etag = hashlib.md5(seen.decoded).hexdigest()
            return web.Response(status=200, headers={"ETag": f'"{etag}"'})
        if request.method in ("GET", "HEAD") and key:
            data = self.objects.get(key)
            if data is None:
                return web.Response(status=404, text="<Error><Code>NoSuchKey</Code></Error>")
            etag = hashlib.md5(data).hexdigest()
            headers = {
                "ETag": f'"{etag}"',
                "Last-Modified": "Mon, 30 Nov 2026 00:00:00 GMT",
                "Content-Type": "binary/octet-stream",
            }
            if request.method == "HEAD":
                return web.Response(status=200, headers={**headers, "Content-Length": str(len(data))})
            return web.Response(status=200, body=data, headers=headers)
        if request.method == "GET" and request.query.get("list-type") == "2":
            items = "".join(
                f"<Contents><Key>{k}</Key><Size>{len(v)}</Size><ETag>&quot;x&quot;</ETag>"
                "<LastModified>2026-11-30T00:00:00.000Z</LastModified><StorageClass>STANDARD</StorageClass></Contents>"
                for k, v in sorted(self.objects.items())
            )
            xml = (
                '<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                f"<Name>bucket</Name><Prefix></Prefix><KeyCount>{len(self.objects)}</KeyCount><MaxKeys>1000</MaxKeys>"
                f"<IsTruncated>false</IsTruncated>{items}</ListBucketResult>"
            )
            return web.Response(status=200, text=xml, content_type="application/xml")
        return web.Response(status=400, text="<Error><Code>NotImplemented</Code></Error>")


def _xml(root: str, inner: str) -> web.Response:
    body = f'<?xml version="1.0" encoding="UTF-8"?><{root} xmlns="http://s3.amazonaws.com/doc/2006-03-01/">{inner}</{root}>'
    return web.Response(status=200, text=body, content_type="application/xml")


def _sts(access_key_id: str) -> web.Response:
    """GetCallerIdentity (the only STS call the proxy signs with the real key)."""
    xml = (
        '<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><GetCallerIdentityResult>'
        "<Arn>arn:aws:iam::123456789012:user/oshu-test</Arn><UserId>AIDAOSHUTEST</UserId>"
        "<Account>123456789012</Account></GetCallerIdentityResult>"
        "<ResponseMetadata><RequestId>standin</RequestId></ResponseMetadata></GetCallerIdentityResponse>"
    )
    return web.Response(status=200, text=xml, content_type="text/xml")


#: The text of every Bedrock stand-in answer.
BEDROCK_REPLY = "stand-in reply"


def _event_message(payload: bytes) -> bytes:
    """One `application/vnd.amazon.eventstream` message: prelude, headers, payload, two CRC32s."""
    headers = b""
    for name, value in ((":event-type", "chunk"), (":content-type", "application/json"), (":message-type", "event")):
        headers += bytes([len(name)]) + name.encode() + b"\x07" + struct.pack(">H", len(value)) + value.encode()
    total = 12 + len(headers) + len(payload) + 4
    prelude = struct.pack(">II", total, len(headers))
    head = prelude + struct.pack(">I", binascii.crc32(prelude)) + headers + payload
    return head + struct.pack(">I", binascii.crc32(head))


def bedrock_stream(model: str) -> bytes:
    """InvokeModelWithResponseStream's answer: an Anthropic Messages stream, each event base64'd in a chunk."""
    usage = {"input_tokens": 3, "output_tokens": 1}
    message = {"id": "msg_standin", "type": "message", "role": "assistant", "model": model, "content": []}
    events: list[dict[str, object]] = [
        {"type": "message_start", "message": {**message, "stop_reason": None, "stop_sequence": None, "usage": usage}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": BEDROCK_REPLY}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 2},
        },
        {"type": "message_stop"},
    ]
    return b"".join(
        _event_message(json.dumps({"bytes": base64.b64encode(json.dumps(e).encode()).decode()}).encode())
        for e in events
    )


def _bedrock(request: web.Request, body: bytes) -> web.Response:
    model = request.path.split("/")[2] if request.path.startswith("/model/") else "?"
    sent = json.loads(body or b"{}")
    text = "stand-in reply to " + str(len(sent.get("messages", []))) + " message(s)"
    return web.json_response(
        {
            "id": "msg_standin",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 3, "output_tokens": 5},
        }
    )


def _decode_chunked(body: bytes, mode: str, real: Credentials, cred: list[str], stamp: str, seed: str) -> bytes | str:
    """The payload of an aws-chunked body. With signed chunks (`mode` STREAMING-AWS4-HMAC-SHA256-PAYLOAD
    [-TRAILER]) each chunk signature, and the trailer signature, is checked in the real chain."""
    signed = mode.startswith(STREAMING_SIGNED)
    out = bytearray()
    pos, prev = 0, seed
    key = b"AWS4" + real.secret_key.encode()
    for part in (cred[1], cred[2], cred[3], "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    scope = "/".join(cred[1:])
    while True:
        eol = body.find(b"\r\n", pos)
        if eol < 0:
            return "aws-chunked: truncated"
        size_text, _, ext = body[pos:eol].decode().partition(";")
        size = int(size_text, 16)
        data = body[eol + 2 : eol + 2 + size]
        if signed:
            sts = "\n".join(("AWS4-HMAC-SHA256-PAYLOAD", stamp, scope, prev, _EMPTY, hashlib.sha256(data).hexdigest()))
            want = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
            if ext != f"chunk-signature={want}":
                return "aws-chunked: chunk signature does not match (real key)"
            prev = want
        out += data
        pos = eol + 2 + size
        if size == 0:
            break
        pos += 2
    if mode == STREAMING_SIGNED + "-TRAILER":
        lines = body[eol + 2 :].split(b"\r\n")
        fields, sig_line = lines[:-3], lines[-3]
        canonical = b"".join(f.split(b":", 1)[0].lower() + b":" + f.split(b":", 1)[1].strip() + b"\n" for f in fields)
        sts = "\n".join(("AWS4-HMAC-SHA256-TRAILER", stamp, scope, prev, hashlib.sha256(canonical).hexdigest()))
        if sig_line != b"x-amz-trailer-signature:" + hmac.new(key, sts.encode(), hashlib.sha256).hexdigest().encode():
            return "aws-chunked: trailer signature does not match (real key)"
    return bytes(out)


def now_stamp() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
