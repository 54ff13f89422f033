"""Fake but well-formed real material for the non-static kinds, and every text form it could leak in.

The values are random per call (a test that finds one in clear found a real leak, not a
constant another test put there). A Google key is a real RSA key, so signatures made with
it verify; its service-account JSON has the fields Google's key files have.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


@dataclass(frozen=True)
class AwsKey:
    access_key_id: str = field(default_factory=lambda: "AKIA" + secrets.token_hex(8).upper())
    secret_access_key: str = field(default_factory=lambda: secrets.token_urlsafe(30))
    session_token: str = field(default_factory=lambda: "IQoJb3JpZ2luX2VjE" + secrets.token_urlsafe(60))

    def fields(self, with_token: bool = True) -> dict[str, str]:
        out = {"accessKeyId": self.access_key_id, "secretAccessKey": self.secret_access_key}
        if with_token:
            out["sessionToken"] = self.session_token
        return out

    def values(self) -> list[str]:
        return [self.access_key_id, self.secret_access_key, self.session_token]


@dataclass(frozen=True)
class OAuth2Client:
    token_url: str = "https://auth.oshu.test/oauth/token"
    client_id: str = field(default_factory=lambda: "client-" + secrets.token_hex(6))
    client_secret: str = field(default_factory=lambda: "cs-" + secrets.token_urlsafe(24))
    refresh_token: str = field(default_factory=lambda: "rt-" + secrets.token_urlsafe(24))

    def fields(self, refresh: bool = False) -> dict[str, str]:
        out = {"tokenUrl": self.token_url, "clientId": self.client_id, "clientSecret": self.client_secret}
        if refresh:
            out["refreshToken"] = self.refresh_token
        return out

    def values(self) -> list[str]:
        return [self.client_secret, self.refresh_token]


@dataclass(frozen=True)
class GoogleServiceAccount:
    """A service account with a real RSA key (2048 bits, as Google's)."""

    private_key_pem: str = field(default_factory=lambda: _rsa_pem())
    private_key_id: str = field(default_factory=lambda: secrets.token_hex(20))
    client_email: str = "agent@oshu-test.iam.gserviceaccount.com"
    token_uri: str = "https://oauth2.googleapis.com/token"
    project_id: str = "oshu-test"

    def key_file(self) -> dict[str, Any]:
        return {
            "type": "service_account",
            "project_id": self.project_id,
            "private_key_id": self.private_key_id,
            "private_key": self.private_key_pem,
            "client_email": self.client_email,
            "client_id": "109876543210987654321",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_uri,
            "universe_domain": "googleapis.com",
        }

    def public_pem(self) -> bytes:
        key = serialization.load_pem_private_key(self.private_key_pem.encode(), None)
        return key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def values(self) -> list[str]:
        """The PEM, its id, and each base64 line of the PEM body (a partial copy is a leak too)."""
        body = [ln for ln in self.private_key_pem.splitlines() if ln and not ln.startswith("-----")]
        return [self.private_key_pem, self.private_key_id, *body]


def _rsa_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def leak_forms(values: list[str]) -> list[bytes]:
    """Byte forms a value could sit in, in a file or a log: raw, JSON-escaped, base64."""
    out: set[bytes] = set()
    for v in values:
        raw = v.encode()
        out |= {raw, v.replace("\n", "\\n").encode(), base64.b64encode(raw)}
    return sorted(out)
