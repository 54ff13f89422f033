"""Stopping a node cluster leaves nothing on the machine, and only one node cluster runs at a
time while control-plane-only clusters still start beside it.

These tests start their own node cluster, so they are marked ``oshu_node_exclusive`` (run
before the session's shared node cluster exists).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from oshu_localkube import images_pause, node
from oshu_localkube.cluster import LocalCluster, wait_for
from oshu_localkube.pytest_plugin import start_node_cluster

# Each may have to wait for another session's node cluster (OSHU_NODE_WAIT) before its own.
pytestmark = [pytest.mark.oshu_node_exclusive, pytest.mark.timeout(1200)]


@pytest.fixture(scope="module")
def own_node_cluster() -> Iterator[LocalCluster]:
    problems = node.missing_prerequisites()
    if problems:
        pytest.skip("this machine cannot run the local node: " + "; ".join(problems))
    cluster = start_node_cluster(log=print)
    try:
        yield cluster
    finally:
        cluster.stop()  # a no-op once the cleanup test stopped it


def _busy_pod(secret: str) -> dict:
    """A running pod with a Secret volume: a tmpfs mount, a netns, a veth, container cgroups."""
    return {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret}, "stringData": {"k": "v"}},
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "busy", "labels": {"app": "busy"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [
                        {
                            "name": "pause",
                            "image": images_pause.PAUSE_IMAGE,
                            "imagePullPolicy": "Never",
                            "volumeMounts": [{"name": "s", "mountPath": "/s"}],
                        }
                    ],
                    "volumes": [{"name": "s", "secret": {"secretName": secret}}],
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "busy"},
                "spec": {"selector": {"app": "busy"}, "ports": [{"port": 80}]},
            },
        ],
    }


CRASHING_OWNER = """
import json, sys, time
from oshu_localkube import images_pause
from oshu_localkube.cluster import wait_for
from oshu_localkube.pytest_plugin import start_node_cluster

cluster = start_node_cluster()
pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [
    {"name": "c", "image": images_pause.PAUSE_IMAGE, "imagePullPolicy": "Never"}]}}
cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
wait_for(lambda: json.loads(cluster.kubectl("get", "pod", "p", "-o", "json").stdout)["status"].get("phase")
         == "Running", timeout=90, what="pod p Running")
print(cluster.state_dir, flush=True)
time.sleep(300)
"""


def test_node_of_a_killed_owner_is_cleaned_up_by_the_next_start() -> None:
    problems = node.missing_prerequisites()
    if problems:
        pytest.skip("this machine cannot run the local node: " + "; ".join(problems))
    owner = subprocess.Popen([sys.executable, "-c", CRASHING_OWNER], stdout=subprocess.PIPE, text=True)
    try:
        line = owner.stdout.readline() if owner.stdout else ""  # bounded: the owner's own timeouts
        assert line.strip(), "the owner process did not start its node cluster"
        dead_dir = Path(line.strip())
    finally:
        owner.kill()
        owner.wait(timeout=30)
    net = node.NodeNetwork()
    left = node.host_leftovers(net, dead_dir)
    # The owner died hard: its pod's container, routes and rules are all still there.
    assert {"cgroup", "route", "interface", "iptables-save:"} <= {entry.split(" ", 1)[0] for entry in left}, left
    successor = start_node_cluster(wait=0)
    try:
        # The successor's own routes etc. are machine-wide; nothing may mention the dead one.
        assert [entry for entry in node.host_leftovers(net, dead_dir) if str(dead_dir) in entry] == []
        assert not dead_dir.exists()
        assert successor.node is not None and successor.node.node_ready()
    finally:
        successor.stop()
    assert node.host_leftovers(net, dead_dir) == []


OTHER_NAMESPACE_NODE = """
import json
from oshu_localkube import node
from oshu_localkube.cluster import LocalCluster

cluster = LocalCluster(node=True).start()
assert cluster.node is not None and cluster.node.node_ready()
net, state_dir = cluster.node.net, cluster.state_dir
cluster.stop()
print(json.dumps({"slot": node.machine_slot(), "left": node.host_leftovers(net, state_dir)}))
"""


def test_a_node_cluster_in_another_network_namespace_runs_beside(own_node_cluster: LocalCluster) -> None:
    """Two node clusters on one machine: the second in its own network namespace."""
    assert own_node_cluster.node is not None
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) not found")
    result = subprocess.run(
        ["unshare", "--net", "--fork", "sh", "-c", 'ip link set lo up && exec "$0" -c "$1"', sys.executable,
         OTHER_NAMESPACE_NODE],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["slot"].startswith("netns-")
    assert report["left"] == []
    # Ours, in the machine's namespace, never noticed.
    assert own_node_cluster.node.node_ready()
    assert node.holds_claim(own_node_cluster.state_dir)


def test_second_node_cluster_fails_clearly_and_plain_clusters_still_start(own_node_cluster: LocalCluster) -> None:
    first = own_node_cluster
    assert first.node is not None
    second = LocalCluster(node=True, ready_timeout=60)
    with pytest.raises(node.NodeBusyError, match="already runs from") as refused:
        second.start()
    assert str(first.state_dir) in str(refused.value)
    assert not second.is_running()
    # The refused start touched nothing of the running node.
    assert first.node.node_ready()
    assert node.host_leftovers(first.node.net, first.state_dir)  # its routes etc. are all still there
    routes = subprocess.run(["ip", "route", "show", "proto", node.ROUTE_PROTOCOL], capture_output=True, text=True)
    assert first.node.net.pod_cidr in routes.stdout
    with LocalCluster() as plain:
        assert plain.kubectl("get", "namespace", "default", "-o", "name").stdout.strip() == "namespace/default"


def test_stop_leaves_no_process_mount_interface_address_rule_or_route(own_node_cluster: LocalCluster) -> None:
    cluster = own_node_cluster
    assert cluster.node is not None
    net, state_dir = cluster.node.net, cluster.state_dir
    cluster.kubectl("apply", "-f", "-", input=json.dumps(_busy_pod("busy-secret")))

    def running() -> bool:
        pod = json.loads(cluster.kubectl("get", "pod", "busy", "-o", "json").stdout)
        return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))

    wait_for(running, timeout=90, what="pod busy Ready", interval=0.5)
    # While it runs, every kind of thing the check looks for exists (so the check can fail).
    while_running = node.host_leftovers(net, state_dir)
    kinds = {entry.split(" ", 1)[0] for entry in while_running}
    assert {"process", "mount", "cgroup", "interface", "address", "route", "iptables-save:"} <= kinds, kinds
    assert any("KUBE-SERVICES" in entry for entry in while_running)
    assert any(entry.startswith("mount ") and "volumes/kubernetes.io~secret" in entry for entry in while_running)

    cluster.stop()
    assert node.host_leftovers(net, state_dir) == []
    assert not state_dir.exists()
    assert not node.holds_claim(state_dir)


def test_cgroup_walk_survives_directories_vanishing(tmp_path: Path) -> None:
    """stop() walks the cgroup tree while the kubelet removes pod cgroups: a vanished directory is
    skipped, not an exception (seen at the end of `make demo`)."""
    root = tmp_path / "root"
    for sub in ("kubepods/besteffort/pod1/c1", "kubepods/burstable/pod2"):
        (root / sub).mkdir(parents=True)
    (root / "kubepods/besteffort/pod1/c1/cgroup.procs").write_text("")
    walked: list[str] = []
    real_walk = os.walk

    def walk_removing(top: Path) -> Iterator[tuple[str, list[str], list[str]]]:
        for entry in real_walk(top):
            walked.append(entry[0])
            if entry[0].endswith("besteffort"):
                shutil.rmtree(root / "kubepods/besteffort/pod1")  # gone between listing and descent
            yield entry

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(node.os, "walk", walk_removing)
        dirs = node._cgroup_subdirs(root)
    assert dirs[-1] == root and all(len(a.parts) >= len(b.parts) for a, b in itertools.pairwise(dirs))
    assert not any("pod1" in str(d) for d in dirs)
