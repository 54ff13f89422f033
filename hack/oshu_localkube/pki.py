"""Fresh certificates for one local control plane: a cluster CA and the certs its parts use.

Every start makes new keys (EC P-256: fast to generate, accepted by etcd and every Kubernetes
component), so no credential outlives its cluster. Files are written 0600 into the state dir.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = timedelta(days=7)
BACKDATE = timedelta(minutes=5)  # tolerate clock skew between us and the components

#: Names the apiserver answers to; the in-cluster ones are in the cert as on a real cluster.
APISERVER_NAMES = (
    "127.0.0.1",
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)


FRONT_PROXY_CLIENT = "front-proxy-client"


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path


@dataclass(frozen=True)
class ClusterPKI:
    """Paths of everything :func:`create` wrote."""

    ca: CertFiles
    apiserver: CertFiles  # serving cert of kube-apiserver
    etcd: CertFiles  # etcd serving + peer cert (loopback only)
    apiserver_etcd_client: CertFiles  # kube-apiserver -> etcd
    admin: CertFiles  # system:masters, used by the kubeconfig we hand out
    controller_manager: CertFiles  # system:kube-controller-manager
    front_proxy_ca: CertFiles  # trusted for request-header authentication (aggregation layer)
    front_proxy_client: CertFiles  # the apiserver's identity when proxying to extension servers
    service_account_key: Path  # signs ServiceAccount tokens
    service_account_pub: Path  # verifies them
    node: NodePKI | None = None  # only for a cluster with a node (``create(node_name=...)``)


@dataclass(frozen=True)
class NodePKI:
    """Certificates of the node's components, all from the cluster CA."""

    kubelet_client: CertFiles  # system:node:<name> in system:nodes: the Node authorizer's identity
    kubelet_serving: CertFiles  # the kubelet's HTTPS endpoint, valid for the node IP only
    apiserver_kubelet_client: CertFiles  # kube-apiserver -> kubelet (logs, exec, port-forward)
    scheduler: CertFiles  # system:kube-scheduler
    kube_proxy: CertFiles  # system:kube-proxy (bootstrap binding system:node-proxier)
    coredns: CertFiles  # oshu:coredns, bound to a read-only role by the cluster at start


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def _general_name(value: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        return x509.DNSName(value)


def _write(path: Path, data: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """Signatures only (EC keys do not encipher); a CA also signs certificates and CRLs."""
    return x509.KeyUsage(
        digital_signature=True, key_cert_sign=ca, crl_sign=ca, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, encipher_only=False, decipher_only=False,
    )  # fmt: skip


class _Issuer:
    """The cluster CA while it signs this cluster's certificates (kept only in memory and on disk)."""

    def __init__(self, now: datetime, common_name: str) -> None:
        self.now = now
        self.key = _key()
        subject = _name(common_name, "oshu-vault")
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def issue(
        self,
        common_name: str,
        *,
        organization: str | None = None,
        names: tuple[str, ...] = (),
        server: bool = False,
        client: bool = False,
    ) -> tuple[bytes, bytes]:
        key = _key()
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] * server + [ExtendedKeyUsageOID.CLIENT_AUTH] * client
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name, organization))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.now - BACKDATE)
            .not_valid_after(self.now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        if names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False
            )
        return _cert_pem(builder.sign(self.key, hashes.SHA256())), _key_pem(key)


APISERVER_KUBELET_CLIENT = "kube-apiserver-kubelet-client"
COREDNS_USER = "oshu:coredns"


def create(
    directory: Path,
    *,
    service_ip: str = "10.96.0.1",
    extra_apiserver_names: tuple[str, ...] = (),
    node_name: str | None = None,
    node_ip: str | None = None,
) -> ClusterPKI:
    """Write a complete, fresh PKI for one cluster into ``directory``.

    With ``node_name`` and ``node_ip`` it also writes the node's certificates (:class:`NodePKI`).
    """
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    issuer = _Issuer(now, "oshu-localkube-ca")
    # A separate CA, as on kubeadm clusters: a cert from it lets its holder assert any user in
    # request headers, so no ordinary client certificate may come from it.
    front_proxy = _Issuer(now, "oshu-localkube-front-proxy-ca")

    def pair(stem: str, pems: tuple[bytes, bytes]) -> CertFiles:
        return CertFiles(_write(directory / f"{stem}.crt", pems[0]), _write(directory / f"{stem}.key", pems[1]))

    def ca_pair(stem: str, ca: _Issuer) -> CertFiles:
        return CertFiles(
            _write(directory / f"{stem}.crt", _cert_pem(ca.cert)), _write(directory / f"{stem}.key", _key_pem(ca.key))
        )

    ca = ca_pair("ca", issuer)
    sa_key = _key()
    node = None
    if node_name is not None and node_ip is not None:
        node = NodePKI(
            kubelet_client=pair(
                "kubelet-client", issuer.issue(f"system:node:{node_name}", organization="system:nodes", client=True)
            ),
            kubelet_serving=pair("kubelet-serving", issuer.issue(node_name, names=(node_ip,), server=True)),
            apiserver_kubelet_client=pair(
                "apiserver-kubelet-client", issuer.issue(APISERVER_KUBELET_CLIENT, client=True)
            ),
            scheduler=pair("scheduler", issuer.issue("system:kube-scheduler", client=True)),
            kube_proxy=pair("kube-proxy", issuer.issue("system:kube-proxy", client=True)),
            coredns=pair("coredns", issuer.issue(COREDNS_USER, client=True)),
        )
    apiserver_names = (*APISERVER_NAMES, service_ip, *extra_apiserver_names)
    return ClusterPKI(
        ca=ca,
        node=node,
        apiserver=pair("apiserver", issuer.issue("kube-apiserver", names=apiserver_names, server=True)),
        etcd=pair("etcd", issuer.issue("etcd", names=("127.0.0.1", "localhost"), server=True, client=True)),
        apiserver_etcd_client=pair("apiserver-etcd-client", issuer.issue("kube-apiserver-etcd-client", client=True)),
        admin=pair("admin", issuer.issue("oshu-admin", organization="system:masters", client=True)),
        controller_manager=pair("controller-manager", issuer.issue("system:kube-controller-manager", client=True)),
        front_proxy_ca=ca_pair("front-proxy-ca", front_proxy),
        front_proxy_client=pair("front-proxy-client", front_proxy.issue(FRONT_PROXY_CLIENT, client=True)),
        service_account_key=_write(directory / "sa.key", _key_pem(sa_key)),
        service_account_pub=_write(
            directory / "sa.pub",
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        ),
    )
