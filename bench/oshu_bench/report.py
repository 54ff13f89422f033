"""Turns measurement dicts into the printed table, the ratios and the target check."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

OURS = "oshu-sidecar"
Getter = Callable[[dict], float | None]


def _g(*path: str) -> Getter:
    def get(r: dict) -> float | None:
        v: Any = r
        for p in path:
            if not isinstance(v, dict) or v.get(p) is None:
                return None
            v = v[p]
        return float(v)

    return get


def _scaled(get: Getter, k: float) -> Getter:
    def scaled(r: dict) -> float | None:
        v = get(r)
        return None if v is None else v * k

    return scaled


def _added_ms(get: Getter, r: dict, base: dict) -> float | None:
    """How much more `get` measures for `r` than for `base`, in ms (None if either is missing)."""
    a, b = get(r), get(base)
    return (a - b) / 1e3 if a is not None and b else None


def _errors(r: dict) -> float | None:
    total = 0
    for key in ("low", "high", "fresh", "sse"):
        if key in r:
            total += r[key]["errors"]["count"]
    return total


ROWS: list[tuple[str, Getter, str]] = [
    # label, getter, format
    ("req/s, 1 conn", _g("low", "rps"), "{:,.0f}"),
    ("req/s, 32 conns", _g("high", "rps"), "{:,.0f}"),
    ("p50 latency, 1 conn (ms)", _scaled(_g("low", "latency", "p50_us"), 1e-3), "{:.3f}"),
    ("p99 latency, 1 conn (ms)", _scaled(_g("low", "latency", "p99_us"), 1e-3), "{:.3f}"),
    ("p50 latency, 32 conns (ms)", _scaled(_g("high", "latency", "p50_us"), 1e-3), "{:.2f}"),
    ("p99 latency, 32 conns (ms)", _scaled(_g("high", "latency", "p99_us"), 1e-3), "{:.2f}"),
    ("proxy CPU/req, 1 conn (us)", _g("low", "proxy_cpu_us_per_req"), "{:.0f}"),
    ("proxy CPU/req, 32 conns (us)", _g("high", "proxy_cpu_us_per_req"), "{:.0f}"),
    ("  kernel (sys) share, 32 conns (%)", _scaled(_g("high", "proxy_sys_share"), 100), "{:.0f}"),
    ("  cores busy, 32 conns", _g("high", "proxy_cores_busy"), "{:.2f}"),
    ("fresh CONNECT+TLS+resp p50 (ms)", _scaled(_g("fresh", "response", "p50_us"), 1e-3), "{:.2f}"),
    ("fresh CONNECT+TLS+resp p99 (ms)", _scaled(_g("fresh", "response", "p99_us"), 1e-3), "{:.2f}"),
    ("SSE event delay p50 (ms)", _scaled(_g("sse", "delay", "p50_us"), 1e-3), "{:.3f}"),
    ("SSE event delay max (ms)", _scaled(_g("sse", "delay", "max_us"), 1e-3), "{:.3f}"),
    ("RSS idle (MB)", _scaled(_g("mem_idle", "rss"), 1 / 2**20), "{:.1f}"),
    ("RSS under load (MB)", _scaled(_g("mem_load", "rss"), 1 / 2**20), "{:.1f}"),
    ("PSS under load (MB)", _scaled(_g("mem_load", "pss"), 1 / 2**20), "{:.1f}"),
    ("processes", _g("mem_load", "processes"), "{:.0f}"),
    ("ready: /readyz (ms)", _scaled(_g("readyz_s"), 1e3), "{:.0f}"),
    ("ready: first proxied resp (ms)", _scaled(_g("first_response_s"), 1e3), "{:.0f}"),
    ("upstream CPU/req, 32 conns (us)", _g("high", "upstream_cpu_us_per_req"), "{:.0f}"),
    ("client CPU/req, 32 conns (us)", _g("high", "client_cpu_us_per_req"), "{:.0f}"),
    ("other load on the machine, 32 conns (cores)", _g("high", "other_cores_busy"), "{:.2f}"),
    ("errors", _errors, "{:.0f}"),
]


def _fmt(v: float | None, fmt: str) -> str:
    return "-" if v is None else fmt.format(v)


def table(results: list[dict]) -> str:
    names = [r["target"] for r in results]
    width0 = max(len(r[0]) for r in ROWS)
    cells = [[_fmt(get(r), fmt) for r in results] for _, get, fmt in ROWS]
    widths = [max(len(n), *(len(c[i]) for c in cells)) for i, n in enumerate(names)]
    out = [
        "| "
        + "metric".ljust(width0)
        + " | "
        + " | ".join(n.rjust(w) for n, w in zip(names, widths, strict=True))
        + " |",
        "|" + "-" * (width0 + 2) + "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|",
    ]
    for (label, _, _), row in zip(ROWS, cells, strict=True):
        out.append(
            "| " + label.ljust(width0) + " | " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |"
        )
    return "\n".join(out)


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def ratios(results: list[dict]) -> str:
    by = {r["target"]: r for r in results}
    direct = by.get("direct")
    proxies = [r for r in results if r["target"] != "direct"]
    lines = []
    rps1, rps32 = _g("low", "rps"), _g("high", "rps")
    p50 = _g("low", "latency", "p50_us")
    sse = _g("sse", "delay", "p50_us")
    fresh = _g("fresh", "response", "p50_us")
    cpu = _g("high", "proxy_cpu_us_per_req")
    if direct:
        lines.append("vs direct (throughput kept; latency and SSE delay added):")
        for r in proxies:
            added, sse_added = _added_ms(p50, r, direct), _added_ms(sse, r, direct)
            fresh_added = _added_ms(fresh, r, direct)
            lines.append(
                f"  {r['target']:<13} req/s {_ratio(rps1(r), rps1(direct))} (1 conn), "
                f"{_ratio(rps32(r), rps32(direct))} (32 conns); "
                f"+{_fmt(added, '{:.3f}')} ms p50 (1 conn); "
                f"+{_fmt(fresh_added, '{:.2f}')} ms fresh conn; "
                f"+{_fmt(sse_added, '{:.3f}')} ms SSE delay"
            )
    ours = by.get(OURS)
    peers = [r for r in proxies if r["target"] != OURS]
    if ours and peers:
        lines.append(f"{OURS} vs peers (>1x = ours better):")
        for p in peers:
            lines.append(
                f"  vs {p['target']:<10} req/s {_ratio(rps1(ours), rps1(p))} (1 conn), "
                f"{_ratio(rps32(ours), rps32(p))} (32 conns); "
                f"CPU/req {_ratio(cpu(p), cpu(ours))} less; "
                f"p50 1 conn {_ratio(p50(p), p50(ours))} lower"
            )
    elif len(peers) >= 2:
        a, b = peers[0], peers[1]
        lines.append(
            f"{b['target']} vs {a['target']}: req/s {_ratio(rps32(b), rps32(a))} (32 conns), "
            f"CPU/req {_ratio(cpu(a), cpu(b))} less"
        )
    return "\n".join(lines)


def targets_check(results: list[dict]) -> str:
    """The issue's performance targets, checked for the sidecar."""
    by = {r["target"]: r for r in results}
    ours, direct = by.get(OURS), by.get("direct")
    if not ours:
        return ""
    rps32, cpu = _g("high", "rps"), _g("high", "proxy_cpu_us_per_req")
    p50, sse = _g("low", "latency", "p50_us"), _g("sse", "delay", "p50_us")
    checks: list[tuple[str, bool | None, str]] = []

    def add(label: str, ok: bool | None, detail: str) -> None:
        checks.append((label, ok, detail))

    ours_rps = rps32(ours)
    for peer, factor, fmt in (("mitmproxy", 10, "{:.1f}x"), ("proxy.py", 1, "{:.2f}x")):
        peer_rps = rps32(by[peer]) if peer in by else None
        if ours_rps is not None and peer_rps:
            r = ours_rps / peer_rps
            add(f"req/s @32 >= {f'{factor}x ' if factor != 1 else ''}{peer}", r >= factor, fmt.format(r))
    ours_cpu = cpu(ours)
    if ours_cpu is not None:
        add("proxy CPU <= 100 us/req", ours_cpu <= 100, f"{ours_cpu:.0f} us")
    added = _added_ms(p50, ours, direct) if direct else None
    if added is not None:
        add("p50 added latency < 0.3 ms @1", added < 0.3, f"{added:.3f} ms")
    f = _g("fresh", "response", "p50_us")(ours)
    if f is not None:
        add("fresh connection < 2 ms", f / 1e3 < 2, f"{f / 1e3:.2f} ms")
    ours_sse, direct_sse = sse(ours), (sse(direct) if direct else None)
    if ours_sse is not None:
        d = ours_sse / 1e3 - (direct_sse / 1e3 if direct_sse is not None else 0)
        add("SSE forwarded within 2 ms", d < 2, f"+{d:.3f} ms vs direct")
    if ours.get("readyz_s") is not None:
        add("ready < 0.5 s", ours["readyz_s"] < 0.5, f"{ours['readyz_s'] * 1e3:.0f} ms")
    rss = _g("mem_idle", "rss")(ours)
    if rss is not None:
        add("RSS idle < 50 MB", rss < 50 * 2**20, f"{rss / 2**20:.1f} MB")
    lines = ["issue targets for oshu-sidecar:"]
    for label, ok, detail in checks:
        lines.append(f"  [{'PASS' if ok else 'MISS'}] {label}: {detail}")
    return "\n".join(lines)


def error_notes(results: list[dict]) -> str:
    """Errors mean a number is not to be trusted (e.g. 403: the swap did not happen)."""
    lines = []
    for r in results:
        for key in ("low", "high", "fresh", "sse"):
            e = r.get(key, {}).get("errors")
            if e and e["count"]:
                lines.append(f"WARNING {r['target']} {key}: {e['count']} errors {e['by_kind']} e.g. {e['samples'][:2]}")
    return "\n".join(lines)


def spread(results: list[dict]) -> str:
    """req/s range over rounds: how much the shared machine moved the numbers."""
    parts = []
    for r in results:
        s = r.get("spread", {}).get("high") or []
        if len(s) > 1:
            parts.append(f"{r['target']} {min(s):,.0f}-{max(s):,.0f}")
    return ("req/s at 32 conns, min-max over rounds: " + ", ".join(parts)) if parts else ""
