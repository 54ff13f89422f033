"""Prometheus metrics, with label children cached so the hot path does one dict lookup.

Label values are host names the session names (others are folded into "other"),
secret names, and fixed reason/outcome codes: never a secret value, never a path.
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

disable_created_metrics()  # the *_created series only add noise for a per-pod sidecar

#: Upstream latency buckets (seconds): sub-millisecond local upstreams up to slow LLM calls.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter("oshu_requests", "Proxied HTTP requests by host and outcome.",
                                ["host", "outcome"], registry=r)
        self.substitutions = Counter("oshu_substitutions", "Sealed tokens replaced by real values, by secret and host.",
                                     ["secret", "host"], registry=r)
        self.scrubs = Counter("oshu_response_scrubs", "Responses in which a real value was replaced by its sealed token.",
                              ["secret", "host"], registry=r)
        self.refusals = Counter("oshu_refusals", "Requests and connections refused, by reason code.",
                                ["reason"], registry=r)
        self.upstream_latency = Histogram("oshu_upstream_latency_seconds",
                                          "Time from sending a request upstream to its response head.",
                                          buckets=LATENCY_BUCKETS, registry=r)
        self.open_connections = Gauge("oshu_open_connections", "Open connections by side.",
                                      ["side"], registry=r)
        self.connections_opened = Counter("oshu_connections_opened", "Connections opened, by side (pool reuse shows here).",
                                          ["side"], registry=r)
        self.tunnels = Counter("oshu_tunnels", "CONNECT tunnels by mode (intercept or blind).",
                               ["mode"], registry=r)
        self.leaves_minted = Counter("oshu_leaf_certificates_minted", "Leaf certificates minted from the session CA.",
                                     registry=r)
        self.session_expiry = Gauge("oshu_session_expiry_seconds",
                                    "Seconds until the session expires (+Inf without expiresAt; <= 0 once expired).",
                                    registry=r)
        self.session_revoked = Gauge("oshu_session_revoked", "1 once the session is revoked or its file deleted.",
                                     registry=r)
        self.session_reloads = Counter("oshu_session_reloads", "Session file (re)loads by result.", ["result"],
                                       registry=r)
        self.session_load_error = Gauge("oshu_session_load_error",
                                        "1 while the newest session file content is unusable (the last good one is served).",
                                        registry=r)
        self.session_info = Gauge("oshu_session_info", "The loaded session.", ["session"], registry=r)
        self.client_conns = self.open_connections.labels("client")
        self.upstream_conns = self.open_connections.labels("upstream")
        self.client_opened = self.connections_opened.labels("client")
        self.upstream_opened = self.connections_opened.labels("upstream")
        self._requests: dict[tuple[str, str], object] = {}
        self._subs: dict[tuple[str, str], object] = {}
        self._refusals: dict[str, object] = {}

    def bind_expiry(self, seconds: Callable[[], float]) -> None:
        self.session_expiry.set_function(seconds)

    def set_session(self, name: str) -> None:
        self.session_info.clear()
        self.session_info.labels(name).set(1)

    def request(self, host: str, outcome: str) -> None:
        child = self._requests.get((host, outcome))
        if child is None:
            child = self._requests[(host, outcome)] = self.requests.labels(host, outcome)
        child.inc()  # type: ignore[attr-defined]

    def substituted(self, names: list[str], host: str) -> None:
        for name in names:
            child = self._subs.get((name, host))
            if child is None:
                child = self._subs[(name, host)] = self.substitutions.labels(name, host)
            child.inc()  # type: ignore[attr-defined]

    def scrubbed(self, names: list[str], host: str) -> None:
        for name in names:
            self.scrubs.labels(name, host).inc()

    def refused(self, reason: str) -> None:
        child = self._refusals.get(reason)
        if child is None:
            child = self._refusals[reason] = self.refusals.labels(reason)
        child.inc()  # type: ignore[attr-defined]

    def render(self) -> bytes:
        return generate_latest(self.registry)
