"""Start, stop, run side by side, and recover from crashes, through the API and the CLI.

These tests start their own clusters (not the session one) under a private runtime root.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from oshu_localkube import LocalCluster
from oshu_localkube.cluster import STATE_FILE, sweep_dead_clusters, wait_for

pytestmark = pytest.mark.timeout(300)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _pids(state_dir: Path) -> dict[str, int]:
    state = json.loads((state_dir / STATE_FILE).read_text())
    return {p["name"]: p["pid"] for p in state["processes"]}


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "run"
    monkeypatch.setenv("OSHU_LOCALKUBE_RUN_DIR", str(root))
    return root


def test_start_stop_twice_in_a_row(run_dir: Path) -> None:
    for _ in range(2):
        cluster = LocalCluster()
        with cluster:
            assert cluster.is_ready()
            assert cluster.state_dir.parent == run_dir
            pids = _pids(cluster.state_dir)
            assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager"}
            assert (
                cluster.kubectl("get", "namespace", "kube-system", "-o", "name").stdout.strip()
                == "namespace/kube-system"
            )
        assert not cluster.state_dir.exists()
        assert not any(_alive(pid) for pid in pids.values())


def test_two_clusters_at_once_are_isolated(run_dir: Path) -> None:
    with LocalCluster() as first, LocalCluster() as second:
        assert first.state_dir != second.state_dir
        assert not set(first.ports.values()) & set(second.ports.values())
        first.kubectl("create", "configmap", "only-in-first", "-n", "default")
        assert first.kubectl("get", "configmap", "only-in-first", "-n", "default", check=False).returncode == 0
        missing = second.kubectl("get", "configmap", "only-in-first", "-n", "default", check=False)
        assert missing.returncode != 0 and "NotFound" in missing.stderr
        # Each kubeconfig only opens its own cluster: the certificates are per cluster.
        crossed = second.kubectl("--server", first.server, "get", "ns", check=False)
        assert crossed.returncode != 0


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "oshu_localkube", *args], capture_output=True, text=True, env=env, timeout=240
    )


def test_cli_start_status_stop_and_restart_after_crash(run_dir: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OSHU_LOCALKUBE_RUN_DIR": str(run_dir)}
    state_dir = run_dir / "cli-test"
    new: dict[str, int] = {}
    started = _cli("start", "--name", "cli-test", env=env)
    assert started.returncode == 0, started.stderr
    try:
        exports = dict(
            line.removeprefix("export ").split("=", 1)
            for line in started.stdout.splitlines()
            if line.startswith("export ")
        )
        assert exports["KUBECONFIG"] == str(state_dir / "kubeconfig")
        # The printed environment works as is in a shell, with our kubectl first on PATH.
        shell = subprocess.run(
            ["bash", "-c", 'eval "$1" && kubectl get ns default -o name', "_", started.stdout],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
        assert shell.stdout.strip() == "namespace/default", shell.stderr

        status = _cli("status", "--name", "cli-test", "--json", env=env)
        assert status.returncode == 0 and json.loads(status.stdout)["ready"] is True

        again = _cli("start", "--name", "cli-test", env=env)
        assert again.returncode == 1 and "already running" in again.stderr

        # Crash: the apiserver dies. status notices; the next start cleans up and starts fresh.
        old = _pids(state_dir)
        os.kill(old["kube-apiserver"], signal.SIGKILL)
        wait_for(lambda: not _alive(old["kube-apiserver"]), timeout=30, what="the apiserver to die")
        assert _cli("status", "--name", "cli-test", env=env).returncode == 1

        restarted = _cli("start", "--name", "cli-test", env=env)
        assert restarted.returncode == 0, restarted.stderr
        assert not any(_alive(pid) for pid in old.values())  # the survivors of the crash were stopped
        new = _pids(state_dir)
        assert all(_alive(pid) for pid in new.values())
    finally:
        stopped = _cli("stop", "--name", "cli-test", env=env)
    assert stopped.returncode == 0
    assert not state_dir.exists()
    assert not any(_alive(pid) for pid in new.values())
    assert _cli("status", "--name", "cli-test", env=env).returncode == 3


def test_components_die_with_a_killed_owner_and_are_swept(run_dir: Path) -> None:
    """A test session killed with SIGKILL leaves no control plane running, and no state behind."""
    owner = subprocess.Popen(
        [
            sys.executable, "-c",
            textwrap.dedent(
                """
                import sys, time
                from oshu_localkube import LocalCluster
                cluster = LocalCluster().start()
                print(cluster.state_dir, flush=True)
                time.sleep(600)
                """
            ),
        ],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "OSHU_LOCALKUBE_RUN_DIR": str(run_dir)},
    )  # fmt: skip
    try:
        assert owner.stdout is not None
        state_dir = Path(owner.stdout.readline().strip())
        pids = _pids(state_dir)
        assert all(_alive(pid) for pid in pids.values())
    finally:
        owner.kill()
        owner.wait(timeout=30)
    wait_for(lambda: not any(_alive(pid) for pid in pids.values()), timeout=30, what="components to exit")
    assert state_dir.exists()  # nobody cleaned up after the crash...
    assert sweep_dead_clusters(run_dir) == [state_dir]  # ...until the next start sweeps it
    assert not state_dir.exists()
