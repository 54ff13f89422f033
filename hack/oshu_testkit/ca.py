"""A throwaway certificate authority on disk, for the test upstreams' TLS."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from oshu_contract.pki import CertificateAuthority, KeyPair, new_ca


@dataclass
class TestCA:
    """A throwaway CA; `cert_file`/`key_file` exist once `write()` has been called."""

    __test__ = False  # not a pytest test class
    pair: KeyPair
    cert_file: Path | None = None
    key_file: Path | None = None

    @classmethod
    def new(cls, name: str = "oshu test CA", permitted_dns: Iterable[str] | None = None) -> TestCA:
        return cls(new_ca(name, permitted_dns=permitted_dns))

    def write(self, directory: Path, stem: str = "ca") -> TestCA:
        directory.mkdir(parents=True, exist_ok=True)
        self.cert_file = directory / f"{stem}.crt"
        self.key_file = directory / f"{stem}.key"
        self.cert_file.write_bytes(self.pair.cert_pem)
        self.key_file.write_bytes(self.pair.key_pem)
        self.key_file.chmod(0o600)
        return self

    @property
    def cert_path(self) -> Path:
        """The CA certificate's file; the CA must have been written."""
        if self.cert_file is None:
            raise ValueError("the test CA has not been written yet (call write())")
        return self.cert_file

    def issue(self, names: Iterable[str]) -> KeyPair:
        return CertificateAuthority.from_pem(self.pair.cert_pem, self.pair.key_pem).issue_leaf(list(names))
