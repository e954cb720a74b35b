"""Gateway -> Envoy Listener: one HTTP connection manager fed by RDS, TLS via SDS when asked."""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.core.v3 import address_pb2, base_pb2, protocol_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2
from google.protobuf import wrappers_pb2

from waypost.policies.model import Gateway
from waypost.xds.compiler.features import HCM_HOOKS, HcmHook
from waypost.xds.compiler.names import listener_name, route_config_name, secret_name_ca, secret_name_cert
from waypost.xds.compiler.pb import ads_source, pack

__all__ = ["build_listener"]

_HCM = hcm_pb2.HttpConnectionManager


def build_listener(
    gateway: Gateway, http_filters: Sequence[hcm_pb2.HttpFilter], *, extra_hooks: Sequence[HcmHook] = ()
) -> listener_pb2.Listener:
    """``extra_hooks`` run after :data:`HCM_HOOKS`: settings that depend on where this policy is
    served from (the analytics collector's address), not on the policy alone."""
    hcm = _HCM(
        stat_prefix=gateway.name,
        codec_type=_HCM.AUTO,
        rds=hcm_pb2.Rds(config_source=ads_source(), route_config_name=route_config_name(gateway.name)),
        http_filters=[
            *http_filters,
            hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=pack(router_pb2.Router())),
        ],
        # An edge gateway: the peer address is the client, and x-forwarded-for is ours to set.
        use_remote_address=_bool(True),
        # Trusted proxies in front (Gateway.trusted_hops) decide which x-forwarded-for entry is the
        # client: what `client_ip` rate limits key on.
        xff_num_trusted_hops=gateway.trusted_hops,
        # Policies match normalized paths, so /a/../admin or //admin cannot slip past a rule.
        normalize_path=_bool(True),
        merge_slashes=True,
        path_with_escaped_slashes_action=_HCM.UNESCAPE_AND_REDIRECT,
        # Host normalization, so a host-scoped route (and its auth) cannot be skipped for a `*`
        # catch-all by spelling the host differently: `api.example.com:443` and
        # `api.example.com.` (a fully qualified name) are `api.example.com`. An empty port
        # (`api.example.com:`) is not a port to Envoy's stripping; the route configuration's
        # ignore_port_in_host_matching covers it (routes.py).
        strip_any_host_port=True,
        strip_trailing_host_dot=True,
        # Routes may remove the upstream's `server` header; Envoy must not re-add its own.
        server_header_transformation=_HCM.PASS_THROUGH,
    )
    for hook in (*HCM_HOOKS, *extra_hooks):
        hook(gateway, hcm)
    # After the hooks, which may set other protocol options. `x_user_id` is `x-user-id` to many
    # backends (CGI, nginx, Django), so an underscore header could smuggle a value past the
    # removal of identity headers or a header rule: refuse the request (400), as Envoy Gateway
    # does by default.
    hcm.common_http_protocol_options.headers_with_underscores_action = (
        protocol_pb2.HttpProtocolOptions.REJECT_REQUEST
    )
    chain = listener_components_pb2.FilterChain(
        filters=[
            listener_components_pb2.Filter(
                name="envoy.filters.network.http_connection_manager", typed_config=pack(hcm)
            )
        ]
    )
    if gateway.tls is not None:
        chain.transport_socket.CopyFrom(_downstream_tls(gateway))
    return listener_pb2.Listener(
        name=listener_name(gateway.name),
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address=gateway.address, port_value=gateway.port)
        ),
        filter_chains=[chain],
    )


def _downstream_tls(gateway: Gateway) -> base_pb2.TransportSocket:
    assert gateway.tls is not None
    common = tls_pb2.CommonTlsContext(
        tls_certificate_sds_secret_configs=[
            secret_pb2.SdsSecretConfig(name=secret_name_cert(gateway.name), sds_config=ads_source())
        ],
        alpn_protocols=["h2", "http/1.1"],
    )
    if gateway.tls.client_ca is not None:
        common.validation_context_sds_secret_config.CopyFrom(
            secret_pb2.SdsSecretConfig(name=secret_name_ca(gateway.name), sds_config=ads_source())
        )
    # Built after `common` is complete: the constructor copies it, later edits would be lost
    # (and require_client_certificate without a validation context lets every client in).
    context = tls_pb2.DownstreamTlsContext(common_tls_context=common)
    if gateway.tls.client_ca is not None:
        context.require_client_certificate.value = True
    return base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=pack(context))


def _bool(value: bool) -> wrappers_pb2.BoolValue:
    return wrappers_pb2.BoolValue(value=value)
