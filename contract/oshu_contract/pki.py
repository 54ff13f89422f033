"""Certificates: the session CA (made by the operator) and leaf certificates (minted by the sidecar).

One home for key types, validity and extensions so the operator's CA and the sidecar's
leaves always fit together. All functions are synchronous and CPU-bound: the sidecar
calls `issue_leaf` in an executor, never on the event loop.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Clock skew tolerated between the minting process and clients.
BACKDATE = timedelta(minutes=5)
DEFAULT_CA_VALIDITY = timedelta(days=30)
DEFAULT_LEAF_VALIDITY = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A certificate with its private key, both PEM-encoded."""

    cert_pem: bytes
    key_pem: bytes = b""

    def __repr__(self) -> str:  # never print key material
        return f"KeyPair(cert={len(self.cert_pem)}B, key={'set' if self.key_pem else 'none'})"


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, now: datetime, not_after: datetime
) -> x509.CertificateBuilder:
    """What every certificate here starts with: names, public key, a random serial, backdated validity."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
    )


def _key_usage(signs_certificates: bool) -> x509.KeyUsage:
    """Digital signature always; certificate and CRL signing for the CA only."""
    return x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )


def new_ca(
    common_name: str,
    validity: timedelta = DEFAULT_CA_VALIDITY,
    permitted_dns: Iterable[str] | None = None,
    now: datetime | None = None,
) -> KeyPair:
    """A fresh EC P-256 CA that may only sign leaves (pathLen 0).

    With `permitted_dns`, the CA is name-constrained to those DNS subtrees, so a
    leaked session CA cannot impersonate hosts outside its session.
    """
    now = now or datetime.now(UTC)
    key = _new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "oshu-vault"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
        ]
    )
    builder = (
        _builder(name, name, key, now, now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signs_certificates=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if permitted_dns is not None:
        subtrees = [x509.DNSName(d) for d in sorted(set(permitted_dns))]
        builder = builder.add_extension(
            x509.NameConstraints(permitted_subtrees=subtrees, excluded_subtrees=None), critical=True
        )
    cert = builder.sign(key, hashes.SHA256())
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


#: Size of the throwaway RSA key a Google service-account session gives its agent (RS256, as Google's).
RSA_BITS = 2048


def new_rsa_key_pem(bits: int = RSA_BITS) -> bytes:
    """A fresh RSA private key (PKCS#8 PEM): the throwaway key an agent's service-account JSON holds."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def rsa_public_pem(private_pem: bytes) -> bytes:
    """The public half (SubjectPublicKeyInfo PEM) of an RSA private key; ValueError for anything
    else (the message never quotes the key)."""
    try:
        key = serialization.load_pem_private_key(private_pem, password=None)
    except (ValueError, TypeError):
        raise ValueError("not an unencrypted PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("not an RSA private key")
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    """A loaded CA, ready to sign leaves."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey | object

    @classmethod
    def from_pem(cls, cert_pem: bytes, key_pem: bytes) -> CertificateAuthority:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
        if cert.public_key().public_numbers() != key.public_key().public_numbers():  # type: ignore[union-attr]
            raise ValueError("CA certificate and key do not belong together")
        return cls(cert=cert, key=key)

    def issue_leaf(
        self, names: Iterable[str], validity: timedelta = DEFAULT_LEAF_VALIDITY, now: datetime | None = None
    ) -> KeyPair:
        """Mint a server leaf (EC P-256) for `names`; validity never outlives the CA."""
        names = list(dict.fromkeys(names))
        if not names:
            raise ValueError("a leaf needs at least one name")
        now = now or datetime.now(UTC)
        not_after = min(now + validity, self.cert.not_valid_after_utc)
        key = _new_key()
        cn = names[0][:64]
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        cert = (
            _builder(subject, self.cert.subject, key, now, not_after)
            .add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(signs_certificates=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.cert.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
            .sign(self.key, hashes.SHA256())  # type: ignore[arg-type]
        )
        return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))

    @property
    def not_after(self) -> datetime:
        return self.cert.not_valid_after_utc
