"""Gateway numbers that need no load client: session creation latency and rate, memory with many
sessions stored, start-up time with them. Not a test; prints one JSON object.

    .venv/bin/python bench/gateway_bench.py [--sessions 10000] [--timed 500]

Creation is measured on one keep-alive HTTPS connection (sequential, as an orchestrator
creating sandboxes one after another would), spread over many API keys so the per-key rate
limit (10/s, burst 50; docs/gateway.md) does not decide the number. RSS is the gateway's
VmRSS after all sessions are created, then again after a restart that loads them from disk.
During the next `--timed` creations a second connection asks `/healthz` back to back: its
latency shows how long the event loop stalls for others while sessions are written
(`healthz_*`; the probe shares the bench's process, so its own numbers include that).
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import threading
import time
from pathlib import Path

from oshu_testkit.gateway_process import GatewayProcess


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _probe(gw: GatewayProcess, stop: threading.Event, out: list[float]) -> None:
    """GET /healthz back to back on its own connection until `stop`; latencies into `out`."""
    assert gw.listen is not None
    conn = http.client.HTTPSConnection(*gw.listen, context=gw.ssl_context(), timeout=30)
    while not stop.is_set() and len(out) < 1_000_000:
        t0 = time.perf_counter()
        conn.request("GET", "/healthz")
        conn.getresponse().read()
        out.append(time.perf_counter() - t0)
    conn.close()


def _pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return round(v[max(0, int(len(v) * q) - 1)] * 1000, 2) if v else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=10000)
    ap.add_argument("--timed", type=int, default=500, help="creations whose latency is recorded")
    args = ap.parse_args()
    keys = [f"bench-key-{i:05d}-0123456789" for i in range(args.sessions // 40 + 2)]
    with GatewayProcess(api_keys=keys, plain=False) as gw:
        assert gw.listen is not None and gw.proc is not None
        idle_rss = _rss_mb(gw.proc.pid)
        conn = http.client.HTTPSConnection(*gw.listen, context=gw.ssl_context(), timeout=30)
        lat: list[float] = []
        probe: list[float] = []
        stop = threading.Event()
        prober = threading.Thread(target=_probe, args=(gw, stop, probe), daemon=True)
        t_start = time.perf_counter()
        for i in range(args.sessions):
            body = json.dumps(
                {
                    "secrets": {
                        "ANTHROPIC_API_KEY": f"sk-ant-bench-{i:08d}-abcdefgh",
                        "OPENAI_API_KEY": f"sk-openai-bench-{i:08d}",
                    }
                }
            )
            t0 = time.perf_counter()
            conn.request(
                "POST",
                "/v1/sessions",
                body,
                {"Content-Type": "application/json", "Authorization": f"Bearer {keys[i // 40]}"},
            )
            resp = conn.getresponse()
            resp.read()
            if resp.status != 201:
                raise SystemExit(f"creation {i}: {resp.status}")
            if i < args.timed:
                lat.append(time.perf_counter() - t0)
            elif i == args.timed:
                prober.start()  # the next `timed` creations run with the probe
            elif i == 2 * args.timed:
                stop.set()
        total = time.perf_counter() - t_start
        stop.set()
        if prober.is_alive():
            prober.join(30)
        conn.close()
        rss_full = _rss_mb(gw.proc.pid)
        gw.stop()
        t0 = time.perf_counter()
        gw.start()
        startup = time.perf_counter() - t0
        _, _, metrics = gw.request("GET", "/metrics", api_key="")
        live = next(
            int(float(ln.split()[1]))
            for ln in metrics.decode().splitlines()
            if ln.startswith("oshu_gateway_sessions_live ")
        )
        rss_loaded = _rss_mb(gw.proc.pid)
        db_mb = (gw.state_dir / "sessions.db").stat().st_size / 1e6
    lat.sort()
    print(
        json.dumps(
            {
                "sessions": args.sessions,
                "create_p50_ms": round(statistics.median(lat) * 1000, 2),
                "create_p99_ms": round(lat[int(len(lat) * 0.99) - 1] * 1000, 2),
                "creations_per_s": round(args.sessions / total, 1),
                "healthz_during_creations_p50_ms": _pct(probe, 0.5),
                "healthz_during_creations_p99_ms": _pct(probe, 0.99),
                "healthz_during_creations_max_ms": _pct(probe, 1.0),
                "rss_idle_mb": round(idle_rss, 1),
                "rss_after_creating_mb": round(rss_full, 1),
                "startup_s_with_sessions": round(startup, 2),
                "sessions_live_after_restart": live,
                "rss_after_restart_mb": round(rss_loaded, 1),
                "db_mb": round(db_mb, 1),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
