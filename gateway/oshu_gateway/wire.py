"""The gateway's own HTTP/1.1 bytes on the listener: API responses and the 407 for the proxy side."""

from __future__ import annotations

from http import HTTPStatus

from oshu_sidecar.errors import error_body
from oshu_sidecar.http1 import RequestHead

from .api import Response


def headers_of(req: RequestHead) -> dict[str, bytes]:
    """Field name (lower case) -> value of a parsed head (the parser already refused malformed ones)."""
    out: dict[str, bytes] = {}
    for line in req.raw[req.line_end + 2 :].split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if sep:
            out.setdefault(name.strip().lower().decode("latin-1"), value.strip())
    return out


def http_response(resp: Response, close: bool, head_only: bool = False) -> bytes:
    try:
        reason = HTTPStatus(resp.status).phrase
    except ValueError:
        reason = "Status"
    lines = [f"HTTP/1.1 {resp.status} {reason}", "Cache-Control: no-store"]
    if resp.status != 204:
        lines += [f"Content-Type: {resp.content_type}", f"Content-Length: {len(resp.body)}"]
    lines += [f"{k}: {v}" for k, v in resp.headers]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head_only or resp.status == 204 else resp.body)


PROXY_AUTH_REQUIRED = (
    b"HTTP/1.1 407 Proxy Authentication Required\r\n"
    b'Proxy-Authenticate: Basic realm="oshu-vault"\r\n'
    b"Content-Type: application/json\r\nX-Oshu-Error: proxy_auth_required\r\nConnection: close\r\n"
)


def proxy_auth_required() -> bytes:
    body = error_body(
        "proxy_auth_required", "send Proxy-Authorization: Basic base64(session_id:token) of a live session"
    )
    return PROXY_AUTH_REQUIRED + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
