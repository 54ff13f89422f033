#!/usr/bin/env python3
"""Operator benchmark: admission latency of injection, apply-to-Ready, 1,000 sessions and memory.

One command (from the repo root; starts its own local control plane unless
OSHU_KUBE_CLUSTER_DIR names a running one):

    .venv/bin/python bench/operator_bench.py            # 300 pods, 20 Ready samples, 1,000 sessions
    .venv/bin/python bench/operator_bench.py --quick    # 60 pods, 5 samples, 100 sessions

What is measured (all against a real kube-apiserver + etcd on loopback, the operator as a
subprocess exactly as `oshu-operator --dev-webhook` runs):

- pod creation latency seen by the API client, for pods that opt in (apiserver -> webhook ->
  injection -> patch) and for pods that do not (the webhook's objectSelector keeps them away:
  the baseline), p50/p90/p99; plus the operator's own histogram of time inside the webhook;
- apply-to-Ready: from the POST of a VaultSession (its Secret exists) until status Ready;
- N VaultSessions created at once: time until all are Ready, reconcile throughput, operator
  RSS before and after and its peak (VmHWM), and operator CPU seconds.
Timing is reported, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from kubernetes_asyncio import client, config

from oshu_localkube.cluster import LocalCluster
from oshu_operator import names as n
from oshu_testkit.operator_process import CRD_PATH, OperatorProcess


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def ms(v: float) -> str:
    return f"{v * 1000:8.1f} ms"


def proc_status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def session_body(name: str, secret: str = "bench-key") -> dict:
    return {
        "apiVersion": n.API_VERSION,
        "kind": n.KIND,
        "metadata": {"name": name},
        "spec": {
            "secrets": [{"name": "API_KEY", "secretKeyRef": {"name": secret, "key": "k"}, "hosts": ["api.bench.test"]}]
        },
    }


def pod_body(name: str, session: str | None) -> dict:
    meta: dict = {"name": name}
    if session:
        meta["labels"] = {n.LABEL_SESSION: session}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"containers": [{"name": "agent", "image": "agent:1"}]},
    }


class Bench:
    def __init__(self, api: client.ApiClient) -> None:
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    async def namespace(self, name: str) -> None:
        await self.core.create_namespace({"metadata": {"name": name}})
        for _ in range(300):  # pods are admitted once the default ServiceAccount exists
            try:
                await self.core.read_namespaced_service_account("default", name)
                return
            except client.ApiException:
                await asyncio.sleep(0.1)
        raise RuntimeError("no default ServiceAccount")

    async def secret(self, ns: str, name: str = "bench-key") -> None:
        await self.core.create_namespaced_secret(
            ns,
            {
                "metadata": {"name": name},
                "data": {"k": base64.b64encode(b"sk-bench-" + os.urandom(16).hex().encode()).decode()},
            },
        )

    async def phase(self, ns: str, name: str) -> str | None:
        obj = await self.custom.get_namespaced_custom_object(n.GROUP, n.VERSION, ns, n.PLURAL, name)
        return (obj.get("status") or {}).get("phase")

    async def apply_to_ready(self, ns: str, samples: int) -> list[float]:
        # Not counted: on a just-installed CRD the API server answers the first watches with
        # 429 "storage is (re)initializing" and kopf retries a second later.
        out = []
        for i in range(-1, samples):
            name = f"ready-{i}" if i >= 0 else "warm-up"
            t0 = time.perf_counter()
            await self.custom.create_namespaced_custom_object(n.GROUP, n.VERSION, ns, n.PLURAL, session_body(name))
            while await self.phase(ns, name) != n.PHASE_READY:
                if time.perf_counter() - t0 > 60:
                    raise RuntimeError(f"{name} not Ready in 60 s")
                await asyncio.sleep(0.005)
            if i >= 0:
                out.append(time.perf_counter() - t0)
        return out

    async def create_pods(self, ns: str, count: int, session: str | None, prefix: str) -> list[float]:
        out = []
        for i in range(count):
            t0 = time.perf_counter()
            await self.core.create_namespaced_pod(ns, pod_body(f"{prefix}-{i}", session))
            out.append(time.perf_counter() - t0)
        return out

    async def many_sessions(self, ns: str, count: int, concurrency: int = 16) -> float:
        sem = asyncio.Semaphore(concurrency)

        async def make(i: int) -> None:
            async with sem:
                await self.custom.create_namespaced_custom_object(
                    n.GROUP, n.VERSION, ns, n.PLURAL, session_body(f"s-{i:04d}")
                )

        t0 = time.perf_counter()
        await asyncio.gather(*(make(i) for i in range(count)))
        deadline = t0 + 1800
        while time.perf_counter() < deadline:
            items = (await self.custom.list_namespaced_custom_object(n.GROUP, n.VERSION, ns, n.PLURAL))["items"]
            ready = sum((o.get("status") or {}).get("phase") == n.PHASE_READY for o in items)
            if ready >= count:
                return time.perf_counter() - t0
            await asyncio.sleep(0.5)
        raise RuntimeError("sessions not all Ready in 30 min")


async def run(kubeconfig: Path, op: OperatorProcess, args: argparse.Namespace) -> list[tuple[str, str]]:
    cfg = client.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg, persist_config=False)
    rows: list[tuple[str, str]] = []
    async with client.ApiClient(configuration=cfg) as api:
        b = Bench(api)
        stamp = os.urandom(3).hex()
        ns = f"bench-{stamp}"
        await b.namespace(ns)
        await b.secret(ns)

        ready = await b.apply_to_ready(ns, args.ready_samples)
        if os.environ.get("OSHU_BENCH_VERBOSE"):
            print("apply->Ready samples (ms):", [round(v * 1000) for v in ready], file=sys.stderr)
        rows += [
            ("apply -> Ready, p50", ms(pct(ready, 50))),
            ("apply -> Ready, p90", ms(pct(ready, 90))),
            ("apply -> Ready, max", ms(max(ready))),
            ("apply -> Ready, samples", f"{len(ready):8d}"),
        ]

        await b.create_pods(ns, 10, "ready-0", "warm")  # warm connections and the operator's index
        server_before = op.metric("oshu_vault_admission_duration_seconds_sum") or 0.0
        count_before = op.metric("oshu_vault_admission_duration_seconds_count") or 0.0
        injected = await b.create_pods(ns, args.pods, "ready-0", "inj")
        server_after = op.metric("oshu_vault_admission_duration_seconds_sum") or 0.0
        count_after = op.metric("oshu_vault_admission_duration_seconds_count") or 0.0
        plain = await b.create_pods(ns, args.pods, None, "plain")
        for label, values in (("pod create, injected", injected), ("pod create, not opted in", plain)):
            for p in (50, 90, 99):
                rows.append((f"{label}, p{p}", ms(pct(values, p))))
        rows.append(("injection overhead, p50", ms(pct(injected, 50) - pct(plain, 50))))
        served = count_after - count_before
        rows.append(("webhook reviews per injected pod", f"{served / args.pods:8.1f}"))
        rows.append(("time inside the webhook per review", ms((server_after - server_before) / max(served, 1))))
        rows.append(("pods per series", f"{args.pods:8d}"))

        ns2 = f"bench-many-{stamp}"
        await b.namespace(ns2)
        await b.secret(ns2)
        rss0, cpu0 = proc_status(op.pid, "VmRSS"), cpu_seconds(op.pid)
        elapsed = await b.many_sessions(ns2, args.sessions)
        await asyncio.sleep(2)
        rss1, hwm, cpu1 = proc_status(op.pid, "VmRSS"), proc_status(op.pid, "VmHWM"), cpu_seconds(op.pid)
        rows += [
            (f"{args.sessions} sessions -> all Ready", f"{elapsed:8.1f} s"),
            ("reconcile throughput", f"{args.sessions / elapsed:8.1f} /s"),
            ("operator CPU for them", f"{cpu1 - cpu0:8.1f} s"),
            ("operator CPU per session", ms((cpu1 - cpu0) / args.sessions)),
            ("operator RSS before", f"{rss0 / 2**20:8.1f} MiB"),
            (f"operator RSS with {args.sessions + args.ready_samples} sessions", f"{rss1 / 2**20:8.1f} MiB"),
            ("operator RSS peak (VmHWM)", f"{hwm / 2**20:8.1f} MiB"),
            ("errors", f"{op.metric('oshu_vault_reconciles_total', result='error') or 0:8.0f}"),
        ]
        # Clean up while the operator runs (its finalizer revokes each session first).
        for name in (ns, ns2):
            await b.core.delete_namespace(name)
        for name in (ns, ns2):
            for _ in range(600):
                try:
                    await b.core.read_namespace(name)
                except client.ApiException:
                    break
                await asyncio.sleep(0.5)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pods", type=int, default=300, help="pods per series (default 300)")
    p.add_argument("--ready-samples", type=int, default=20, help="apply-to-Ready samples (default 20)")
    p.add_argument("--sessions", type=int, default=1000, help="sessions created at once (default 1000)")
    p.add_argument("--quick", action="store_true", help="60 pods, 5 samples, 100 sessions")
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="K=V",
        help="extra environment for the operator (e.g. MALLOC_ARENA_MAX=2)",
    )
    args = p.parse_args()
    extra_env = dict(kv.split("=", 1) for kv in args.env)
    if args.quick:
        args.pods, args.ready_samples, args.sessions = 60, 5, 100
    with ExitStack() as stack:
        attached = os.environ.get("OSHU_KUBE_CLUSTER_DIR")
        cluster = LocalCluster.attach(attached) if attached else stack.enter_context(LocalCluster())
        cluster.kubectl("apply", "-f", str(CRD_PATH))
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{n.PLURAL}.{n.GROUP}")
        op = stack.enter_context(
            OperatorProcess(
                cluster.kubeconfig,
                webhook_config="oshu-vault-bench",
                revocation_grace="0s",
                env=dict(os.environ, **extra_env),
                directory=Path(tempfile.mkdtemp(prefix="oshu-opbench-")),
            )
        )
        stack.callback(
            cluster.kubectl,
            "delete",
            "mutatingwebhookconfiguration",
            "oshu-vault-bench",
            "--ignore-not-found",
            check=False,
        )
        rows = asyncio.run(run(cluster.kubeconfig, op, args))
    width = max(len(k) for k, _ in rows)
    print(f"\noshu-vault operator benchmark ({os.cpu_count()} CPUs, local kube-apiserver + etcd)\n")
    print(f"{'measure':<{width}}  value")
    print(f"{'-' * width}  {'-' * 12}")
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
