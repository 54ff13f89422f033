"""TLS for the webhook endpoint: a self-made CA and serving certificate (cryptography only).

Two uses: --dev-webhook mints a throwaway pair for 127.0.0.1 at each start; in a cluster
with self-managed TLS the pair lives in a Secret, shared by replicas and reused until it
nears expiry. The API server trusts the CA through the webhook's caBundle.
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from kubernetes_asyncio.client.exceptions import ApiException

from oshu_contract.pki import CertificateAuthority, new_ca

from .kube import Kube
from .material import utcnow
from .names import LABEL_MANAGED_BY, MANAGED_BY

log = logging.getLogger(__name__)

SERVING_VALIDITY = timedelta(days=365)
CA_VALIDITY = timedelta(days=3650)
RENEW_BEFORE = timedelta(days=30)


@dataclass(frozen=True, slots=True)
class ServingCert:
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    def __repr__(self) -> str:
        return "ServingCert(...)"

    def write(self, directory: Path) -> tuple[Path, Path]:
        """Write cert chain and key (0600) for kopf's WebhookServer; returns (certfile, keyfile)."""
        directory.mkdir(parents=True, exist_ok=True)
        cert, key = directory / "tls.crt", directory / "tls.key"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(self.key_pem)
        cert.write_bytes(self.cert_pem + self.ca_pem)
        return cert, key


def mint(names: Iterable[str]) -> ServingCert:
    names = list(names)
    ca = new_ca("oshu-vault webhook CA", validity=CA_VALIDITY)
    leaf = CertificateAuthority.from_pem(ca.cert_pem, ca.key_pem).issue_leaf(names, validity=SERVING_VALIDITY)
    return ServingCert(ca.cert_pem, leaf.cert_pem, leaf.key_pem)


def _still_good(cert_pem: bytes, names: Iterable[str]) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    have = {str(v) for v in sans.get_values_for_type(x509.DNSName)}
    have |= {str(v) for v in sans.get_values_for_type(x509.IPAddress)}
    return set(names) <= have and cert.not_valid_after_utc - utcnow() > RENEW_BEFORE


def service_names(service: str, namespace: str) -> list[str]:
    return [f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local", f"{service}.{namespace}", service]


async def ensure_in_secret(
    kube: Kube, namespace: str, name: str, names: list[str], owner: dict[str, Any] | None = None
) -> ServingCert:
    """The serving pair from Secret namespace/name, (re)made if missing, expiring or for other names.

    `owner` (an ownerReference, e.g. to the chart's webhook configuration) makes the garbage
    collector delete the Secret with it, so uninstalling leaves no certificate behind.
    """
    for _ in range(5):
        secret = await kube.get_secret(namespace, name)
        data = (secret or {}).get("data") or {}
        try:
            pair = ServingCert(*(base64.b64decode(data[k]) for k in ("ca.crt", "tls.crt", "tls.key")))
            if _still_good(pair.cert_pem, names):
                return pair
        except (KeyError, ValueError):
            pass
        pair = mint(names)
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {LABEL_MANAGED_BY: MANAGED_BY},
                **({"ownerReferences": [owner]} if owner else {}),
            },
            "data": {
                k: base64.b64encode(v).decode()
                for k, v in (("ca.crt", pair.ca_pem), ("tls.crt", pair.cert_pem), ("tls.key", pair.key_pem))
            },
        }
        try:
            if secret is None:
                await kube.create_secret(namespace, body)
            else:
                body["metadata"]["resourceVersion"] = secret["metadata"]["resourceVersion"]
                await kube.replace_secret(namespace, name, body)
            log.info("webhook serving certificate issued", extra={"secret": f"{namespace}/{name}"})
            return pair
        except ApiException as e:
            if e.status != 409:
                raise
            # Another replica won the race: read theirs.
    raise RuntimeError(f"could not settle the webhook certificate in Secret {namespace}/{name}")
