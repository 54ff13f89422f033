"""The real operator as a subprocess, for tests, benchmarks and the demo.

`OperatorProcess` starts `python -m oshu_operator --dev-webhook` against a kubeconfig,
as production runs it, waits until /readyz says the operator and its webhook are up,
captures its JSON log, and stops it with SIGTERM. Everything listens on 127.0.0.1.

Example::

    from oshu_testkit.operator_process import CRD_PATH, OperatorProcess

    kubectl("apply", "-f", str(CRD_PATH))
    with OperatorProcess(kubeconfig) as op:
        ...  # apply VaultSessions, create pods
        assert op.metric("oshu_vault_injections_total", result="injected") >= 1
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from oshu_e2e.paths import CRD_FILE
from oshu_operator.names import DEV_WEBHOOK_CONFIG

from .clientenv import without_proxy_env
from .processes import terminate

#: The single source of the CRD (the Helm chart's crds/ directory).
CRD_PATH = CRD_FILE


class OperatorError(RuntimeError):
    """The operator failed to start; the message carries its log tail."""


class OperatorProcess:
    def __init__(
        self,
        kubeconfig: Path | str,
        *,
        args: Iterable[str] = (),
        namespaces: Iterable[str] = (),
        webhook_config: str = DEV_WEBHOOK_CONFIG,
        revocation_grace: str = "2s",
        log_level: str = "INFO",
        directory: Path | None = None,
        env: Mapping[str, str] | None = None,
        python: str = sys.executable,
    ) -> None:
        self.kubeconfig = Path(kubeconfig)
        self.directory = Path(directory or tempfile.mkdtemp(prefix="oshu-operator-"))
        self.log_file = self.directory / "operator.log"
        self.webhook_config = webhook_config
        base = [
            python,
            "-m",
            "oshu_operator",
            "--kubeconfig",
            str(self.kubeconfig),
            "--dev-webhook",
            "--dev-webhook-config",
            webhook_config,
            "--webhook-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--revocation-grace",
            revocation_grace,
            "--log-level",
            log_level,
        ]
        for ns in namespaces:
            base += ["--namespace", ns]
        self.args = base + list(args)
        # Proxy variables of the caller must not route operator -> apiserver.
        self.env = without_proxy_env(env if env is not None else os.environ)
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_port: int | None = None

    def __enter__(self) -> OperatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 60.0) -> OperatorProcess:
        self._log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        with open(self.log_file, "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise OperatorError(f"operator exited with {self.proc.returncode}:\n{self.log_tail()}")
            rec = self.find_log(lambda r: r.get("msg") == "operator starting", since_start=True)
            if rec is not None:
                self.metrics_port = int(str(rec["metrics"]).rsplit(":", 1)[1])
                break
            time.sleep(0.05)
        while self.metrics_port and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise OperatorError(f"operator exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                status, _ = self.get("/readyz")
                if status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise OperatorError(f"operator not ready within {timeout}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        return terminate(self.proc, timeout)

    def restart(self, timeout: float = 60.0) -> OperatorProcess:
        self.stop()
        return self.start(timeout)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss_bytes(self) -> int:
        """Resident memory of the operator process (Linux /proc)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise OperatorError("no VmRSS")

    # --- HTTP on the metrics port ------------------------------------------------------------
    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        url = f"http://127.0.0.1:{self.metrics_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def metrics_text(self) -> str:
        status, body = self.get("/metrics")
        assert status == 200, status
        return body.decode()

    def metric(self, name: str, **labels: str) -> float | None:
        """Value of one sample (labels must match exactly those given, in any order)."""
        for line in self.metrics_text().splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            sample, _, value = line.rpartition(" ")
            metric, _, rest = sample.partition("{")
            if metric != name:
                continue
            have = dict(kv.split("=", 1) for kv in rest.rstrip("}").split(",") if kv) if rest else {}
            have = {k: v.strip('"') for k, v in have.items()}
            if have == labels:
                return float(value)
        return None

    # --- logs ----------------------------------------------------------------------------
    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def log_tail(self, chars: int = 6000) -> str:
        return self.log_text()[-chars:]

    def log_records(self, since_start: bool = False) -> list[dict[str, Any]]:
        data = self.log_file.read_bytes() if self.log_file.exists() else b""
        if since_start:
            data = data[getattr(self, "_log_offset", 0) :]
        text = data.decode(errors="replace")
        out = []
        for line in text.splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
        return out

    def find_log(self, predicate: Callable[[dict[str, Any]], bool], since_start: bool = False) -> dict[str, Any] | None:
        return next((r for r in self.log_records(since_start) if predicate(r)), None)
