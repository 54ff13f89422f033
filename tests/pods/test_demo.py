"""The README's first command works: `python hack/demo.py` (what `make demo` runs), end to end
on running pods, and cleans up after itself."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from oshu_e2e import examples
from oshu_images.podman import available
from oshu_localkube import node as lk_node

DEMO = Path(__file__).resolve().parents[2] / "hack" / "demo.py"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy") and not k.startswith("OSHU_E2E_")}
    env.pop("OSHU_KUBE_NODE_CLUSTER_DIR", None)
    return {**env, **extra}


@pytest.mark.oshu_node_exclusive
@pytest.mark.timeout(900)
def test_demo_runs_end_to_end_and_cleans_up(kube_binaries: dict[str, Path], record_property) -> None:
    podman_problem = available()
    problems = lk_node.missing_prerequisites() + ([podman_problem] if podman_problem else [])
    if problems:
        pytest.skip("this machine cannot run the local node: " + "; ".join(problems))
    proc = subprocess.run([sys.executable, str(DEMO)], capture_output=True, text=True, timeout=840, env=_env())
    out = proc.stdout
    assert proc.returncode == 0, f"demo failed:\n{out[-4000:]}\n{proc.stderr[-4000:]}"
    for step in range(1, 9):
        assert f"[{step}/8]" in out
    assert "the operator runs as Pod oshu-vault/" in out
    assert "ANTHROPIC_API_KEY=SEALED_" in out
    assert "initContainers[oshu-vault-proxy]" in out and "restartPolicy Always" in out
    assert "-> HTTP 200. The stand-in received x-api-key" in out
    assert "-> refused" in out and "nothing reached the host" in out
    assert "What this showed" in out
    assert examples.real_key(examples.load()) not in out + proc.stderr, "the demo printed the whole real key"
    seconds = re.search(r"\((\d+)s in all\)", out)
    assert seconds
    record_property("demo_seconds", int(seconds[1]))
    print(f"\n[pods] demo: {seconds[1]}s in all")
    # Cleaned up: the demo's cluster is stopped.
    api = re.search(r"API server at (https://\S+)", out)
    assert api, out[-3000:]
    check = subprocess.run(["curl", "-sk", "--max-time", "3", api[1]], capture_output=True)
    assert check.returncode != 0, "the demo's API server still answers"


def test_demo_exits_non_zero_with_a_clear_message(tmp_path: Path) -> None:
    """Negative control: your cluster named, but no registry for the images: the demo stops
    before starting or installing anything, and says why."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    proc = subprocess.run(
        [sys.executable, str(DEMO)],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(OSHU_E2E_KUBECONFIG=str(kubeconfig)),
    )
    assert proc.returncode == 1
    assert "DEMO FAILED at step 1: DemoFailure: OSHU_E2E_KUBECONFIG needs OSHU_E2E_REGISTRY" in proc.stderr
