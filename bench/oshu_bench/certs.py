"""Test PKI for one benchmark run: an upstream CA + server cert, and a proxy CA.

Two CAs on purpose: clients going through a proxy trust only the proxy CA and
proxies trust only the upstream CA, so a proxy that skipped interception or
upstream verification would fail instead of looking fast.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pki:
    upstream_ca: Path  # CA that signed the upstream's certificate
    server_cert: Path
    server_key: Path
    proxy_ca: Path  # CA the proxies mint leaves from (EC P-256)
    proxy_ca_key: Path
    proxy_leaf_key: Path  # proxy.py signs every leaf over this one key


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o644)  # nginx workers drop privileges and must read it


def _ca(cn: str, key: ec.EllipticCurvePrivateKey, now: dt.datetime) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def make_pki(directory: Path, server_name: str) -> Pki:
    now = dt.datetime.now(dt.UTC)
    up_key = _key()
    up_ca = _ca("oshu-bench upstream CA", up_key, now)
    srv_key = _key()
    srv = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, server_name)]))
        .issuer_name(up_ca.subject)
        .public_key(srv_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(server_name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(up_key.public_key()), critical=False)
        .sign(up_key, hashes.SHA256())
    )
    px_key = _key()
    px_ca = _ca("oshu-bench proxy CA", px_key, now)

    pki = Pki(
        upstream_ca=directory / "upstream-ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        proxy_ca=directory / "proxy-ca.pem",
        proxy_ca_key=directory / "proxy-ca.key",
        proxy_leaf_key=directory / "proxy-leaf.key",
    )
    pem = serialization.Encoding.PEM
    pki.upstream_ca.write_bytes(up_ca.public_bytes(pem))
    pki.server_cert.write_bytes(srv.public_bytes(pem))
    _write_key(srv_key, pki.server_key)
    pki.proxy_ca.write_bytes(px_ca.public_bytes(pem))
    _write_key(px_key, pki.proxy_ca_key)
    _write_key(_key(), pki.proxy_leaf_key)
    return pki
