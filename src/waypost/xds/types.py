"""xDS resource type URLs and the order in which ADS pushes them."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["PUSH_ORDER", "WILDCARD_TYPES", "TypeUrl"]


class TypeUrl(StrEnum):
    CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
    SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
    LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
    ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"

    @property
    def short(self) -> str:
        return _SHORT[self]


_SHORT = {
    TypeUrl.CLUSTER: "cds",
    TypeUrl.ENDPOINT: "eds",
    TypeUrl.SECRET: "sds",
    TypeUrl.LISTENER: "lds",
    TypeUrl.ROUTE: "rds",
}

# Why this order: Envoy must know a cluster (and its endpoints) before a route can send traffic to
# it, and a listener's secrets before it can serve TLS. Pushing CDS, EDS, SDS, then LDS, RDS means
# no request ever meets a route that names a cluster Envoy does not have yet. Removals run the
# other way round (see stream.py): a cluster goes only once no acked route refers to it.
PUSH_ORDER: tuple[TypeUrl, ...] = (
    TypeUrl.CLUSTER,
    TypeUrl.ENDPOINT,
    TypeUrl.SECRET,
    TypeUrl.LISTENER,
    TypeUrl.ROUTE,
)

# Envoy subscribes to these by wildcard (everything the node should have); the others by name.
WILDCARD_TYPES = frozenset({TypeUrl.CLUSTER, TypeUrl.LISTENER})
