"""Securing the xDS port: TLS server credentials and which node ids a client certificate may claim.

With ``--xds-cert/--xds-key`` the xDS port speaks TLS; adding ``--xds-ca`` makes it mTLS: every
client must present a certificate signed by that CA, and a stream is served only for a node id
its certificate names. The rule (:func:`identities_allow`), checked on each stream's first
request, refusing with ``PERMISSION_DENIED``:

* ``node.id`` equals the certificate's subject CN, one of its DNS SANs, or one of its URI SANs;
* or equals the last path segment of a URI SAN (SPIFFE style:
  ``spiffe://example.org/waypost/node/edge-1`` allows ``edge-1``);
* a CN or DNS SAN containing ``*`` is a shell-style pattern over the whole node id
  (``edge-*`` allows ``edge-1`` and ``edge-eu-2``), for one certificate shared by a node pool.

A certificate that names no identity at all allows nothing.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import grpc
from cryptography import x509
from cryptography.x509.oid import NameOID

from waypost.xds.cache import NodeInfo

__all__ = ["NodeIdentity", "XdsTls", "authorize_node", "identities_allow", "peer_identity"]


@dataclass(frozen=True, kw_only=True)
class XdsTls:
    """Files of the xDS port's TLS: server certificate and key, and optionally the client CA."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key.read_bytes(), self.cert.read_bytes())],
            root_certificates=self.client_ca.read_bytes() if self.client_ca else None,
            require_client_auth=self.client_ca is not None,
        )


@dataclass(frozen=True)
class NodeIdentity:
    """The names a client certificate carries."""

    common_names: tuple[str, ...] = ()
    dns_names: tuple[str, ...] = ()
    uris: tuple[str, ...] = ()

    @classmethod
    def from_pem(cls, pem: bytes) -> NodeIdentity:
        cert = x509.load_pem_x509_certificate(pem)
        common_names = tuple(
            str(attr.value) for attr in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        )
        dns_names: tuple[str, ...] = ()
        uris: tuple[str, ...] = ()
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            pass
        else:
            dns_names = tuple(san.get_values_for_type(x509.DNSName))
            uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
        return cls(common_names=common_names, dns_names=dns_names, uris=uris)

    def describe(self) -> str:
        names = [*(f"CN={n}" for n in self.common_names), *(f"DNS:{n}" for n in self.dns_names)]
        names += [f"URI:{u}" for u in self.uris]
        return ", ".join(names) or "no names"


def identities_allow(identity: NodeIdentity, node_id: str) -> bool:
    """Whether a certificate with ``identity`` may receive config for ``node_id`` (module rule)."""
    for name in (*identity.common_names, *identity.dns_names):
        if name == node_id or ("*" in name and fnmatch.fnmatchcase(node_id, name)):
            return True
    for uri in identity.uris:
        if uri == node_id:
            return True
        segments = [s for s in urlsplit(uri).path.split("/") if s]
        if segments and segments[-1] == node_id:
            return True
    return False


def peer_identity(context: grpc.aio.ServicerContext) -> NodeIdentity | None:
    """The verified client certificate's names, or None when the peer presented none."""
    pems = context.auth_context().get("x509_pem_cert")
    if not pems:
        return None
    return NodeIdentity.from_pem(pems[0])


def authorize_node(context: grpc.aio.ServicerContext, node: NodeInfo) -> str | None:
    """The :class:`~waypost.xds.ads.AdsServer` authorizer for mTLS: None, or why not."""
    identity = peer_identity(context)
    if identity is None:
        return f"node {node.id!r}: no client certificate"
    if identities_allow(identity, node.id):
        return None
    return f"node {node.id!r} is not allowed by the client certificate ({identity.describe()})"
