"""Error responses the proxy itself sends: a status and `{"error": {"code", "message"}}`.

Codes are stable (clients and tests match on them); messages are for humans and name
hosts and secrets, never a secret value. `X-Oshu-Error` carries the code too, so a
client that cannot read a CONNECT response body still sees why.
"""

from __future__ import annotations

import json
from http import HTTPStatus

#: Every error code the proxy emits, with the status it goes with.
CODES: dict[str, int] = {
    "bad_request": 400,
    "not_a_proxy_request": 400,
    "egress_denied": 403,
    "plaintext_secret": 403,
    "session_expired": 403,
    "session_revoked": 403,
    "session_changed": 403,
    "upstream_address_denied": 403,
    "signature_invalid": 403,  # AWS SigV4: not signed with the session's sealed credentials
    "signature_expired": 403,  # AWS SigV4: X-Amz-Date outside 15 minutes, presigned URL expired
    "signature_replayed": 403,  # AWS SigV4: the same signature seen before inside the window
    "payload_hash_mismatch": 400,  # AWS SigV4: x-amz-content-sha256 is not the body's hash
    "payload_too_large": 413,  # a body a credential handler must buffer exceeds its limit
    "credential_denied": 403,  # AWS SigV4: a call that would hand the agent new real credentials (STS, IAM...)
    "assertion_invalid": 403,  # a service-account JWT that does not verify with the session key (gcp.py)
    "assertion_expired": 403,  # ... or is outside its validity window
    "request_timeout": 408,
    "host_mismatch": 421,
    "not_redirected": 421,  # transparent listener dialled directly, not reached through a redirect rule
    "client_hello_invalid": 400,  # transparent listener: a malformed or oversized TLS ClientHello (reset)
    "unsupported_protocol": 400,  # transparent listener: neither TLS nor HTTP to a host that is intercepted
    "headers_too_large": 431,
    "not_implemented": 501,
    "upstream_unreachable": 502,
    "upstream_tls_error": 502,
    "upstream_protocol_error": 502,
    "token_unavailable": 502,  # the OAuth2 token endpoint did not give the proxy an access token (oauth2.py)
    "upstream_timeout": 504,
    "http_version_not_supported": 505,
    "internal_error": 500,
    "not_found": 404,  # admin listener only
    "method_not_allowed": 405,  # admin listener only
}


class ProxyError(Exception):
    """The one error type of the proxy: a stable code whose HTTP status comes from `CODES`, and a message.

    Raised by the parser (malformed input), the decision function (refusals), upstream
    connects and the relay alike, so every refusal is answered the same way.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = CODES[code]

    def response(self, close: bool = False) -> bytes:
        """A complete HTTP/1.1 response carrying this error as JSON (status from `CODES`)."""
        body = error_body(self.code, self.message)
        head = (
            f"HTTP/1.1 {self.status} {_reason(self.status)}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"X-Oshu-Error: {self.code}\r\n"
            "Cache-Control: no-store\r\n" + ("Connection: close\r\n" if close else "") + "\r\n"
        )
        return head.encode("latin-1") + body


def bad_request(message: str) -> ProxyError:
    return ProxyError("bad_request", message)


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}, separators=(",", ":")).encode() + b"\n"


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
