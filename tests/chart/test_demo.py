"""The README's first command works: `python hack/demo.py` (what `make demo` runs), end to end."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from oshu_e2e import examples

DEMO = Path(__file__).resolve().parents[2] / "hack" / "demo.py"


@pytest.mark.timeout(600)
def test_demo_runs_end_to_end_and_cleans_up(kube_binaries, record_property) -> None:
    proc = subprocess.run(
        [sys.executable, str(DEMO)],
        capture_output=True,
        text=True,
        timeout=540,
        env={k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")},
    )
    out = proc.stdout
    assert proc.returncode == 0, f"demo failed:\n{out[-4000:]}\n{proc.stderr[-4000:]}"
    for step in range(1, 8):
        assert f"[{step}/7]" in out
    assert "ANTHROPIC_API_KEY=SEALED_" in out
    assert "initContainers[oshu-vault-proxy]" in out and "restartPolicy Always" in out
    assert "-> HTTP 200. The stand-in received x-api-key" in out
    assert "the proxy answered the CONNECT with 403" in out
    assert "What this showed" in out
    assert examples.real_key(examples.load()) not in out + proc.stderr, "the demo printed the whole real key"
    seconds = re.search(r"\((\d+)s in all\)", out)
    assert seconds
    record_property("demo_seconds", int(seconds[1]))
    # Cleaned up: the demo's API server is gone.
    api = re.search(r"API server at https://127\.0\.0\.1:(\d+)", out)
    assert api, out[-3000:]
    port = int(api[1])
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_demo_exits_non_zero_with_a_clear_message(tmp_path: Path) -> None:
    """Negative control: without curl the demo stops before starting anything, and says why."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    proc = subprocess.run(
        [sys.executable, str(DEMO)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": str(bin_dir), "HOME": str(tmp_path)},
    )
    assert proc.returncode == 1
    assert "DEMO FAILED at step 0: DemoFailure: curl is needed" in proc.stderr
