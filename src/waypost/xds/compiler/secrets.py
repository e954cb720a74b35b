"""Gateway.tls files -> Envoy SDS Secrets: the serving certificate and the client CA."""

from __future__ import annotations

from collections.abc import Mapping

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2

from waypost.policies.model import Gateway
from waypost.xds.compiler.names import secret_name_ca, secret_name_cert

__all__ = ["build_secrets"]


def build_secrets(gateway: Gateway, files: Mapping[str, bytes]) -> tuple[secret_pb2.Secret, ...]:
    if gateway.tls is None:
        return ()
    secrets = [
        secret_pb2.Secret(
            name=secret_name_cert(gateway.name),
            tls_certificate=common_pb2.TlsCertificate(
                certificate_chain=base_pb2.DataSource(inline_bytes=bytes(files[gateway.tls.cert])),
                private_key=base_pb2.DataSource(inline_bytes=bytes(files[gateway.tls.key])),
            ),
        )
    ]
    if gateway.tls.client_ca is not None:
        secrets.append(
            secret_pb2.Secret(
                name=secret_name_ca(gateway.name),
                validation_context=common_pb2.CertificateValidationContext(
                    trusted_ca=base_pb2.DataSource(inline_bytes=bytes(files[gateway.tls.client_ca]))
                ),
            )
        )
    return tuple(secrets)
