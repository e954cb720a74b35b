"""The names a resource refers to (clusters, route tables, SDS secrets), by walking its protobuf.

A snapshot is consistent when every name its resources refer to is carried
(:meth:`~waypost.xds.snapshot.Snapshot.build` checks it); the ADS server keeps clusters on a node
until it has acked the routes that stop naming them. Walked once per message object (see
:meth:`~waypost.xds.encoding.ResourceEncoder.references`).
"""

from __future__ import annotations

from envoy.config.route.v3 import route_pb2
from google.protobuf import any_pb2, message, symbol_database

__all__ = ["References"]


_SYMBOLS = symbol_database.Default()


class References:
    """Collects the names a set of resources refers to, by walking their protobuf trees."""

    def __init__(self) -> None:
        self.clusters: set[str] = set()
        self.route_configs: set[str] = set()
        self.secrets: set[str] = set()
        self.eds_clusters: set[str] = set()

    def merge(self, other: References) -> None:
        self.clusters |= other.clusters
        self.route_configs |= other.route_configs
        self.secrets |= other.secrets

    def walk_route_configuration(self, config: route_pb2.RouteConfiguration) -> None:
        # Specialised for speed: route tables are by far the largest resources.
        for vhost in config.virtual_hosts:
            for route in vhost.routes:
                if route.HasField("route"):
                    action = route.route
                    if action.cluster:
                        self.clusters.add(action.cluster)
                    for weighted in action.weighted_clusters.clusters:
                        self.clusters.add(weighted.name)
                    for mirror in action.request_mirror_policies:
                        self.clusters.add(mirror.cluster)
                for packed in route.typed_per_filter_config.values():
                    self.walk(packed)

    def walk(self, msg: message.Message) -> None:
        if isinstance(msg, any_pb2.Any):
            inner = _unpack(msg)
            if inner is not None:
                self.walk(inner)
            return
        name = msg.DESCRIPTOR.full_name
        if name == "envoy.extensions.filters.network.http_connection_manager.v3.Rds":
            self.route_configs.add(msg.route_config_name)
        elif name == "envoy.extensions.transport_sockets.tls.v3.SdsSecretConfig":
            if msg.HasField("sds_config"):  # an SDS secret from a file path is not ours to serve
                self.secrets.add(msg.name)
            return
        elif name == "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz":
            # The filter-level service is a default no route uses: every route disables the filter
            # or names its own service per route (walked with the route table), and the listener
            # must not change with auth (issue 12), so its cluster is carried only when a route
            # needs it. Envoy accepts the listener without it (tests/test_e2e_auth_rollout.py).
            return
        elif name == "envoy.config.core.v3.GrpcService.EnvoyGrpc":
            self.clusters.add(msg.cluster_name)
        elif name == "envoy.config.core.v3.HttpUri":
            self.clusters.add(msg.cluster)
        elif name == "envoy.config.route.v3.RouteConfiguration":
            assert isinstance(msg, route_pb2.RouteConfiguration)
            self.walk_route_configuration(msg)
            return
        for field, value in msg.ListFields():
            if field.message_type is None:
                continue
            if field.is_repeated:
                if field.message_type.GetOptions().map_entry:
                    for item in value.values():
                        if isinstance(item, message.Message):
                            self.walk(item)
                else:
                    for item in value:
                        self.walk(item)
            else:
                self.walk(value)


def _unpack(packed: any_pb2.Any) -> message.Message | None:
    try:
        cls = _SYMBOLS.GetSymbol(packed.TypeName())
    except KeyError:
        return None
    inner = cls()
    packed.Unpack(inner)
    return inner
