"""Service.tls -> TLS origination to upstream endpoints (a cluster transport socket).

The CA bundle is public and travels inline in the cluster; a client certificate and its private
key travel as an SDS secret (``<service>/client-cert``) so that they are redacted wherever
resources are rendered, like the Gateway's serving certificate.
"""

from __future__ import annotations

from collections.abc import Mapping

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2

from waypost.policies.model import Service
from waypost.xds.compiler.names import secret_name_upstream_cert
from waypost.xds.compiler.pb import ads_source, pack

__all__ = ["build_service_secrets", "patch_cluster_tls"]


def patch_cluster_tls(service: Service, cluster: cluster_pb2.Cluster, files: Mapping[str, bytes]) -> None:
    tls = service.tls
    if tls is None:
        return
    validation = common_pb2.CertificateValidationContext(
        trusted_ca=base_pb2.DataSource(inline_bytes=bytes(files[tls.ca]))
    )
    if tls.sni is not None:
        # Verify the name we asked for: a certificate for another host signed by the same CA
        # must not be accepted.
        validation.match_typed_subject_alt_names.append(
            common_pb2.SubjectAltNameMatcher(
                san_type=common_pb2.SubjectAltNameMatcher.DNS, matcher=string_pb2.StringMatcher(exact=tls.sni)
            )
        )
    common = tls_pb2.CommonTlsContext(validation_context=validation)
    if service.protocol in ("http2", "grpc"):
        common.alpn_protocols.append("h2")
    if tls.cert is not None:
        common.tls_certificate_sds_secret_configs.append(
            secret_pb2.SdsSecretConfig(name=secret_name_upstream_cert(service.name), sds_config=ads_source())
        )
    context = tls_pb2.UpstreamTlsContext(common_tls_context=common, sni=tls.sni or "")
    cluster.transport_socket.CopyFrom(
        base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=pack(context))
    )


def build_service_secrets(service: Service, files: Mapping[str, bytes]) -> tuple[secret_pb2.Secret, ...]:
    tls = service.tls
    if tls is None or tls.cert is None or tls.key is None:
        return ()
    return (
        secret_pb2.Secret(
            name=secret_name_upstream_cert(service.name),
            tls_certificate=common_pb2.TlsCertificate(
                certificate_chain=base_pb2.DataSource(inline_bytes=bytes(files[tls.cert])),
                private_key=base_pb2.DataSource(inline_bytes=bytes(files[tls.key])),
            ),
        ),
    )
