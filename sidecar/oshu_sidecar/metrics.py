"""Prometheus metrics kept as plain counters, exported by a collector at scrape time.

The hot path does a dict increment per metric (no label lookup, no lock: everything runs
on the event loop, and so does the /metrics handler); prometheus-client only formats the
exposition. Label values are host names the session names (others are folded into
"other"), secret names and fixed reason/outcome codes: never a secret value, never a path.

Rendering costs ~0.4 ms of the event loop, and the admin port is reachable from the agent's
container: `render()` reuses its last output while nothing changed (every update bumps
`version`) for up to `RENDER_TTL`, and renders at most `RENDER_RATE` times a second beyond a
burst of `RENDER_BURST` (past that, the last output is served, at most a moment old), so a
flood of scrapes cannot take the loop from the proxy.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # prometheus-client is imported on the first scrape: an unscraped sidecar never pays for it
    from prometheus_client.core import Metric

#: Upstream latency buckets (seconds): sub-millisecond local upstreams up to slow LLM calls.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
#: Seconds a rendering is reused while no metric changed (the expiry gauge moves with time).
RENDER_TTL = 1.0
#: Renders allowed at once, and per second after that (a token bucket): ~2% of a core at most.
RENDER_BURST = 50
RENDER_RATE = 50.0


class Metrics:
    """All sidecar metrics; `render()` produces the Prometheus text format."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        #: Bumped by every update: a rendering of the same version is still exact.
        self.version = 0
        self.renders = 0
        self._clock = clock
        self._rendered: tuple[object, float, bytes] | None = None  # (key, at, text)
        self._tokens = float(RENDER_BURST)
        self._tokens_at = clock()
        self.requests: dict[tuple[str, str], int] = {}
        self.substitutions: dict[tuple[str, str], int] = {}
        self.scrubs: dict[tuple[str, str], int] = {}
        self.refusals: dict[str, int] = {}
        self.tunnels: dict[str, int] = {}
        self.open_connections = {"client": 0, "upstream": 0}
        self.connections_opened = {"client": 0, "upstream": 0}
        self.session_reloads: dict[str, int] = {}
        self.leaves_minted = 0
        self.session_name = ""
        self._session_revoked = 0
        self._session_load_error = 0
        self._latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self._latency_sum = 0.0
        self._expiry: Callable[[], float] = lambda: float("inf")
        self._registry: object | None = None

    # -- hot path ---------------------------------------------------------------------
    def request(self, host: str, outcome: str) -> None:
        self.version += 1
        key = (host, outcome)
        self.requests[key] = self.requests.get(key, 0) + 1

    def substituted(self, names: list[str], host: str) -> None:
        self.version += 1
        for name in names:
            key = (name, host)
            self.substitutions[key] = self.substitutions.get(key, 0) + 1

    def scrubbed(self, names: list[str], host: str) -> None:
        self.version += 1
        for name in names:
            key = (name, host)
            self.scrubs[key] = self.scrubs.get(key, 0) + 1

    def refused(self, reason: str) -> None:
        self.version += 1
        self.refusals[reason] = self.refusals.get(reason, 0) + 1

    def observe_latency(self, seconds: float) -> None:
        self.version += 1
        self._latency_counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self._latency_sum += seconds

    def opened(self, side: str) -> None:
        self.version += 1
        self.open_connections[side] += 1
        self.connections_opened[side] += 1

    def closed(self, side: str) -> None:
        self.version += 1
        self.open_connections[side] -= 1

    def tunnel(self, mode: str) -> None:
        self.version += 1
        self.tunnels[mode] = self.tunnels.get(mode, 0) + 1

    def leaf_minted(self) -> None:
        self.version += 1
        self.leaves_minted += 1

    # -- session ----------------------------------------------------------------------
    @property
    def session_revoked(self) -> int:
        return self._session_revoked

    @session_revoked.setter
    def session_revoked(self, value: int) -> None:
        self.version += 1
        self._session_revoked = value

    @property
    def session_load_error(self) -> int:
        return self._session_load_error

    @session_load_error.setter
    def session_load_error(self, value: int) -> None:
        self.version += 1
        self._session_load_error = value

    def bind_expiry(self, seconds: Callable[[], float]) -> None:
        self.version += 1
        self._expiry = seconds

    def set_session(self, name: str) -> None:
        self.version += 1
        self.session_name = name

    def reloaded(self, result: str) -> None:
        self.version += 1
        self.session_reloads[result] = self.session_reloads.get(result, 0) + 1

    # -- exposition -------------------------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        yield from self._counters()
        yield self._latency()
        yield from self._gauges()

    def _counters(self) -> Iterator[Metric]:
        """The event counts: requests, substitutions, scrubs, refusals, tunnels, connections, reloads."""
        from prometheus_client.core import CounterMetricFamily

        def counter(name: str, doc: str, labels: list[str], values: dict) -> CounterMetricFamily:  # type: ignore[type-arg]
            fam = CounterMetricFamily(name, doc, labels=labels)
            for key, value in sorted(values.items()):
                fam.add_metric(list(key) if isinstance(key, tuple) else [key], value)
            return fam

        yield counter("oshu_requests", "Proxied HTTP requests by host and outcome.", ["host", "outcome"], self.requests)
        yield counter(
            "oshu_substitutions",
            "Requests in which a sealed token was replaced, by secret and host.",
            ["secret", "host"],
            self.substitutions,
        )
        yield counter(
            "oshu_response_scrubs",
            "Responses in which a real value was replaced by its sealed token.",
            ["secret", "host"],
            self.scrubs,
        )
        yield counter("oshu_refusals", "Requests and connections refused, by reason code.", ["reason"], self.refusals)
        yield counter("oshu_tunnels", "CONNECT tunnels by mode (intercept or blind).", ["mode"], self.tunnels)
        yield counter(
            "oshu_connections_opened",
            "Connections opened, by side (pool reuse shows here).",
            ["side"],
            self.connections_opened,
        )
        yield counter("oshu_session_reloads", "Session file (re)loads by result.", ["result"], self.session_reloads)
        minted = CounterMetricFamily("oshu_leaf_certificates_minted", "Leaf certificates minted from the session CA.")
        minted.add_metric([], self.leaves_minted)
        yield minted

    def _latency(self) -> Metric:
        """The upstream latency histogram, cumulative over LATENCY_BUCKETS."""
        from prometheus_client.core import HistogramMetricFamily

        hist = HistogramMetricFamily(
            "oshu_upstream_latency_seconds", "Time from sending a request upstream to its response head."
        )
        cumulative, buckets = 0, []
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), self._latency_counts, strict=False):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        hist.add_metric([], buckets, self._latency_sum)
        return hist

    def _gauges(self) -> Iterator[Metric]:
        """The current state: open connections and the session's expiry, revocation, load error, name."""
        from prometheus_client.core import GaugeMetricFamily

        conns = GaugeMetricFamily("oshu_open_connections", "Open connections by side.", labels=["side"])
        for side, count in self.open_connections.items():
            conns.add_metric([side], count)
        yield conns
        for name, doc, value in (
            (
                "oshu_session_expiry_seconds",
                "Seconds until the session expires (+Inf without expiresAt; <= 0 once expired).",
                self._expiry(),
            ),
            ("oshu_session_revoked", "1 once the session is revoked or its file deleted.", self._session_revoked),
            (
                "oshu_session_load_error",
                "1 while the newest session file content is unusable (the last good one is served).",
                self._session_load_error,
            ),
        ):
            yield GaugeMetricFamily(name, doc, value=value)
        info = GaugeMetricFamily("oshu_session_info", "The loaded session.", labels=["session"])
        if self.session_name:
            info.add_metric([self.session_name], 1)
        yield info

    def render(self) -> bytes:
        """The exposition text: the last one while it is still exact (or while renders are rationed)."""
        now = self._clock()
        key = (self.version, self._expiry() > 0)
        last = self._rendered
        if last is not None and last[0] == key and now - last[1] < RENDER_TTL:
            return last[2]
        self._tokens = min(float(RENDER_BURST), self._tokens + (now - self._tokens_at) * RENDER_RATE)
        self._tokens_at = now
        if last is not None and self._tokens < 1.0:
            return last[2]
        self._tokens -= 1.0
        text = self._render()
        self._rendered = (key, now, text)
        return text

    def _render(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest

        self.renders += 1
        if self._registry is None:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(self)
            self._registry = registry
        return generate_latest(self._registry)  # type: ignore[arg-type]
