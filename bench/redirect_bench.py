"""Redirect enforcement's cost: the same Go client workload direct, through the explicit proxy, and redirected.

    sudo .venv/bin/python bench/redirect_bench.py [--requests 2000] [--fresh 300] [--rounds 3]

Builds what tests/enforcement uses (oshu_testkit.netns / .redirect): an agent network namespace with
`oshu-vault-netrules`' rules, the real sidecar as uid 65532 with its transparent listener, and the
test upstream (aiohttp, HTTPS) in an "outside" namespace behind a veth pair. The client is
tests/enforcement/goclient (Go, its own transport), run as:

- direct:   uid 65532 (exempt from the rules), real key, straight to the upstream;
- explicit: the agent's uid, sealed token, `-proxy` = the sidecar's proxy port (CONNECT, intercept);
- redirect: the agent's uid, sealed token, no proxy at all: the rules send it to the transparent port.

Two workloads: `keep-alive` (N requests on one connection) and `fresh` (a new TCP + TLS connection per
request). Every number is the median over rounds; the sidecar's CPU is the on-CPU time of its threads
(/proc/<pid>/task/*/schedstat) over the run, the client's from getrusage of the child. Each run is checked: the
upstream must have received the real key. Needs root (namespaces); nothing leaves them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oshu_testkit.netns import Topology, entered
from oshu_testkit.redirect import (
    AGENT_UID,
    PROXY_UID,
    TRANSPARENT_PORT,
    NetnsSidecar,
    agent_env,
    client_ca_dir,
    go_client,
    install,
)
from oshu_testkit.sessions import new_secret, new_session
from oshu_testkit.upstreams import UPSTREAM_NAMES, Upstream

HOST = "api.oshu.test"
MODES = ("direct", "explicit", "redirect")


@dataclass
class Run:
    mode: str
    workload: str
    requests: int
    elapsed_ms: float
    p50_ms: float
    p99_ms: float
    sidecar_cpu_s: float
    client_cpu_s: float


@dataclass
class Bed:
    topo: Topology
    upstream: Upstream
    sidecar: NetnsSidecar
    ca_file: Path
    real: str
    sealed: str


def proc_cpu(pid: int) -> float:
    """CPU seconds of every thread of `pid` (schedstat: nanoseconds, unlike stat's 10 ms ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return total / 1e9


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


@contextmanager
def testbed() -> Iterator[Bed]:
    with Topology(prefix="oshu-bench", hosts=[HOST]) as topo:
        with entered(topo.outside):
            up = Upstream(names=UPSTREAM_NAMES, host="::").start()
        topo.forward_ports({443: up.port})
        work = Path(tempfile.mkdtemp(prefix="oshu-bench-sidecar-"))
        try:
            assert install(topo) == 0, "oshu-vault-netrules failed"
            shutil.copy(up.ca_file, work / "upstream-ca.pem")
            key = new_secret("API_KEY", [HOST])
            sc = NetnsSidecar(
                topo.agent,
                new_session(key),
                directory=work,
                loopback_only=False,
                upstream_ca_files=[work / "upstream-ca.pem"],
                extra_args=[
                    *("--transparent-listen", f"127.0.0.1:{TRANSPARENT_PORT}"),
                    *("--transparent-listen", f"[::1]:{TRANSPARENT_PORT}"),
                    "--require-redirect",
                ],
            )
            with sc:
                ca = client_ca_dir([sc.ca.cert_pem, up.ca_file.read_bytes()])
                try:
                    yield Bed(topo, up, sc, ca / "ca.pem", key.value, key.sealed)
                finally:
                    shutil.rmtree(ca, ignore_errors=True)
        finally:
            up.stop()
            shutil.rmtree(work, ignore_errors=True)


def measure(bed: Bed, mode: str, workload: str, n: int) -> Run:
    assert bed.sidecar.proc is not None
    argv = [str(go_client()), "-cacert", str(bed.ca_file), "-n", str(n)]
    argv += ["-fresh"] if workload == "fresh" else []
    argv += ["-H", f"x-api-key: {bed.real if mode == 'direct' else bed.sealed}"]
    argv += ["-proxy", bed.sidecar.proxy_url] if mode == "explicit" else []
    uid = PROXY_UID if mode == "direct" else AGENT_UID
    cmd = bed.topo.cmd([*argv, f"https://{HOST}/echo"], uid=uid, env=agent_env(bed.ca_file))
    bed.upstream.clear()
    pid = bed.sidecar.proc.pid
    sc0, cl0 = proc_cpu(pid), children_cpu()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    sc1, cl1 = proc_cpu(pid), children_cpu()
    out: dict[str, Any] = json.loads(p.stdout or "{}")
    if p.returncode != 0 or out.get("count") != n or out.get("status") != 200:
        raise SystemExit(f"{mode}/{workload}: client failed: {out} {p.stderr[-1000:]}")
    if len(bed.upstream.requests) != n or bed.upstream.last.header("x-api-key") != bed.real:
        raise SystemExit(f"{mode}/{workload}: the upstream did not get {n} requests with the real key")
    return Run(mode, workload, n, out["elapsed_ms"], out["p50_ms"], out["p99_ms"], sc1 - sc0, cl1 - cl0)


def median_run(runs: list[Run]) -> Run:
    first = runs[0]
    med = statistics.median
    return Run(
        first.mode,
        first.workload,
        first.requests,
        med(r.elapsed_ms for r in runs),
        med(r.p50_ms for r in runs),
        med(r.p99_ms for r in runs),
        med(r.sidecar_cpu_s for r in runs),
        med(r.client_cpu_s for r in runs),
    )


def table(results: dict[tuple[str, str], Run]) -> str:
    head = f"{'workload':<11}{'mode':<10}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'sidecar CPU/req':>17}{'client CPU/req':>16}"
    lines = [head, "-" * len(head)]
    for (workload, mode), r in results.items():
        rps = r.requests / (r.elapsed_ms / 1000)
        lines.append(
            f"{workload:<11}{mode:<10}{rps:>8.0f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}"
            f"{r.sidecar_cpu_s / r.requests * 1e6:>14.0f} us{r.client_cpu_s / r.requests * 1e6:>13.0f} us"
        )
    lines.append("")
    for workload in sorted({w for w, _ in results}, reverse=True):
        d, e, t = (results[(workload, m)] for m in MODES)
        cpu = (t.sidecar_cpu_s / e.sidecar_cpu_s) if e.sidecar_cpu_s else float("nan")
        lines.append(
            f"{workload}: redirect/explicit p50 {t.p50_ms / e.p50_ms:.2f}x, time {t.elapsed_ms / e.elapsed_ms:.2f}x, "
            f"sidecar CPU/req {cpu:.2f}x; redirect/direct p50 {t.p50_ms / d.p50_ms:.2f}x, "
            f"time {t.elapsed_ms / d.elapsed_ms:.2f}x"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--requests", type=int, default=2000, help="keep-alive requests per run (default 2000)")
    p.add_argument("--fresh", type=int, default=300, help="fresh-connection requests per run (default 300)")
    p.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported (default 3)")
    p.add_argument("--json", type=Path, help="also write the per-round numbers here")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("redirect_bench: needs root (network namespaces)", file=sys.stderr)
        return 2
    go_client()  # build before timing anything
    rounds: dict[tuple[str, str], list[Run]] = {}
    with testbed() as bed:
        for mode in MODES:  # warm-up: leaves minted, connections pooled, code paths hot
            measure(bed, mode, "keep-alive", 50)
        for _ in range(args.rounds):
            for workload, n in (("keep-alive", args.requests), ("fresh", args.fresh)):
                for mode in MODES:
                    rounds.setdefault((workload, mode), []).append(measure(bed, mode, workload, n))
    results = {k: median_run(v) for k, v in rounds.items()}
    print(f"redirect benchmark: medians of {args.rounds} rounds, Go client, aiohttp upstream over veth\n")
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps({f"{w}/{m}": [r.__dict__ for r in v] for (w, m), v in rounds.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
