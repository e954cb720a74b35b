"""Certificates and private keys checked at load the way Envoy will read them.

Envoy parses the PEM files a Gateway or Service names when the secret arrives, and refuses the
whole update (a NACK, seen only in Envoy's answer) when a block does not decode, a key is
encrypted, or the key does not belong to the certificate. These checks parse with
``cryptography`` instead, so each of those is a ``file:line`` error of the policy that names the
file. Pure: bytes in, a reason or None out.
"""

from __future__ import annotations

import re

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import types as key_types

__all__ = ["certificate_problem", "key_mismatch_problem", "private_key_problem"]

_DETAIL_RE = re.compile(r"\b(InvalidData|ASN1|MalformedFraming|\w+Error)\b.*")


def certificate_problem(shown: str, data: bytes) -> str | None:
    """Why the certificates (a chain or a CA bundle) in ``data`` would not load, or None."""
    if b"-----BEGIN" not in data:
        return f"{shown} is not a PEM file (no '-----BEGIN' line)"
    if b"-----BEGIN CERTIFICATE-----" not in data:
        return f"{shown} holds no PEM certificate ('-----BEGIN CERTIFICATE-----')"
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        return f"{shown} holds a certificate that does not parse{_detail(exc)}"
    return None


def private_key_problem(shown: str, data: bytes) -> str | None:
    """Why the private key in ``data`` would not load (unencrypted PEM, as Envoy needs), or None."""
    if b"-----BEGIN" not in data:
        return f"{shown} is not a PEM file (no '-----BEGIN' line)"
    if b"PRIVATE KEY-----" not in data:
        return f"{shown} holds no PEM private key ('-----BEGIN ... PRIVATE KEY-----')"
    try:
        serialization.load_pem_private_key(data, password=None)
    except TypeError:
        return f"{shown} holds an encrypted private key; Envoy needs it unencrypted"
    except (ValueError, UnsupportedAlgorithm) as exc:
        return f"{shown} holds a private key that does not parse{_detail(exc)}"
    return None


def key_mismatch_problem(shown_key: str, cert_data: bytes, key_data: bytes) -> str | None:
    """When both parse: why the key is not the certificate's (the first, the leaf), or None."""
    try:
        leaf = x509.load_pem_x509_certificates(cert_data)[0]
        key: key_types.PrivateKeyTypes = serialization.load_pem_private_key(key_data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None  # reported by the checks above
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    ours = key.public_key().public_bytes(serialization.Encoding.DER, spki)
    theirs = leaf.public_key().public_bytes(serialization.Encoding.DER, spki)
    if ours != theirs:
        return f"{shown_key} is not the private key of the certificate (their public keys differ)"
    return None


def _detail(exc: Exception) -> str:
    found = _DETAIL_RE.search(str(exc))
    return f" ({found.group(0)[:120]})" if found else ""
