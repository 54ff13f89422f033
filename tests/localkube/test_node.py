"""The local cluster's node: pods really run, Services and cluster DNS work, kubectl logs/exec
reach the kubelet, and the node's ranges can never be routed off the machine.

All tests share one node cluster (fixture ``kube_node_cluster``); the stop/cleanup and
one-node-per-namespace and other-namespace tests are in test_node_lifecycle.py.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest

from oshu_localkube import images_pause, node
from oshu_localkube.cluster import LocalCluster, wait_for

NODETEST_SOURCE = Path(__file__).parent / "nodetest"
NODETEST_IMAGE = "localhost/oshu-localkube/nodetest:1"


@pytest.fixture(scope="module")
def nodetest_image(kube_node_cluster: LocalCluster) -> str:
    """A one-binary image (static Go, stdlib only): hello, serve, get, resolve, sleep."""
    assert kube_node_cluster.node is not None
    archive = images_pause.go_binary_image_archive(NODETEST_SOURCE, NODETEST_IMAGE, "nodetest")
    kube_node_cluster.node.import_image(archive)
    assert NODETEST_IMAGE in kube_node_cluster.node.image_names()
    return NODETEST_IMAGE


def _pod(name: str, image: str, args: list[str], *, restart: str = "Never", labels: dict | None = None) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "restartPolicy": restart,
            "terminationGracePeriodSeconds": 1,
            "automountServiceAccountToken": False,
            "containers": [
                {
                    "name": "main",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "args": args,
                    "securityContext": {"runAsUser": 65534, "runAsNonRoot": True, "allowPrivilegeEscalation": False},
                }
            ],
        },
    }


def _apply(cluster: LocalCluster, namespace: str, *objects: dict) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                                           "items": list(objects)}))  # fmt: skip


def _pod_json(cluster: LocalCluster, namespace: str, name: str) -> dict:
    return json.loads(cluster.kubectl("get", "pod", "-n", namespace, name, "-o", "json").stdout)


def _wait_ready(cluster: LocalCluster, namespace: str, name: str) -> dict:
    def ready() -> dict | None:
        pod = _pod_json(cluster, namespace, name)
        conditions = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
        return pod if conditions.get("Ready") == "True" else None

    return wait_for(ready, timeout=90, what=f"pod {namespace}/{name} Ready", interval=0.5)


def test_node_is_ready_with_its_addresses(kube_node_cluster: LocalCluster) -> None:
    assert kube_node_cluster.node is not None
    net = kube_node_cluster.node.net
    nodes = json.loads(kube_node_cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    assert [n["metadata"]["name"] for n in nodes] == [net.node_name]
    addresses = {a["type"]: a["address"] for a in nodes[0]["status"]["addresses"]}
    assert addresses["InternalIP"] == net.node_ip
    # The kubernetes Service points at the apiserver on the node address (pods reach it).
    slices = json.loads(
        kube_node_cluster.kubectl(
            "get", "endpointslices", "-n", "default", "-l", "kubernetes.io/service-name=kubernetes", "-o", "json"
        ).stdout
    )["items"]
    assert [a for s in slices for e in s["endpoints"] for a in e["addresses"]] == [net.node_ip]


def test_pod_runs_to_completion_and_logs_reach_kubectl(
    kube_node_cluster: LocalCluster, kube_node_namespace: str, nodetest_image: str
) -> None:
    _apply(kube_node_cluster, kube_node_namespace, _pod("hello", nodetest_image, ["hello"]))
    wait_for(
        lambda: (
            _pod_json(kube_node_cluster, kube_node_namespace, "hello").get("status", {}).get("phase")
            in ("Succeeded", "Failed")
        ),
        timeout=90,
        what="pod hello to finish",
        interval=0.5,
    )
    pod = _pod_json(kube_node_cluster, kube_node_namespace, "hello")
    assert pod["status"]["phase"] == "Succeeded", pod["status"]
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    logs = kube_node_cluster.kubectl("logs", "-n", kube_node_namespace, "hello").stdout
    assert logs == "hello from the local node\n"


def test_service_reaches_pod_from_node_and_from_pod_by_dns_name(
    kube_node_cluster: LocalCluster, kube_node_namespace: str, nodetest_image: str
) -> None:
    assert kube_node_cluster.node is not None
    net = kube_node_cluster.node.net
    ns = kube_node_namespace
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    _apply(
        kube_node_cluster,
        ns,
        _pod("web", nodetest_image, ["serve", "8080", "served"], restart="Always", labels={"app": "web"}),
        _pod("client", nodetest_image, ["sleep"], restart="Always"),
        service,
    )
    web = _wait_ready(kube_node_cluster, ns, "web")
    _wait_ready(kube_node_cluster, ns, "client")
    pod_ip = web["status"]["podIP"]
    assert ipaddress.ip_address(pod_ip) in ipaddress.ip_network(net.node_pod_cidr)
    cluster_ip = json.loads(kube_node_cluster.kubectl("get", "svc", "-n", ns, "web", "-o", "json").stdout)["spec"][
        "clusterIP"
    ]
    assert ipaddress.ip_address(cluster_ip) in ipaddress.ip_network(net.service_cidr)

    def from_node() -> str | None:
        try:
            with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                f"http://{cluster_ip}/", timeout=3
            ) as response:
                return response.read().decode()
        except OSError:
            return None

    assert wait_for(from_node, timeout=60, what=f"ClusterIP {cluster_ip} from the node") == "served from web\n"

    # From another pod, by the Service's DNS name (cluster DNS + kube-proxy from a pod), with
    # kubectl exec (the apiserver -> kubelet path with the kubelet client certificate).
    def from_pod(url: str) -> str | None:
        result = kube_node_cluster.kubectl("exec", "-n", ns, "client", "--", "/nodetest", "get", url, check=False)
        return result.stdout if result.returncode == 0 else None

    assert wait_for(lambda: from_pod("http://web/"), timeout=60, what="web by short name from a pod") == (
        "served from web\n"
    )
    fqdn = f"http://web.{ns}.svc.{net.cluster_domain}/"
    assert from_pod(fqdn) == "served from web\n"


def test_port_forward_reaches_a_pod(
    kube_node_cluster: LocalCluster, kube_node_namespace: str, nodetest_image: str
) -> None:
    """kubectl port-forward: apiserver -> kubelet (client certificate) -> containerd's stream."""
    ns = kube_node_namespace
    _apply(kube_node_cluster, ns, _pod("pf", nodetest_image, ["serve", "8080", "forwarded"], restart="Always"))
    _wait_ready(kube_node_cluster, ns, "pf")
    command = [str(kube_node_cluster.kubectl_path), "port-forward", "--address=127.0.0.1", "-n", ns, "pod/pf", ":8080"]
    forward = subprocess.Popen(command, env=kube_node_cluster.env(), stdout=subprocess.PIPE, text=True)
    try:
        assert forward.stdout is not None
        line = forward.stdout.readline()  # "Forwarding from 127.0.0.1:PORT -> 8080" (EOF if it failed)
        assert "127.0.0.1:" in line, f"kubectl port-forward did not start: {line!r}"
        port = int(line.split("127.0.0.1:", 1)[1].split()[0])
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
            f"http://127.0.0.1:{port}/", timeout=10
        ) as response:
            assert response.read().decode() == "forwarded from pf\n"
    finally:
        forward.terminate()
        forward.wait(timeout=10)


def test_cluster_dns_answers_only_the_cluster_zone(
    kube_node_cluster: LocalCluster, kube_node_namespace: str, nodetest_image: str
) -> None:
    assert kube_node_cluster.node is not None
    net = kube_node_cluster.node.net
    ns = kube_node_namespace
    _apply(kube_node_cluster, ns, _pod("dns", nodetest_image, ["sleep"], restart="Always"))
    _wait_ready(kube_node_cluster, ns, "dns")

    def resolve(name: str) -> subprocess.CompletedProcess[str]:
        return kube_node_cluster.kubectl("exec", "-n", ns, "dns", "--", "/nodetest", "resolve", name, check=False)

    found = resolve(f"kubernetes.default.svc.{net.cluster_domain}")
    assert found.returncode == 0, found.stderr
    assert found.stdout.split() == [net.kubernetes_service_ip]
    assert resolve("kubernetes.default").stdout.split() == [net.kubernetes_service_ip]  # search path
    # Nothing outside the cluster zone is answered: no forwarding anywhere.
    outside = resolve("example.com.")
    assert outside.returncode != 0
    assert outside.stdout == ""


def test_routes_keep_every_cluster_address_on_this_machine(kube_node_cluster: LocalCluster) -> None:
    assert kube_node_cluster.node is not None
    net = kube_node_cluster.node.net
    installed = json.loads(
        subprocess.run(
            ["ip", "-j", "route", "show", "proto", node.ROUTE_PROTOCOL], capture_output=True, text=True, check=True
        ).stdout
    )
    unreachable = {r["dst"] for r in installed if r.get("type") == "unreachable"}
    assert unreachable == {net.pod_cidr, net.service_cidr, net.node_ip}

    def route_get(address: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "-j", "route", "get", address], capture_output=True, text=True)

    # Pod addresses beyond this node's bridge: refused locally, never the default route.
    outside_node = str(ipaddress.ip_network(net.pod_cidr)[-2])
    result = route_get(outside_node)
    assert result.returncode != 0 and "no route to host" in result.stderr.lower(), result
    with socket.socket() as sock, pytest.raises(OSError) as refused:
        sock.settimeout(5)
        sock.connect((outside_node, 80))
    assert refused.value.errno == errno.EHOSTUNREACH  # refused at once, nothing sent
    # Service addresses go onto the pod bridge (kube-proxy's rules act there), not out.
    service = json.loads(route_get(str(ipaddress.ip_network(net.service_cidr)[4242])).stdout)[0]
    assert service["dev"] == net.bridge
    # This node's pods: the bridge; the node address: local delivery.
    pod = json.loads(route_get(str(ipaddress.ip_network(net.node_pod_cidr)[77])).stdout)[0]
    assert pod["dev"] == net.bridge
    local = json.loads(route_get(net.node_ip).stdout)[0]
    assert local["type"] == "local"
    # Forwarding between the pod bridge and any other interface is dropped, first thing
    # (mangle FORWARD runs before the filter table, where kube-proxy inserts its ACCEPTs).
    iptables = ["iptables", "-w", "-t", node.FORWARD_TABLE, "-S"]
    rules = subprocess.run([*iptables, node.FORWARD_CHAIN], capture_output=True, text=True, check=True).stdout
    assert f"-A {node.FORWARD_CHAIN} -i {net.bridge} ! -o {net.bridge} -j DROP" in rules
    assert f"-A {node.FORWARD_CHAIN} ! -i {net.bridge} -o {net.bridge} -j DROP" in rules
    forward = subprocess.run([*iptables, "FORWARD"], capture_output=True, text=True, check=True).stdout
    assert forward.splitlines()[1] == f"-A FORWARD -j {node.FORWARD_CHAIN}"


def test_route_plan_covers_every_range() -> None:
    """Pure: whatever the addresses, each range gets an unreachable route (a new range added to
    NodeNetwork without a route would fail here)."""
    net = node.NodeNetwork(node_ip="10.1.2.3", pod_cidr="10.50.0.0/16", node_pod_cidr="10.50.7.0/24",
                           service_cidr="10.60.0.0/20")  # fmt: skip
    plan = node.route_plan(net)
    unreachable = {r[1] for r in plan if r[0] == "unreachable"}
    assert unreachable == {"10.50.0.0/16", "10.60.0.0/20", "10.1.2.3/32"}
    assert ["10.60.0.0/20", "dev", net.bridge, "src", "10.50.7.1", "proto", node.ROUTE_PROTOCOL] in plan
    assert all("via" not in route for route in plan)  # nothing ever points at a gateway


def test_the_node_refuses_ranges_that_overlap_the_machines_own_routes() -> None:
    """`ip route replace` would take over a connected network and the stop would flush it (as the
    redirect canary's 192.0.2.0/24 once did to this machine's eth0): refused before anything."""
    net = node.NodeNetwork()
    host = [
        {"dst": "default", "gateway": "192.0.2.1", "dev": "eth0"},
        {"dst": "192.0.2.0/24", "dev": "eth0", "protocol": "kernel", "scope": "link"},
        {"dst": "10.244.0.0/24", "dev": net.bridge, "protocol": "kernel"},  # ours, left by a killed owner
        {"dst": "10.244.0.0/16", "type": "unreachable", "protocol": node.ROUTE_PROTOCOL},
        {"dst": net.node_ip, "dev": "lo", "table": "local", "type": "local", "protocol": "kernel"},
    ]
    assert node.foreign_routes(net, host) == []
    clash = [*host, {"dst": "10.96.0.0/12", "dev": "eth1", "protocol": "kernel", "scope": "link"}]
    assert node.foreign_routes(net, clash) == ["10.96.0.0/12 dev eth1 (kernel)"]
    other = node.NodeNetwork(pod_cidr="192.0.2.0/24", node_pod_cidr="192.0.2.0/25")
    assert node.foreign_routes(other, host) == ["192.0.2.0/24 dev eth0 (kernel)"]
