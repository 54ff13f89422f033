"""Small synchronous helpers over the local cluster's kubectl for the operator tests."""

from __future__ import annotations

import base64
import builtins  # Kube.list shadows the builtin inside the class body
import json
import secrets
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from oshu_localkube.cluster import wait_for as localkube_wait_for
from oshu_operator import names as n
from oshu_operator.config import SidecarConfig

#: Never pulled (no kubelet here): the tests check the stored pod spec names it.
SIDECAR_IMAGE = "registry.test/oshu-vault-sidecar:test"
#: The sidecar the tests' operator injects: non-default ports and log level, so every stored
#: pod shows the --sidecar-* flags reaching the sidecar's args, probes and the proxy variables.
SIDECAR = SidecarConfig(image=SIDECAR_IMAGE, proxy_port=15180, admin_port=15190, log_level="debug")
SIDECAR_ARGS = (
    "--sidecar-image",
    SIDECAR.image,
    "--sidecar-proxy-port",
    str(SIDECAR.proxy_port),
    "--sidecar-admin-port",
    str(SIDECAR.admin_port),
    "--sidecar-log-level",
    SIDECAR.log_level,
)


@dataclass
class Created:
    ok: bool
    obj: dict[str, Any] | None
    error: str
    warnings: list[str] = field(default_factory=list)


class Kube:
    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl(*args, input=input, check=check)

    def create(self, obj: dict[str, Any], *extra: str) -> Created:
        """Create through the API (admission included); never raises on a refusal."""
        r = self.kubectl("create", "-f", "-", "-o", "json", *extra, input=json.dumps(obj), check=False)
        warnings = [line.removeprefix("Warning: ") for line in r.stderr.splitlines() if line.startswith("Warning: ")]
        if r.returncode != 0:
            return Created(False, None, r.stderr.strip(), warnings)
        return Created(True, json.loads(r.stdout), "", warnings)

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        r = self.kubectl(
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=tests",
            "-f",
            "-",
            "-o",
            "json",
            input=json.dumps(obj),
        )
        return json.loads(r.stdout)

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        args = ["get", kind, name, "-o", "json"] + (["-n", namespace] if namespace else [])
        r = self.kubectl(*args, check=False)
        if r.returncode != 0:
            if "NotFound" in r.stderr or "not found" in r.stderr:
                return None
            raise RuntimeError(r.stderr)
        return json.loads(r.stdout)

    def list(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        args = ["get", kind, "-o", "json"] + (["-n", namespace] if namespace else ["-A"])
        return json.loads(self.kubectl(*args).stdout)["items"]

    def delete(self, kind: str, name: str, namespace: str, wait: bool = False) -> None:
        self.kubectl("delete", kind, name, "-n", namespace, f"--wait={str(wait).lower()}", "--ignore-not-found")

    # --- domain helpers -------------------------------------------------------------------
    def secret(self, namespace: str, name: str, data: dict[str, str]) -> dict[str, Any]:
        return self.apply(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": name, "namespace": namespace},
                "type": "Opaque",
                "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
            }
        )

    def session(
        self, namespace: str, name: str, secrets_: builtins.list[dict[str, Any]], **spec: Any
    ) -> dict[str, Any]:
        body = {
            "apiVersion": n.API_VERSION,
            "kind": n.KIND,
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"secrets": secrets_, **spec},
        }
        return self.apply(body)

    def session_secret(self, namespace: str, session: str) -> dict[str, bytes] | None:
        obj = self.get("secret", n.session_secret_name(session), namespace)
        if obj is None:
            return None
        return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}

    def session_file(self, namespace: str, session: str) -> dict[str, Any] | None:
        data = self.session_secret(namespace, session)
        return None if data is None else json.loads(data[n.KEY_SESSION_FILE])

    def status(self, namespace: str, session: str) -> dict[str, Any]:
        obj = self.get(n.PLURAL, session, namespace)
        return (obj or {}).get("status") or {}

    def wait_phase(self, namespace: str, session: str, phase: str, timeout: float = 30) -> dict[str, Any]:
        return wait_for(
            lambda: (s := self.status(namespace, session)).get("phase") == phase and s,
            timeout,
            f"VaultSession {namespace}/{session} phase {phase}",
        )

    def events(self, namespace: str) -> builtins.list[dict[str, Any]]:
        return self.list("events", namespace)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """oshu_localkube's wait_for, with timeout and what positional (as these tests call it)."""
    return localkube_wait_for(predicate, timeout=timeout, what=what, interval=interval)


def real_value(prefix: str = "sk-real") -> str:
    """A unique, recognisable real secret value (the leak scans look for these)."""
    return f"{prefix}-{secrets.token_urlsafe(24)}"


def pod(
    name: str,
    session: str | None,
    containers: list[dict[str, Any]] | None = None,
    annotations: dict[str, str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if session is not None:
        meta["labels"] = {n.LABEL_SESSION: session}
    if annotations:
        meta["annotations"] = annotations
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"containers": containers or [{"name": "agent", "image": "agent:1"}], **spec},
    }
