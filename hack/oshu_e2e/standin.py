"""A local HTTPS stand-in of a paid API, run in the cluster as a pod and two Services.

``api-standin.<ns>.svc.cluster.local`` is the API a session allows; ``other-api.<ns>...`` leads
to the same pod but is a host the session does not allow, so anything that reached the pod under
that name would show in its log. The server (``standin_server.py``) logs every request it gets
as a JSON line; :func:`requests_seen` reads them back with ``kubectl logs``.

Its certificate comes from a CA of its own (name-constrained to ``cluster.local``, kept in the
cache so the sidecar image that trusts it is built once): nothing else trusts it, so the
sidecar reaches it only because its image was given that CA (see oshu_images).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

from oshu_contract.pki import CertificateAuthority, KeyPair, new_ca
from oshu_localkube.build import cache_dir

Doc = dict[str, Any]
NAME = "api-standin"
OTHER = "other-api"
PORT = 8443
SERVER_SOURCE = Path(__file__).with_name("standin_server.py")
CRED_SOURCE = Path(__file__).with_name("standin_cred.py")


class Kubectl(Protocol):
    def kubectl(self, *args: str, **kwargs: Any) -> Any: ...


def ca(directory: Path | None = None) -> KeyPair:
    """The stand-in's CA, made once and kept (key 0600) under the cache directory."""
    directory = directory or cache_dir() / "e2e" / "standin-ca"
    cert, key = directory / "ca.crt", directory / "ca.key"
    if cert.is_file() and key.is_file():
        return KeyPair(cert.read_bytes(), key.read_bytes())
    pair = new_ca("oshu-vault e2e API stand-in CA", validity=timedelta(days=3650), permitted_dns=["cluster.local"])
    directory.mkdir(parents=True, exist_ok=True)
    tmp_key, tmp_cert = directory / "ca.key.tmp", directory / "ca.crt.tmp"
    tmp_key.write_bytes(pair.key_pem)
    tmp_key.chmod(0o600)
    tmp_cert.write_bytes(pair.cert_pem)
    tmp_key.replace(key)  # key first: a cert on disk always has its key
    tmp_cert.replace(cert)
    return pair


def host(namespace: str, name: str = NAME, domain: str = "cluster.local") -> str:
    return f"{name}.{namespace}.svc.{domain}"


def manifests(
    namespace: str,
    image: str,
    pull_policy: str = "IfNotPresent",
    domain: str = "cluster.local",
    *,
    service_names: Sequence[str] = (NAME, OTHER),
    config: Mapping[str, Any] | None = None,
) -> list[Doc]:
    """TLS Secret, code ConfigMap, the pod and its Services (``service_names``: Services that
    all lead to the pod, each in its certificate). ``config``: real credentials the stand-in checks
    (standin_cred.py), in a Secret of their own, never in the ConfigMap."""
    names = [host(namespace, n, domain) for n in service_names]  # the CA may sign only under cluster.local
    leaf = CertificateAuthority.from_pem(*_ca_pem()).issue_leaf(names, validity=timedelta(days=2))
    labels = {"app.kubernetes.io/name": NAME}
    pod: Doc = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": NAME, "namespace": namespace, "labels": labels},
        "spec": {
            "automountServiceAccountToken": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 1000,
                "runAsGroup": 1000,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "api",
                    "image": image,
                    "imagePullPolicy": pull_policy,
                    "command": ["python3", "-u", "/code/standin_server.py"],
                    "env": [{"name": "PORT", "value": str(PORT)}],
                    "ports": [{"containerPort": PORT, "name": "https"}],
                    "readinessProbe": {"tcpSocket": {"port": PORT}, "periodSeconds": 1},
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "volumeMounts": [
                        {"name": "tls", "mountPath": "/tls", "readOnly": True},
                        {"name": "code", "mountPath": "/code", "readOnly": True},
                    ],
                }
            ],
            "volumes": [
                {"name": "tls", "secret": {"secretName": f"{NAME}-tls", "defaultMode": 0o444}},
                {"name": "code", "configMap": {"name": f"{NAME}-code"}},
            ],
        },
    }
    services = [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": n, "namespace": namespace},
            "spec": {"selector": labels, "ports": [{"name": "https", "port": 443, "targetPort": PORT}]},
        }
        for n in service_names
    ]
    if config is not None:
        pod["spec"]["containers"][0]["env"].append({"name": "STANDIN_CONFIG", "value": "/config/config.json"})
        pod["spec"]["containers"][0]["volumeMounts"].append(
            {"name": "config", "mountPath": "/config", "readOnly": True}
        )
        pod["spec"]["volumes"].append(
            {"name": "config", "secret": {"secretName": f"{NAME}-config", "defaultMode": 0o444}}
        )
    extra = [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": f"{NAME}-config", "namespace": namespace},
            "stringData": {"config.json": json.dumps(config)},
        }
    ]
    return [
        *(extra if config is not None else []),
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": {"name": f"{NAME}-tls", "namespace": namespace},
            "data": {
                "tls.crt": base64.b64encode(leaf.cert_pem).decode(),
                "tls.key": base64.b64encode(leaf.key_pem).decode(),
            },
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"{NAME}-code", "namespace": namespace},
            "data": {"standin_server.py": SERVER_SOURCE.read_text(), "standin_cred.py": CRED_SOURCE.read_text()},
        },
        pod,
        *services,
    ]


def _ca_pem() -> tuple[bytes, bytes]:
    pair = ca()
    return pair.cert_pem, pair.key_pem


def requests_seen(kube: Kubectl, namespace: str) -> list[dict[str, Any]]:
    """Every request the stand-in received so far (oldest first)."""
    out = kube.kubectl("-n", namespace, "logs", NAME, "-c", "api").stdout
    seen = []
    for line in out.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if "method" in record:
            seen.append(record)
    return seen


def header(record: dict[str, Any], name: str) -> str | None:
    for key, value in record["headers"]:
        if key.lower() == name.lower():
            return value
    return None


def credential(record: dict[str, Any]) -> str | None:
    """The credential a request carried: x-api-key, a Bearer token or a Basic password."""
    if (value := header(record, "x-api-key")) is not None:
        return value
    auth = header(record, "authorization") or ""
    scheme, _, rest = auth.partition(" ")
    if scheme.lower() == "bearer":
        return rest.strip()
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(rest.strip()).decode().partition(":")[2]
        except ValueError:
            return None
    return None
