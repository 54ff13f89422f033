"""Act as a ServiceAccount against the local cluster, with a real token.

kopf and kubernetes-asyncio ignore a kubeconfig's impersonation fields (`as`, `as-groups`), so
instead of impersonating, this asks the API server for a short-lived token of the account
(TokenRequest, what kubelet does for a pod) and writes a kubeconfig holding only that token:
the process using it has the account's permissions and nothing else, as in its pod.
"""

from __future__ import annotations

import base64
from pathlib import Path

import yaml

from oshu_localkube import LocalCluster


def service_account_kubeconfig(
    cluster: LocalCluster, namespace: str, name: str, path: Path, duration: str = "2h"
) -> Path:
    token = cluster.kubectl("-n", namespace, "create", "token", name, f"--duration={duration}").stdout.strip()
    if not token:
        raise RuntimeError(f"no token issued for ServiceAccount {namespace}/{name}")
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "local",
                "cluster": {
                    "server": cluster.server,
                    "certificate-authority-data": base64.b64encode(cluster.ca_cert.read_bytes()).decode(),
                },
            }
        ],
        "users": [{"name": f"{namespace}:{name}", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "local", "user": f"{namespace}:{name}"}}],
        "current-context": "sa",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path
