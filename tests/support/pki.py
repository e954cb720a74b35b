"""A throwaway certificate authority for TLS tests, generated in the test (``cryptography``).

>>> ca = TestCA.create(tmp_path / "pki")
>>> server = ca.issue("localhost", dns=["localhost"], ips=["127.0.0.1"])
>>> server.cert_path, server.key_path, ca.cert_path

EC P-256 keys keep generation fast; every file is PEM.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Issued", "TestCA"]


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass(frozen=True)
class Issued:
    cert_pem: bytes
    key_pem: bytes
    cert_path: Path
    key_path: Path
    serial: int


class TestCA:
    __test__ = False  # not a pytest test class

    def __init__(
        self, directory: Path, name: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate
    ) -> None:
        self.dir = directory
        self.name = name
        self.key = key
        self.cert = cert
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        self.cert_path = directory / f"{name}.pem"
        self.cert_path.write_bytes(self.cert_pem)

    @classmethod
    def create(cls, directory: Path, name: str = "test-ca") -> TestCA:
        directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(directory, name, key, cert)

    def issue(
        self,
        common_name: str,
        *,
        dns: Sequence[str] = (),
        ips: Sequence[str] = (),
        uris: Sequence[str] = (),
        client: bool = False,
        both: bool = False,
        file_stem: str | None = None,
        directory: Path | None = None,
    ) -> Issued:
        """A leaf certificate for a server (default), a client, or ``both`` (a mesh sidecar's),
        written as ``STEM.pem`` and ``STEM-key.pem`` into ``directory`` (default: the CA's)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        names += [x509.UniformResourceIdentifier(u) for u in uris]
        serial = x509.random_serial_number()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                    if both
                    else [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
                ),
                critical=False,
            )
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        stem = file_stem or common_name.replace("/", "_").replace(":", "_")
        out = directory or self.dir
        out.mkdir(parents=True, exist_ok=True)
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        key_pem = _key_pem(key)
        cert_path, key_path = out / f"{stem}.pem", out / f"{stem}-key.pem"
        cert_path.write_bytes(cert_pem)
        key_path.write_bytes(key_pem)
        return Issued(cert_pem, key_pem, cert_path, key_path, serial)
