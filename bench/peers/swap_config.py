"""The header-swap rule both peer plugins apply, read from $BENCH_SWAP_CONFIG.

The file is written by the benchmark: {"sealed", "value", "hosts": ["h:port"],
"resolve": {"h": "127.0.0.1"}}. Keeping the rule in one place makes the peers
do the same work the sidecar does: for a request whose Host is an allowed
host, replace the sealed token wherever it appears in a header value.
"""

import json
import os


class SwapRule:
    def __init__(self) -> None:
        with open(os.environ["BENCH_SWAP_CONFIG"], encoding="utf-8") as f:
            cfg = json.load(f)
        self.sealed: str = cfg["sealed"]
        self.value: str = cfg["value"]
        self.hosts: frozenset[str] = frozenset(h.lower() for h in cfg["hosts"])
        self.resolve: dict[str, str] = cfg["resolve"]
        self.sealed_b = self.sealed.encode()
        self.value_b = self.value.encode()

    def allows(self, host_port: str) -> bool:
        return host_port.lower().rstrip(".") in self.hosts
