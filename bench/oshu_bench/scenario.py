"""The measurement sequence run for every target, in the same order for each.

start -> ready -> idle memory -> warm-up -> 1 connection -> 32 connections
(peak memory sampled) -> fresh connections -> SSE stream -> stop.
CPU time is read from /proc around each load and divided by the requests it
answered; the upstream's (nginx) CPU is read the same way for context.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass

from . import probe, procs, procstat
from .loadgen import Loadgen, Route
from .targets import Context, Target


@dataclass(frozen=True)
class Plan:
    warmup_s: float
    load_s: float
    conns_low: int
    conns_high: int
    fresh_n: int
    sse_events: int
    sse_interval_ms: int
    settle_s: float

    @staticmethod
    def full() -> Plan:
        return Plan(
            warmup_s=1.0,
            load_s=3.0,
            conns_low=1,
            conns_high=32,
            fresh_n=60,
            sse_events=30,
            sse_interval_ms=25,
            settle_s=0.5,
        )

    @staticmethod
    def quick() -> Plan:
        return Plan(
            warmup_s=0.3,
            load_s=1.5,
            conns_low=1,
            conns_high=32,
            fresh_n=20,
            sse_events=10,
            sse_interval_ms=25,
            settle_s=0.2,
        )


class Running:
    """A started proxy: process, port and start-up timings."""

    def __init__(self, target: Target, ctx: Context) -> None:
        self.launch = target.launch(ctx)
        self.log = ctx.workdir / f"{target.name}.log"
        self.t0 = time.perf_counter()
        self.proc: subprocess.Popen = procs.spawn(self.launch.cmd, self.log, self.launch.env, self.launch.cwd)
        self.readyz_s: float | None = None
        self.first_response_s: float | None = None
        try:
            if self.launch.admin_port is not None:
                self.readyz_s = probe.wait_until(lambda: probe.readyz(self.launch.admin_port), self.proc, timeout=30)
            if self.launch.after_ready is not None:  # the gateway: create its sessions
                self.launch.after_ready()
            auth, sealed = self.launch.probe_identity or ("", ctx.sealed)
            probe.wait_until(
                lambda: (
                    probe.proxied_request(self.launch.port, ctx.up.http_target, ctx.pki.proxy_ca, sealed, auth) == 200
                ),
                self.proc,
                timeout=30,
            )
            self.first_response_s = time.perf_counter() - self.t0
        except Exception as e:
            self.stop()
            raise RuntimeError(f"{target.name} did not come up: {e}\n{procs.log_tail(self.log)}") from e

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        procs.stop(self.proc)


def _load(lg: Loadgen, route: Route, conns: int, seconds: float, proxy_pid: int | None, upstream_pid: int) -> dict:
    cpu0 = procstat.cpu_times(proxy_pid) if proxy_pid else (0.0, 0.0)
    up0 = procstat.cpu_seconds(upstream_pid)
    busy0, wall0 = procstat.machine_busy_seconds(), time.perf_counter()
    res = lg.run("load", route, "-conns", str(conns), "-duration", f"{seconds}s", timeout=seconds + 60)
    busy, wall = procstat.machine_busy_seconds() - busy0, time.perf_counter() - wall0
    up_cpu = procstat.cpu_seconds(upstream_pid) - up0
    n = max(res["requests"], 1)
    if proxy_pid:
        user, system = (b - a for a, b in zip(cpu0, procstat.cpu_times(proxy_pid), strict=True))
        res["proxy_cpu_s"] = user + system
        res["proxy_cpu_us_per_req"] = res["proxy_cpu_s"] / n * 1e6
        res["proxy_sys_share"] = system / res["proxy_cpu_s"] if res["proxy_cpu_s"] else None
        res["proxy_cores_busy"] = res["proxy_cpu_s"] / res["elapsed_s"]
    res["upstream_cpu_us_per_req"] = up_cpu / n * 1e6
    # Whatever else ran on the shared machine meanwhile, in cores: how contended the numbers are.
    ours = res.get("proxy_cpu_s", 0.0) + up_cpu + res["client_cpu_s"]
    res["other_cores_busy"] = max(0.0, busy - ours) / wall
    res["client_cpu_us_per_req"] = res["client_cpu_s"] / n * 1e6
    return res


def measure(target: Target, ctx: Context, lg: Loadgen, plan: Plan, log=print) -> dict:
    up = ctx.up
    result: dict = {"target": target.name}
    running = None
    if target.proxied:
        running = Running(target, ctx)
        result["readyz_s"] = running.readyz_s
        result["first_response_s"] = running.first_response_s
        ids = running.launch.identities
        http = Route(up.http_target, ctx.pki.proxy_ca, proxy_port=running.launch.port, identities=ids)
        sse = Route(up.sse_target, ctx.pki.proxy_ca, proxy_port=running.launch.port, identities=ids)
    else:
        http = Route(up.http_target, ctx.pki.upstream_ca, dial_port=up.http_port, api_key=ctx.secret)
        sse = Route(up.sse_target, ctx.pki.upstream_ca, dial_port=up.sse_port, api_key=ctx.secret)
    pid = running.pid if running else None
    try:
        time.sleep(plan.settle_s)
        if pid:
            result["mem_idle"] = procstat.memory_bytes(pid)
        log(f"  {target.name}: warm-up")
        lg.run("load", http, "-conns", str(plan.conns_high), "-duration", f"{plan.warmup_s}s")
        log(f"  {target.name}: {plan.conns_low} connection(s), {plan.load_s}s")
        result["low"] = _load(lg, http, plan.conns_low, plan.load_s, pid, up.nginx.pid)
        log(f"  {target.name}: {plan.conns_high} connections, {plan.load_s}s")
        if pid:
            with procstat.PeakMemory(pid) as peak:
                result["high"] = _load(lg, http, plan.conns_high, plan.load_s, pid, up.nginx.pid)
            result["mem_load"] = peak.peak
        else:
            result["high"] = _load(lg, http, plan.conns_high, plan.load_s, pid, up.nginx.pid)
        log(f"  {target.name}: {plan.fresh_n} fresh connections")
        result["fresh"] = lg.run("fresh", http, "-n", str(plan.fresh_n), "-warmup", "3")
        log(f"  {target.name}: SSE stream, {plan.sse_events} events")
        result["sse"] = lg.run("sse", sse, "-events", str(plan.sse_events), "-interval-ms", str(plan.sse_interval_ms))
    finally:
        if running:
            running.stop()
    return result
