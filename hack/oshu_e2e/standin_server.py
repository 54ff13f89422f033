"""A local HTTPS stand-in for a paid API, run as a pod (stdlib only; Debian's python3).

Every request is printed as one JSON line on stdout (method, path, Host, headers), so a test
reads what the API really received with ``kubectl logs``. Answers:

- ``GET .../info/refs`` (git's first request): 401 with a Basic challenge until the request
  carries credentials, then a one-ref listing (git's "dumb" protocol), so ``git ls-remote``
  succeeds and its credentials are recorded;
- anything else: 200, ``{"ok": true, "path": ...}``.

With ``$STANDIN_CONFIG`` (a JSON file holding the REAL credentials, see standin_cred.py) it is
also the far side of the non-static kinds: it checks AWS SigV4 signatures with the real key,
is an OAuth2 / Google token endpoint (``POST /token``) that verifies client credentials or
RS256 assertions with the real public key, and notes whether a bearer token is one it issued.
Its verdicts go into the request's log line.

It never echoes request headers back, so a client-side check cannot be satisfied by the
response. TLS: ``/tls/tls.crt`` and ``/tls/tls.key`` (a Secret volume); port ``$PORT`` (8443).
"""

from __future__ import annotations

import importlib
import json
import os
import ssl
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

try:  # standin_cred.py sits next to this file in the pod's ConfigMap (stdlib only, like this one)
    standin_cred: Any = importlib.import_module("standin_cred")
except ImportError:
    standin_cred = None

REF = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"  # any 40-hex object name
CONFIG: dict[str, Any] = {}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _record(self, body: bytes, extra: dict[str, Any] | None = None) -> None:
        line = {
            "ts": time.time(),
            "method": self.command,
            "path": self.path,
            "host": self.headers.get("host"),
            "headers": [[k, v] for k, v in self.headers.items()],
            "body_bytes": len(body),
            **(extra or {}),
        }
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()

    def _answer(self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(min(length, 1 << 20)) if length else b""
        if CONFIG and standin_cred is not None:
            answer = standin_cred.answer(CONFIG, self.command, self.path, self.headers, body)
            if answer is not None:
                status, payload, extra = answer
                self._record(body, extra)
                self._answer(status, json.dumps(payload).encode(), "application/json")
                return
            self._record(body, standin_cred.bearer_note(self.headers, CONFIG))
            self._answer(200, json.dumps({"ok": True, "path": self.path}).encode(), "application/json")
            return
        self._record(body)
        if self.path.split("?")[0].endswith("/info/refs"):
            if not self.headers.get("authorization"):
                self._answer(401, b"auth needed\n", "text/plain", {"www-authenticate": 'Basic realm="standin"'})
            else:
                self._answer(200, f"{REF}\trefs/heads/main\n".encode(), "text/plain")
            return
        self._answer(200, json.dumps({"ok": True, "path": self.path}).encode(), "application/json")

    do_GET = do_POST = do_PUT = do_HEAD = _handle

    def log_message(self, format: str, *args: object) -> None:
        pass  # the JSON lines are the log


def main() -> None:
    if os.environ.get("STANDIN_CONFIG"):
        with open(os.environ["STANDIN_CONFIG"]) as fh:
            CONFIG.update(json.load(fh))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(os.environ.get("TLS_CERT", "/tls/tls.crt"), os.environ.get("TLS_KEY", "/tls/tls.key"))
    server = ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("PORT", "8443"))), Handler)
    # Handshakes happen in each request's thread, not in accept(): a stuck client blocks no one.
    server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    sys.stdout.write(json.dumps({"ready": True, "port": server.server_address[1]}) + "\n")
    sys.stdout.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
