"""Child processes: how every helper of the kit stops the sidecar or operator it started."""

from __future__ import annotations

import subprocess


def terminate(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int | None:
    """SIGTERM, wait up to `timeout`, then SIGKILL: how every helper here stops a child."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    return proc.returncode
