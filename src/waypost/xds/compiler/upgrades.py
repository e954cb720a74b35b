"""Route.websocket and Route.grpc_web: protocols browsers speak beside plain HTTP.

- ``websocket: true`` -> the route allows the WebSocket upgrade (``upgrade_configs``). The upgrade
  request passes through the whole filter chain first, so auth, screening and rate limits apply
  to it like to any request. The route timeout is switched off (it would cut a healthy socket)
  unless the Route sets one, and the stream idle timeout becomes :data:`WEBSOCKET_IDLE_MS`.
- ``grpc_web: true`` -> Envoy's gRPC-Web filter on the gateway: it turns a browser's gRPC-Web call
  into gRPC for the backend and back. The filter takes no per-route config, so it is on for the
  whole gateway once one route asks; it touches only ``application/grpc-web*`` requests.
"""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.grpc_web.v3 import grpc_web_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from waypost.policies.model import Gateway, Route
from waypost.xds.compiler.pb import duration, pack

__all__ = ["GRPC_WEB_FILTER", "WEBSOCKET_IDLE_MS", "GrpcWebFeature", "patch_websocket"]

GRPC_WEB_FILTER = "envoy.filters.http.grpc_web"
WEBSOCKET_IDLE_MS = 3_600_000


def patch_websocket(route: Route, xds_route: route_components_pb2.Route) -> None:
    if not route.websocket or not xds_route.HasField("route"):
        return
    action = xds_route.route
    action.upgrade_configs.append(route_components_pb2.RouteAction.UpgradeConfig(upgrade_type="websocket"))
    if route.timeout is None:
        action.timeout.CopyFrom(duration(0))
    action.idle_timeout.CopyFrom(duration(WEBSOCKET_IDLE_MS))


class GrpcWebFeature:
    filter_name = GRPC_WEB_FILTER

    def applies(self, gateway: Gateway, routes: Sequence[Route]) -> bool:
        return any(route.grpc_web for route in routes)

    def http_filter(self, gateway: Gateway, routes: Sequence[Route]) -> hcm_pb2.HttpFilter:
        return hcm_pb2.HttpFilter(name=GRPC_WEB_FILTER, typed_config=pack(grpc_web_pb2.GrpcWeb()))

    def patch_route(self, route: Route, xds_route: route_components_pb2.Route) -> None:
        return None
