"""Route.cache -> Envoy's HTTP cache filter with the in-memory store.

Envoy caches what the upstream's Cache-Control allows (and serves it until stale, revalidating
with ETag / Last-Modified), keyed by host, path and query. The cache filter has no per-route
config of its own, so it cannot be switched on per route; instead every route of the gateway
that does not ask for caching switches it off, so nothing else is ever cached.
"""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.cache.v3 import cache_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.http.cache.simple_http_cache.v3 import config_pb2 as simple_cache_pb2

from waypost.policies.model import Gateway, Route
from waypost.xds.compiler.pb import pack

__all__ = ["CacheFeature"]

FILTER_NAME = "envoy.filters.http.cache"


class CacheFeature:
    filter_name = FILTER_NAME

    def applies(self, gateway: Gateway, routes: Sequence[Route]) -> bool:
        return any(route.cache for route in routes)

    def http_filter(self, gateway: Gateway, routes: Sequence[Route]) -> hcm_pb2.HttpFilter:
        config = cache_pb2.CacheConfig(typed_config=pack(simple_cache_pb2.SimpleHttpCacheConfig()))
        return hcm_pb2.HttpFilter(name=FILTER_NAME, typed_config=pack(config))

    def patch_route(self, route: Route, xds_route: route_components_pb2.Route) -> None:
        if not route.cache:
            disable = route_components_pb2.FilterConfig(disabled=True)
            xds_route.typed_per_filter_config[FILTER_NAME].CopyFrom(pack(disable))
