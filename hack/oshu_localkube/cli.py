"""oshu-local-cluster build|start|stop|status: the local Kubernetes control plane from a shell.

``start`` leaves etcd, kube-apiserver and kube-controller-manager running in the background
(with ``--node`` also containerd, the kubelet, kube-scheduler, kube-proxy and CoreDNS, so pods
run; one node cluster per network namespace) and records them in a state directory (default
``$TMPDIR/oshu-localkube-$UID/<name>``), which is how ``status`` and ``stop`` find them later.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import cast

from . import build, versions
from .cluster import ClusterError, LocalCluster, runtime_root
from .node import NodeError


def _state_dir(args: argparse.Namespace) -> Path:
    return Path(args.state_dir) if args.state_dir else runtime_root() / args.name


def _build(args: argparse.Namespace) -> int:
    tools = args.tools or list(versions.TOOLS)
    try:
        paths = build.ensure_built(tools)
    except (build.BuildError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for tool, path in paths.items():
        print(f"{tool} {versions.TOOLS[tool].version}: {path}")
    return 0


def _start(args: argparse.Namespace) -> int:
    cluster = LocalCluster(_state_dir(args), node=args.node, daemon=True, ready_timeout=args.timeout)
    try:
        cluster.start()
    except (ClusterError, build.BuildError, NodeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"local cluster ready in {cluster.startup_seconds:.1f}s: {cluster.server}", file=sys.stderr)
    if cluster.node is not None:
        node = cluster.node
        print(
            f"node {node.net.node_name} Ready ({cluster.node_startup_seconds:.1f}s of it): node IP {node.net.node_ip}, "
            f"pods {node.net.pod_cidr}, services {node.net.service_cidr}, DNS {node.net.dns_ip} "
            f"({node.net.cluster_domain})",
            file=sys.stderr,
        )
        print(f"containerd: ctr --address {node.containerd_socket} -n {node.containerd_namespace}", file=sys.stderr)
    print(f"kubeconfig: {cluster.kubeconfig}", file=sys.stderr)
    print(f"logs: {cluster.state_dir / 'logs'}", file=sys.stderr)
    # stdout is meant for eval "$(oshu-local-cluster start)"
    print(f"export KUBECONFIG={shlex.quote(str(cluster.kubeconfig))}")
    print(f'export PATH={shlex.quote(str(cluster.bin_dir))}:"$PATH"')
    return 0


def _attached(args: argparse.Namespace) -> LocalCluster | None:
    try:
        return LocalCluster.attach(_state_dir(args))
    except ClusterError:
        return None


def _stop(args: argparse.Namespace) -> int:
    cluster = _attached(args)
    if cluster is None:
        print(f"no cluster running from {_state_dir(args)}", file=sys.stderr)
        return 0
    try:
        cluster.stop()
    except ClusterError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"stopped the cluster in {cluster.state_dir}", file=sys.stderr)
    return 0


def _status(args: argparse.Namespace) -> int:
    cluster = _attached(args)
    if cluster is None:
        print(f"not running (no cluster recorded in {_state_dir(args)})", file=sys.stderr)
        return 3
    report = cluster.describe()
    report["ready"] = cluster.is_ready()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{'ready' if report['ready'] else 'NOT READY'}: {cluster.server}")
        print(f"export KUBECONFIG={shlex.quote(str(cluster.kubeconfig))}")
        processes = cast(dict[str, dict[str, object]], report["processes"])
        for name, process in processes.items():
            print(f"  {name}: pid {process['pid']} {'running' if process['alive'] else 'DEAD'}")
    return 0 if report["ready"] else 1


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="oshu-local-cluster", description=__doc__.split("\n\n")[0])
    commands = top.add_subparsers(dest="command", required=True)

    build_cmd = commands.add_parser("build", help="build (or reuse) the pinned binaries")
    build_cmd.add_argument(
        "tools", nargs="*", metavar="TOOL", help=f"subset of {', '.join(versions.TOOLS)} (default: all)"
    )
    build_cmd.set_defaults(run=_build)

    for name, run, text in (
        ("start", _start, "start a cluster in the background and print its environment"),
        ("stop", _stop, "stop the cluster and remove its state"),
        ("status", _status, "is it running and ready? (exit 0 if ready)"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("--name", default="default", help="cluster name (several may run at once)")
        command.add_argument("--state-dir", help="explicit state directory (overrides --name)")
        command.set_defaults(run=run)
        if name == "start":
            command.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for readiness")
            command.add_argument(
                "--node", action="store_true", help="also run a node (containerd, kubelet, ...): pods run; needs root"
            )
        if name == "status":
            command.add_argument("--json", action="store_true", help="machine-readable output")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
