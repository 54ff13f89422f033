"""mitmproxy addon doing the sidecar's job: sealed token -> real key in headers.

Run as `mitmdump -s mitm_swap.py` with BENCH_SWAP_CONFIG set. Upstream TLS is
verified by mitmproxy itself (ssl_verify_upstream_trusted_ca); this addon only
points the test host name at its loopback address, keeping SNI on the name.
"""

import os
import sys

from mitmproxy import http
from mitmproxy.proxy import server_hooks

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from swap_config import SwapRule


class Swap:
    def __init__(self) -> None:
        self.rule = SwapRule()

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        host, port = data.server.address[0], data.server.address[1]
        addr = self.rule.resolve.get(host.lower())
        if addr is not None:
            data.server.sni = host
            data.server.address = (addr, port)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if not self.rule.allows(flow.request.headers.get("host", "")):
            return
        headers = flow.request.headers
        for name, value in headers.items(multi=True):
            if self.rule.sealed in value:
                headers[name] = value.replace(self.rule.sealed, self.rule.value)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        # Stream instead of buffering, as the sidecar does (SSE needs it).
        flow.response.stream = True


addons = [Swap()]
