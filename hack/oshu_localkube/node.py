"""The local cluster's node: a private containerd, kubelet, kube-scheduler, kube-proxy and CoreDNS.

``LocalCluster(node=True)`` (``oshu-local-cluster start --node``, fixture ``kube_node_cluster``)
runs these next to the control plane, so pods really run. Everything the node writes lives in
the cluster's state directory (containerd's config, root, state and socket; the kubelet's
root, pod logs; CNI's IP allocations; container netns mounts), except what can only be
machine-wide, which this module installs before anything starts and removes at stop:

- the node address, a /32 on ``lo`` (the kubelet, the apiserver and CoreDNS bind to it);
- the pod bridge (its address is the pods' gateway);
- routes: ``unreachable`` for the whole pod range, the service range and the node address
  (never a range the machine's own interfaces use: the redirect canary is a loopback address,
  which needs no route), so a packet to any
  of them is delivered locally or dropped, never sent out by the default route; the service
  range also routes onto the pod bridge (more preferred metric), which is
  what lets the host's own connections reach ClusterIPs through kube-proxy's rules;
- one chain (``OSHU-LOCALKUBE`` in the mangle table, jumped to first from its FORWARD, so it
  is evaluated before any filter rule kube-proxy inserts) dropping anything forwarded between
  the pod bridge and any other interface: pods reach each other, the node and Services, never
  the machine's network, and nothing from the machine's network is forwarded to them;
- kube-proxy's iptables chains (``kube-proxy --cleanup`` removes them).

Those names and addresses are per network namespace, so one node cluster runs at a time in
a network namespace; a second ``start --node`` there fails with a message naming the running
one (control-plane-only clusters still run side by side). Node clusters in different network
namespaces (``unshare --net``) share nothing: the claim and the cgroup root are keyed by the
namespace (:func:`machine_slot`). A node cluster whose owner died is cleaned up by the next
start in its namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import images_pause, pki

if TYPE_CHECKING:
    from .cluster import LocalCluster

#: Built from the Go module proxy like the control plane (see versions.py).
NODE_TOOLS = ("kubelet", "kube-scheduler", "kube-proxy", "coredns")
#: From Debian's packages (``hack/install-debian-packages`` installs them, from ``make test`` and ``make demo``).
HOST_TOOLS = {"containerd": "containerd", "containerd-shim-runc-v2": "containerd", "ctr": "containerd",
              "runc": "runc", "iptables": "iptables", "ip": "iproute2"}  # fmt: skip
CNI_BIN_DIR = Path("/usr/lib/cni")
CNI_PLUGINS = ("bridge", "host-local", "loopback")
CONTAINERD_NAMESPACE = "k8s.io"
KUBELET_PORT = 10250
FORWARD_CHAIN = "OSHU-LOCALKUBE"
FORWARD_TABLE = "mangle"  # before filter, where kube-proxy inserts its own ACCEPTs
ROUTE_PROTOCOL = "157"  # marks our routes: teardown removes exactly these
BACKSTOP_METRIC = "4242"  # the unreachable routes lose to the bridge's own routes
CGROUP_ROOT = "/oshu-localkube"  # plus "-<slot>" (machine_slot()): one tree per network namespace
CONTAINER_LOG_LINKS = Path("/var/log/containers")  # the kubelet's fixed symlink directory

Log = Callable[[str], None]


class NodeError(RuntimeError):
    """The node cannot run here, or could not start; the message says why."""


class NodeBusyError(NodeError):
    """Another node cluster runs on this machine (only one can: its addresses are machine-wide)."""


def machine_slot() -> str:
    """An id of the network namespace we run in (its inode).

    Everything machine-wide of a node (addresses, bridge, routes, iptables) is per network
    namespace, so node clusters in different namespaces are independent; what is not (the
    claim file, the cgroup tree) is keyed by this. ``OSHU_LOCALKUBE_NODE_SLOT`` overrides it.
    (The machine's own namespace cannot be told apart reliably: pid 1's may be unreadable.)"""
    configured = os.environ.get("OSHU_LOCALKUBE_NODE_SLOT")
    if configured is not None:
        return re.sub(r"[^A-Za-z0-9_.-]", "-", configured)
    try:
        return f"netns-{os.stat('/proc/self/ns/net').st_ino}"
    except OSError:
        return ""


def cgroup_root() -> str:
    slot = machine_slot()
    return f"{CGROUP_ROOT}-{slot}" if slot else CGROUP_ROOT


@dataclass(frozen=True)
class NodeNetwork:
    """The node's addresses and ranges (machine-wide: see the module docstring)."""

    node_name: str = "oshu-localkube-node"
    node_ip: str = "10.245.0.1"  # /32 on lo: the kubelet's InternalIP, apiserver and DNS bind here
    pod_cidr: str = "10.244.0.0/16"  # the cluster's pod range (unreachable beyond the node's /24)
    node_pod_cidr: str = "10.244.0.0/24"  # this node's pods, on the bridge
    service_cidr: str = "10.96.0.0/16"
    bridge: str = "oshu-kube0"
    cluster_domain: str = "cluster.local"
    slot: str = field(default_factory=machine_slot)  # the network namespace it lives in

    @property
    def bridge_ip(self) -> str:
        """The pods' gateway: first address of the node's pod range."""
        return str(next(ipaddress.ip_network(self.node_pod_cidr).hosts()))

    @property
    def dns_ip(self) -> str:
        """Where pods' resolv.conf points: CoreDNS on the node address, port 53."""
        return self.node_ip

    @property
    def kubernetes_service_ip(self) -> str:
        return str(next(ipaddress.ip_network(self.service_cidr).hosts()))

    def reverse_zones(self) -> list[str]:
        """in-addr.arpa zones of the service and pod ranges (octet-aligned prefixes only)."""
        zones = []
        for cidr in (self.service_cidr, self.pod_cidr):
            network = ipaddress.ip_network(cidr)
            octets = network.prefixlen // 8
            parts = str(network.network_address).split(".")[:octets]
            zones.append(".".join(reversed(parts)) + ".in-addr.arpa")
        return zones


# -- pure plans: what the host gets (tests check these and the installed result) ---------


def route_plan(net: NodeNetwork) -> list[list[str]]:
    """``ip route`` arguments installed before any component starts.

    Every range the cluster uses gets an ``unreachable`` route, so nothing addressed to it can
    leave by the default route, whatever runs or not. The service range additionally routes
    onto the pod bridge with a better metric: the host's connections to a ClusterIP need a
    usable route before kube-proxy's OUTPUT DNAT rewrites them to a pod (an unreachable route
    fails connect() before netfilter sees the packet); a ClusterIP without a rule just gets
    no ARP answer on the bridge.
    """
    common = ["proto", ROUTE_PROTOCOL]
    return [
        ["unreachable", net.pod_cidr, *common],
        ["unreachable", net.service_cidr, *common, "metric", BACKSTOP_METRIC],
        ["unreachable", f"{net.node_ip}/32", *common],
        [net.service_cidr, "dev", net.bridge, "src", net.bridge_ip, *common],
    ]


def forward_rules(net: NodeNetwork) -> list[list[str]]:
    """Rules of our FORWARD chain: pods never reach (nor are reached from) another interface."""
    return [
        ["-i", net.bridge, "!", "-o", net.bridge, "-j", "DROP"],
        ["!", "-i", net.bridge, "-o", net.bridge, "-j", "DROP"],
    ]


def cni_config(net: NodeNetwork, ipam_dir: Path) -> dict[str, object]:
    """One bridge network with host-local IPs, no masquerade (pods never go out), hairpin on
    (a pod reaching itself through its own Service)."""
    return {
        "cniVersion": "1.0.0",
        "name": "oshu-localkube",
        "plugins": [
            {
                "type": "bridge",
                "bridge": net.bridge,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": net.node_pod_cidr, "gateway": net.bridge_ip}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(ipam_dir),
                },
            }
        ],
    }


def corefile(net: NodeNetwork, kubeconfig: Path, *, ready_port: int, health_port: int) -> str:
    """CoreDNS serves only the cluster zone and the reverse zones of its ranges. There is no
    catch-all server block and no forward plugin in the binary: any other name is REFUSED."""
    zones = " ".join([net.cluster_domain, *net.reverse_zones()])
    return f"""{" ".join(f"{zone}:53" for zone in zones.split())} {{
    bind {net.node_ip}
    errors
    ready 127.0.0.1:{ready_port}
    health 127.0.0.1:{health_port}
    kubernetes {zones} {{
        kubeconfig {kubeconfig} oshu-local
        pods disabled
        ttl 5
    }}
    cache 5
    loadbalance
}}
"""


def containerd_config(root: Path, state: Path, socket_path: Path, cni_conf_dir: Path, net: NodeNetwork) -> str:
    """A private containerd: own root, state and socket; CRI with this machine's fixes (runc,
    cgroupfs, ``restrict_oom_score_adj`` for a root without CAP_SYS_RESOURCE), netns mounts
    under the state dir, no registry configuration (images are imported, never pulled)."""
    cri = '[plugins."io.containerd.grpc.v1.cri"]'
    return f"""version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.internal.v1.tracing",
  "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{socket_path}"
[ttrpc]
  address = "{socket_path}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{root}/opt"
  {cri}
    sandbox_image = "{images_pause.PAUSE_IMAGE}"
    restrict_oom_score_adj = true
    disable_apparmor = true
    enable_selinux = false
    netns_mounts_under_state_dir = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    enable_tls_streaming = false
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          BinaryName = "{shutil.which("runc") or "runc"}"
          Root = "{state}/runc"
          SystemdCgroup = false
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "{CNI_BIN_DIR}"
      conf_dir = "{cni_conf_dir}"
      max_conf_num = 1
"""


def kubelet_config(node: Node, *, healthz_port: int) -> dict[str, object]:
    """KubeletConfiguration: authenticated and authorised API only (x509 from the cluster CA,
    webhook authz; anonymous off), this machine's cgroup v1 fixes, pods' DNS on CoreDNS."""
    net, certs = node.net, node.cluster.state_dir / "pki"
    socket_url = f"unix://{node.containerd_socket}"
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": net.node_ip,
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "tlsCertFile": str(certs / "kubelet-serving.crt"),
        "tlsPrivateKeyFile": str(certs / "kubelet-serving.key"),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True, "cacheTTL": "10s"},
            "x509": {"clientCAFile": str(certs / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": cgroup_root(),
        "failCgroupV1": False,
        "containerRuntimeEndpoint": socket_url,
        "imageServiceEndpoint": socket_url,
        "clusterDNS": [net.dns_ip],
        "clusterDomain": net.cluster_domain,
        "resolvConf": "",  # nothing of the host's resolvers reaches pods
        "makeIPTablesUtilChains": False,
        "failSwapOn": False,
        "podLogsDir": str(node.pod_logs_dir),
        "staticPodPath": "",
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "serializeImagePulls": False,
        "nodeStatusUpdateFrequency": "2s",
        # A shared disk of a dev machine: never evict or garbage-collect test images for it.
        "evictionHard": {
            "memory.available": "50Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "shutdownGracePeriod": "0s",
        "shutdownGracePeriodCriticalPods": "0s",
    }


def kube_proxy_config(node: Node, *, healthz_port: int, metrics_port: int) -> dict[str, object]:
    """iptables mode; leaves the machine's conntrack and localnet sysctls alone."""
    net = node.net
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(node.kubeconfig_path("kube-proxy"))},
        "hostnameOverride": net.node_name,
        "clusterCIDR": net.pod_cidr,
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        "nodePortAddresses": [f"{net.node_ip}/32"],
        "iptables": {"localhostNodePorts": False, "masqueradeAll": False},
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        "detectLocalMode": "ClusterCIDR",
    }


def rbac_manifest() -> dict[str, object]:
    """Grants the node's non-bootstrap identities need: CoreDNS reads Services, EndpointSlices
    and Namespaces; the apiserver's kubelet client gets the kubelet API (as on kubeadm)."""
    return {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": "oshu:coredns"},
                "rules": [
                    {"apiGroups": [""], "resources": ["services", "namespaces"], "verbs": ["list", "watch"]},
                    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
                ],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": "oshu:coredns"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "oshu:coredns"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": pki.COREDNS_USER}],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": "oshu:apiserver-kubelet-client"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "system:kubelet-api-admin",
                },
                "subjects": [
                    {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": pki.APISERVER_KUBELET_CLIENT}
                ],
            },
        ],
    }


# -- host prerequisites and the machine-wide claim --------------------------------------


def missing_prerequisites() -> list[str]:
    """Why this machine cannot run the node ([] if it can): root, Debian packages, cgroups."""
    problems = []
    if os.geteuid() != 0:
        problems.append("the node needs root (containerd, runc, routes and iptables)")
    for tool, package in HOST_TOOLS.items():
        if shutil.which(tool) is None:
            problems.append(f"{tool} not found (Debian package {package})")
    for plugin in CNI_PLUGINS:
        if not (CNI_BIN_DIR / plugin).is_file():
            problems.append(f"CNI plugin {CNI_BIN_DIR / plugin} missing (Debian package containernetworking-plugins)")
    if not Path("/sys/fs/cgroup").is_dir():
        problems.append("no /sys/fs/cgroup")
    if not Path("/proc/sys/net/bridge").is_dir() and shutil.which("modprobe"):
        _run(["modprobe", "br_netfilter"], check=False)
    if not Path("/proc/sys/net/bridge").is_dir():
        # Without it, pod -> ClusterIP -> pod on the same bridge never passes kube-proxy's rules.
        problems.append("kernel module br_netfilter is not loaded (modprobe br_netfilter)")
    return problems


def claim_path() -> Path:
    configured = os.environ.get("OSHU_LOCALKUBE_NODE_CLAIM")
    if configured:
        return Path(configured)
    slot = machine_slot()
    return Path(f"/run/oshu-localkube-node-{slot}.json" if slot else LEGACY_CLAIM)


LEGACY_CLAIM = "/run/oshu-localkube-node.json"  # before claims were per namespace: still honoured


_claim_depth = 0  # re-entrant within this process: claim() stops a dead holder, which releases


@contextlib.contextmanager
def _claim_lock() -> Iterator[None]:
    global _claim_depth
    if _claim_depth:
        _claim_depth += 1
        try:
            yield
        finally:
            _claim_depth -= 1
        return
    path = claim_path().with_suffix(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        _claim_depth = 1
        try:
            yield
        finally:
            _claim_depth = 0
            fcntl.flock(handle, fcntl.LOCK_UN)


def claim(cluster: LocalCluster) -> None:
    """Make ``cluster`` this network namespace's node cluster, cleaning up after a dead previous one.

    Raises :class:`NodeBusyError` if a live node cluster holds the claim."""
    from .cluster import ClusterError, LocalCluster

    with _claim_lock():
        path = claim_path()
        holder = None
        with contextlib.suppress(OSError, ValueError):
            holder = json.loads(path.read_text())
        with contextlib.suppress(OSError, ValueError, KeyError, ClusterError):
            legacy = json.loads(Path(LEGACY_CLAIM).read_text())
            if Path(LEGACY_CLAIM) != path and LocalCluster.attach(Path(legacy["state_dir"])).is_running():
                holder = legacy  # a node cluster started by an older version of this code
        if holder and holder.get("state_dir") != str(cluster.state_dir):
            previous_dir = Path(holder["state_dir"])
            previous = None
            with contextlib.suppress(ClusterError):
                previous = LocalCluster.attach(previous_dir, log=cluster._log)
            if previous is not None and previous.is_running():
                raise NodeBusyError(
                    f"a node cluster already runs from {previous_dir} (server {previous.server}); only one node "
                    "cluster runs per network namespace (its addresses, bridge and iptables chains are the "
                    f"namespace's): stop it first with `oshu-local-cluster stop --state-dir {previous_dir}`, or run "
                    "this one in another network namespace (unshare --net)"
                )
            cluster._log(f"cleaning up the node of a dead cluster in {previous_dir}")
            if previous is not None:
                previous.stop()
            else:
                teardown_host(NodeNetwork(**holder.get("network", {})), previous_dir, log=cluster._log)
        assert cluster.node_network is not None
        path.write_text(json.dumps({"state_dir": str(cluster.state_dir), "network": asdict(cluster.node_network)}))


def holds_claim(state_dir: Path) -> bool:
    """True if the cluster in ``state_dir`` is this network namespace's node cluster (its teardown is ours)."""
    with contextlib.suppress(OSError, ValueError):
        return json.loads(claim_path().read_text()).get("state_dir") == str(state_dir)
    return False


def release(state_dir: Path) -> None:
    with _claim_lock():
        path = claim_path()
        with contextlib.suppress(OSError, ValueError):
            if json.loads(path.read_text()).get("state_dir") == str(state_dir):
                path.unlink()


# -- host setup and teardown -------------------------------------------------------------


def _run(command: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(command), capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise NodeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def _sysctl(name: str, value: str) -> None:
    Path("/proc/sys", *name.split(".")).write_text(value)


def foreign_routes(net: NodeNetwork, routes: Sequence[Mapping[str, object]]) -> list[str]:
    """The machine's own routes (`ip -j route show table all`) that overlap a range the node takes.

    The node's ``ip route replace`` would replace such a route (a connected network, the way to
    the default gateway) and its stop would flush it: the node refuses to start instead. Our own
    leftovers (our bridge, lo, our protocol) are not foreign.
    """
    ranges = [ipaddress.ip_network(c) for c in (net.pod_cidr, net.service_cidr, f"{net.node_ip}/32")]
    found = []
    for route in routes:
        dev, dst = route.get("dev"), str(route.get("dst", ""))
        if dev in (net.bridge, "lo") or str(route.get("protocol")) == ROUTE_PROTOCOL or dst == "default":
            continue
        with contextlib.suppress(ValueError):
            network = ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False)
            if any(network.overlaps(r) for r in ranges):
                found.append(f"{dst} dev {dev} ({route.get('protocol', '?')})")
    return found


def setup_host(net: NodeNetwork) -> None:
    """Install the machine-wide pieces (idempotent). Runs before any component starts."""
    _run(["ip", "link", "set", "lo", "up"])  # down in a fresh network namespace
    clash = foreign_routes(net, json.loads(_run(["ip", "-j", "route", "show", "table", "all"]).stdout or "[]"))
    if clash:
        raise NodeError(f"the node's address ranges overlap this machine's own routes: {', '.join(clash)}")
    _run(["ip", "link", "add", net.bridge, "type", "bridge"], check=False)
    _run(["ip", "addr", "replace", f"{net.bridge_ip}/{ipaddress.ip_network(net.node_pod_cidr).prefixlen}",
          "dev", net.bridge])  # fmt: skip
    _run(["ip", "link", "set", net.bridge, "up"])
    _run(["ip", "addr", "replace", f"{net.node_ip}/32", "dev", "lo"])
    for route in route_plan(net):
        _run(["ip", "route", "replace", *route])
    iptables = ["iptables", "-w", "-t", FORWARD_TABLE]
    _run([*iptables, "-N", FORWARD_CHAIN], check=False)
    _run([*iptables, "-F", FORWARD_CHAIN])
    for rule in forward_rules(net):
        _run([*iptables, "-A", FORWARD_CHAIN, *rule])
    if _run([*iptables, "-C", "FORWARD", "-j", FORWARD_CHAIN], check=False).returncode != 0:
        _run([*iptables, "-I", "FORWARD", "1", "-j", FORWARD_CHAIN])
    # Pod -> ClusterIP -> pod on the same bridge is routed through the host and must pass
    # kube-proxy's rules. The CNI bridge plugin turns forwarding on too; our chain above keeps
    # it from reaching any other interface.
    _sysctl("net.ipv4.ip_forward", "1")
    with contextlib.suppress(OSError):
        _sysctl("net.bridge.bridge-nf-call-iptables", "1")


def teardown_host(net: NodeNetwork, state_dir: Path, *, kube_proxy: Path | None = None, log: Log | None = None) -> None:
    """Remove everything :func:`setup_host` and the node's components left on the machine:
    container processes and cgroups, shims, mounts, kube-proxy's chains, our chain, routes,
    addresses, the bridge and the kubelet's log symlinks. Idempotent; never raises."""
    kill_cgroup_tree()
    kill_shims(state_dir)
    unmount_under(state_dir)
    remove_cgroup_tree()
    if kube_proxy is not None and kube_proxy.exists():
        _run([str(kube_proxy), "--cleanup"], check=False)
    _remove_kube_chains()
    iptables = ["iptables", "-w", "-t", FORWARD_TABLE]
    for _ in range(10):  # every copy of our jump (bounded)
        if _run([*iptables, "-D", "FORWARD", "-j", FORWARD_CHAIN], check=False).returncode != 0:
            break
    _run([*iptables, "-F", FORWARD_CHAIN], check=False)
    _run([*iptables, "-X", FORWARD_CHAIN], check=False)
    _run(["ip", "route", "flush", "proto", ROUTE_PROTOCOL], check=False)
    _run(["ip", "addr", "del", f"{net.node_ip}/32", "dev", "lo"], check=False)
    _run(["ip", "link", "del", net.bridge], check=False)
    pod_logs = state_dir / "pod-logs"
    if CONTAINER_LOG_LINKS.is_dir():
        for link in CONTAINER_LOG_LINKS.iterdir():
            with contextlib.suppress(OSError):
                if link.is_symlink() and os.readlink(link).startswith(str(pod_logs)):
                    link.unlink()


def _remove_kube_chains() -> None:
    """Whatever ``KUBE-*`` chains remain after ``kube-proxy --cleanup`` (the empty KUBE-FIREWALL
    jumped to from INPUT/OUTPUT, the kubelet's canaries), in both families. Kubernetes on this
    machine is us: one node cluster at a time."""
    for family in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle", "raw"):
            dump = _run([f"{family}-save", "-t", table], check=False).stdout
            chains = [line[1:].split()[0] for line in dump.splitlines() if line.startswith(":KUBE-")]
            for line in dump.splitlines():
                if line.startswith("-A ") and not line.split()[1].startswith("KUBE-") and " -j KUBE-" in line:
                    _run([family, "-w", "-t", table, "-D", *shlex.split(line[3:])], check=False)
            for chain in chains:
                _run([family, "-w", "-t", table, "-F", chain], check=False)
            for chain in chains:
                _run([family, "-w", "-t", table, "-X", chain], check=False)


def _cgroup_dirs() -> list[Path]:
    """Our cgroup root in every v1 hierarchy (and the v2 one, if any), whether or not present."""
    base = Path("/sys/fs/cgroup")
    if (base / "cgroup.controllers").exists():  # pure v2
        return [base / cgroup_root().strip("/")]
    return [hierarchy / cgroup_root().strip("/") for hierarchy in sorted(base.iterdir()) if hierarchy.is_dir()]


def prepare_cgroup_root() -> None:
    """The kubelet's ``cgroupRoot`` must exist in every hierarchy; cpuset needs cpus/mems set."""
    for directory in _cgroup_dirs():
        with contextlib.suppress(OSError):
            directory.mkdir(exist_ok=True)
            if directory.parent.name == "cpuset":
                for name in ("cpuset.cpus", "cpuset.mems"):
                    (directory / name).write_text((directory.parent / name).read_text())


def _cgroup_subdirs(root: Path) -> list[Path]:
    """Every directory under `root`, deepest first. os.walk skips what vanishes while it walks
    (the kubelet and runc remove pod cgroups concurrently); Path.rglob raises on that."""
    found = [Path(top) for top, _, _ in os.walk(root)]
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _cgroup_pids() -> set[int]:
    pids: set[int] = set()
    for root in _cgroup_dirs():
        for directory in _cgroup_subdirs(root):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(line) for line in (directory / "cgroup.procs").read_text().split())
    return pids


def kill_cgroup_tree(timeout: float = 10.0) -> None:
    """SIGKILL every process in our cgroup tree: all containers and sandboxes of the node."""
    deadline = time.monotonic() + timeout
    while (pids := _cgroup_pids()) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def remove_cgroup_tree() -> None:
    """rmdir our cgroup tree, deepest first; a directory already gone counts as removed."""
    for root in _cgroup_dirs():
        for directory in _cgroup_subdirs(root):  # includes root itself, last
            with contextlib.suppress(OSError):
                directory.rmdir()


def _cmdline(pid: int) -> list[str]:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    return []


def shim_pids(state_dir: Path) -> list[int]:
    """containerd's runc shims serving our containerd (they outlive it by design)."""
    marker = str(state_dir / "containerd")
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            argv = _cmdline(int(entry.name))
            if argv and argv[0].endswith("containerd-shim-runc-v2") and any(marker in arg for arg in argv):
                found.append(int(entry.name))
    return found


def kill_shims(state_dir: Path, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while (pids := shim_pids(state_dir)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def _unescape_mount(path: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def mounts_under(directory: Path) -> list[str]:
    """Mount points at or below ``directory`` in this mount namespace."""
    prefix = str(directory).rstrip("/")
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = _unescape_mount(line.split()[4])
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return found


_LIBC = ctypes.CDLL(None, use_errno=True)
_MNT_DETACH = 2


def unmount_under(directory: Path) -> None:
    """Lazily unmount everything below ``directory``, deepest first (secrets tmpfs, container
    rootfs overlays, shm, netns bind mounts), until nothing is left (bounded)."""
    for _ in range(10):
        points = mounts_under(directory)
        if not points:
            return
        for point in sorted(set(points), key=lambda p: p.count("/"), reverse=True):
            _LIBC.umount2(point.encode(), _MNT_DETACH)


# -- the node itself ---------------------------------------------------------------------


class Node:
    """The node half of a :class:`~oshu_localkube.cluster.LocalCluster` started with ``node=True``.

    What other code uses (the running-pod tests, the demo):

    - :attr:`net` — addresses and ranges (:class:`NodeNetwork`: ``node_ip``, ``pod_cidr``,
      ``service_cidr``, ``dns_ip``, ``cluster_domain``, ``node_name``);
    - :attr:`containerd_socket` and :data:`CONTAINERD_NAMESPACE` (``k8s.io``, the CRI's);
    - :meth:`import_image` — load an image archive (``podman save``, docker-archive or OCI)
      where the kubelet finds it with ``imagePullPolicy: IfNotPresent``/``Never``;
    - :meth:`ctr` — any other ``ctr`` call against the node's containerd.
    """

    def __init__(self, cluster: LocalCluster, net: NodeNetwork) -> None:
        self.cluster = cluster
        self.net = net

    @property
    def dir(self) -> Path:
        return self.cluster.state_dir / "node"

    @property
    def containerd_dir(self) -> Path:
        return self.cluster.state_dir / "containerd"

    @property
    def containerd_socket(self) -> Path:
        return self.containerd_dir / "containerd.sock"

    @property
    def containerd_namespace(self) -> str:
        return CONTAINERD_NAMESPACE

    @property
    def pod_logs_dir(self) -> Path:
        return self.cluster.state_dir / "pod-logs"

    def kubeconfig_path(self, component: str) -> Path:
        return self.dir / f"{component}.kubeconfig"

    def ctr(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``ctr`` against the node's containerd in the CRI namespace."""
        command = ["ctr", "--address", str(self.containerd_socket), "--namespace", CONTAINERD_NAMESPACE, *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise NodeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
        return result

    def import_image(self, archive: Path | str) -> list[str]:
        """Import an image archive into the node; returns the image names now present from it."""
        before = set(self.image_names())
        self.ctr("images", "import", str(archive))
        return [name for name in self.image_names() if name not in before and not name.startswith("sha256:")]

    def image_names(self) -> list[str]:
        return [line for line in self.ctr("images", "list", "--quiet").stdout.splitlines() if line.strip()]

    # -- start-up (called by LocalCluster in order) ----------------------------------------

    def write_configs(self, ports: dict[str, int]) -> None:
        self.dir.mkdir(exist_ok=True)
        self.pod_logs_dir.mkdir(exist_ok=True)
        for name in ("root", "state", "cni", "cni-ipam"):
            (self.containerd_dir / name).mkdir(parents=True, exist_ok=True)
        (self.dir / "kubelet").mkdir(exist_ok=True)
        (self.containerd_dir / "cni" / "10-oshu-localkube.conflist").write_text(
            json.dumps(cni_config(self.net, self.containerd_dir / "cni-ipam"), indent=2)
        )
        (self.containerd_dir / "config.toml").write_text(
            containerd_config(
                self.containerd_dir / "root",
                self.containerd_dir / "state",
                self.containerd_socket,
                self.containerd_dir / "cni",
                self.net,
            )
        )
        (self.dir / "kubelet-config.json").write_text(
            json.dumps(kubelet_config(self, healthz_port=ports["kubelet-healthz"]), indent=2)
        )
        (self.dir / "kube-proxy-config.json").write_text(
            json.dumps(
                kube_proxy_config(self, healthz_port=ports["proxy-healthz"], metrics_port=ports["proxy-metrics"]),
                indent=2,
            )
        )
        (self.dir / "Corefile").write_text(
            corefile(
                self.net,
                self.kubeconfig_path("coredns"),
                ready_port=ports["dns-ready"],
                health_port=ports["dns-health"],
            )
        )

    def containerd_args(self) -> list[str]:
        return ["--config", str(self.containerd_dir / "config.toml"), "--log-level", "warn"]

    def kubelet_args(self) -> list[str]:
        return [
            f"--config={self.dir / 'kubelet-config.json'}",
            f"--kubeconfig={self.kubeconfig_path('kubelet')}",
            f"--hostname-override={self.net.node_name}",
            f"--node-ip={self.net.node_ip}",
            f"--root-dir={self.dir / 'kubelet'}",
            f"--cert-dir={self.dir / 'kubelet' / 'pki'}",
        ]

    def scheduler_args(self, port: int) -> list[str]:
        kubeconfig = self.kubeconfig_path("kube-scheduler")
        return [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            "--leader-elect=false",
            "--profiling=false",
        ]

    def kube_proxy_args(self) -> list[str]:
        return [f"--config={self.dir / 'kube-proxy-config.json'}"]

    def coredns_args(self) -> list[str]:
        return ["-conf", str(self.dir / "Corefile")]

    def import_pause_image(self) -> None:
        """The sandbox image must be there before the first pod (nothing can be pulled)."""
        if images_pause.PAUSE_IMAGE not in self.image_names():
            self.ctr("images", "import", str(images_pause.pause_image_archive()))

    def containerd_ready(self) -> bool:
        if not self.containerd_socket.exists():
            return False
        return self.ctr("version", timeout=10, check=False).returncode == 0

    def node_ready(self) -> bool:
        """The Node is Ready and carries no taint (the not-ready one goes once it is Ready)."""
        try:
            status, body = self.cluster.request(f"/api/v1/nodes/{self.net.node_name}", timeout=2.0)
        except OSError:
            return False
        if status != 200:
            return False
        node = json.loads(body)
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in node.get("status", {}).get("conditions", [])
        )
        return ready and not node.get("spec", {}).get("taints")

    def http_ok(self, port: int, path: str) -> bool:
        import http.client

        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2.0)
        try:
            connection.request("GET", path)
            return connection.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            connection.close()

    def describe(self) -> dict[str, object]:
        return {
            **asdict(self.net),
            "dns_ip": self.net.dns_ip,
            "containerd_socket": str(self.containerd_socket),
            "containerd_namespace": CONTAINERD_NAMESPACE,
            "pause_image": images_pause.PAUSE_IMAGE,
        }


def host_leftovers(net: NodeNetwork, state_dir: Path) -> list[str]:
    """What a stopped node cluster left on the machine ([] when clean): checked by the tests."""
    found: list[str] = []
    marker = str(state_dir)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            argv = _cmdline(int(entry.name))
            if any(marker in arg for arg in argv):
                found.append(f"process {entry.name}: {' '.join(argv)[:200]}")
    found += [f"mount {point}" for point in mounts_under(state_dir)]
    found += [f"cgroup {d}" for d in _cgroup_dirs() if d.exists()]
    links = json.loads(_run(["ip", "-j", "link", "show"]).stdout or "[]")
    for link in links:
        if link.get("ifname") == net.bridge or link.get("master") == net.bridge:
            found.append(f"interface {link.get('ifname')}")
    addresses = json.loads(_run(["ip", "-j", "addr", "show"]).stdout or "[]")
    ours = {net.node_ip, net.bridge_ip}
    for link in addresses:
        for info in link.get("addr_info", []):
            if info.get("local") in ours:
                found.append(f"address {info.get('local')} on {link.get('ifname')}")
    ranges = [ipaddress.ip_network(c) for c in (net.pod_cidr, net.service_cidr, f"{net.node_ip}/32")]
    for route in json.loads(_run(["ip", "-j", "route", "show", "table", "all"]).stdout or "[]"):
        destination = route.get("dst", "")
        with contextlib.suppress(ValueError):
            network = ipaddress.ip_network(destination if "/" in destination else f"{destination}/32", strict=False)
            if any(network.overlaps(r) for r in ranges) and network.prefixlen > 0:
                found.append(f"route {json.dumps(route, sort_keys=True)}")
    for binary in ("iptables-save", "ip6tables-save"):
        dump = _run([binary], check=False).stdout
        for line in dump.splitlines():
            if re.search(r"KUBE-|OSHU-|" + re.escape(net.bridge), line):
                found.append(f"{binary}: {line}")
    nft = _run(["nft", "list", "tables"], check=False).stdout if shutil.which("nft") else ""
    found += [f"nftables {line}" for line in nft.splitlines() if "kube-proxy" in line]
    if CONTAINER_LOG_LINKS.is_dir():
        for link in CONTAINER_LOG_LINKS.iterdir():
            with contextlib.suppress(OSError):
                if link.is_symlink() and os.readlink(link).startswith(marker):
                    found.append(f"log link {link}")
    return found
