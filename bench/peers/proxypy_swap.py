"""proxy.py plugin doing the sidecar's job: sealed token -> real key in headers.

Load with `--plugins proxypy_swap.SwapPlugin` (this directory on PYTHONPATH)
and BENCH_SWAP_CONFIG set; proxy.py's TLS interception (--ca-*-file flags)
decrypts, and --ca-file makes it verify the upstream against the test CA.
"""

import os
import sys

from proxy.http.parser import HttpParser
from proxy.http.proxy import HttpProxyBasePlugin

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from swap_config import SwapRule

_RULE: SwapRule | None = None


def _rule() -> SwapRule:
    global _RULE
    if _RULE is None:
        _RULE = SwapRule()
    return _RULE


class SwapPlugin(HttpProxyBasePlugin):
    def resolve_dns(self, host: str, port: int) -> tuple[str | None, None]:
        return _rule().resolve.get(host.lower()), None

    def handle_client_request(self, request: HttpParser) -> HttpParser | None:
        rule = _rule()
        if request.headers is None or not request.has_header(b"host"):
            return request
        if not rule.allows(request.header(b"host").decode("latin-1")):
            return request
        for key, (name, value) in list(request.headers.items()):
            if rule.sealed_b in value:
                request.headers[key] = (name, value.replace(rule.sealed_b, rule.value_b))
        return request
