"""Route.validation and ``Route.screen.body`` -> an ext_authz filter that sends bodies to waypost.

A second ext_authz filter (:data:`BODY_CHECK_FILTER`), separate from the auth filter: it runs
after authentication and rate limits (a request that would get 401 or 429 costs no body
buffering), and it is configured per route, so only routes that validate or screen bodies buffer
a body and call the decision service; every other route disables it and costs nothing.

On a checked route Envoy buffers the body up to the route's cap (larger: 413 before any call),
and sends it as bytes with the headers; ``context_extensions`` carry ``check: <route>`` so the
decision service picks the route's compiled checks (:mod:`waypost.filters.protect`). Its answer
is a 400 (validation), 403 (screening) or an allow. Why ext_authz and not ext_proc: one unary
call per request on the decision service's existing gRPC port, with Envoy doing the buffering
and the size cap; ext_proc would open a bidirectional stream per request for the same exchange.
"""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.core.v3 import config_source_pb2, grpc_service_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.type.v3 import http_status_pb2

from waypost.contract import AUTHZ_CLUSTER, BODY_CHECK_EXTENSION
from waypost.policies.model import Gateway, Route
from waypost.xds.compiler.pb import duration, pack

__all__ = ["BODY_CHECK_FILTER", "CHECK_EXTENSION", "BodyCheckFeature", "body_cap", "checks_body"]

BODY_CHECK_FILTER = "waypost.body_checks"
CHECK_EXTENSION = BODY_CHECK_EXTENSION
_TIMEOUT_MS = 1000


def checks_body(route: Route) -> bool:
    return route.validation is not None or (route.screen is not None and route.screen.body)


def body_cap(route: Route) -> int:
    caps = []
    if route.validation is not None:
        caps.append(route.validation.max_body_bytes)
    if route.screen is not None and route.screen.body:
        caps.append(route.screen.max_body_bytes)
    return min(caps)


class BodyCheckFeature:
    filter_name = BODY_CHECK_FILTER

    def cluster_for(self, route: Route) -> str | None:
        """The decision cluster this route's body checks call (see compiler.decisions)."""
        return AUTHZ_CLUSTER if checks_body(route) else None

    def applies(self, gateway: Gateway, routes: Sequence[Route]) -> bool:
        return any(checks_body(route) for route in routes)

    def http_filter(self, gateway: Gateway, routes: Sequence[Route]) -> hcm_pb2.HttpFilter:
        config = ext_authz_pb2.ExtAuthz(
            transport_api_version=config_source_pb2.ApiVersion.V3,
            grpc_service=grpc_service_pb2.GrpcService(
                envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=AUTHZ_CLUSTER),
                timeout=duration(_TIMEOUT_MS),
            ),
            # A request that cannot be checked is not let through unchecked.
            failure_mode_allow=False,
            status_on_error=http_status_pb2.HttpStatus(code=http_status_pb2.StatusCode.ServiceUnavailable),
            # No allowed_headers: every header travels (validation reads content-type and the
            # required headers).
            stat_prefix="body_checks",
        )
        return hcm_pb2.HttpFilter(name=BODY_CHECK_FILTER, typed_config=pack(config))

    def patch_route(self, route: Route, xds_route: route_components_pb2.Route) -> None:
        if not checks_body(route):
            per_route = ext_authz_pb2.ExtAuthzPerRoute(disabled=True)
        else:
            per_route = ext_authz_pb2.ExtAuthzPerRoute(
                check_settings=ext_authz_pb2.CheckSettings(
                    context_extensions={CHECK_EXTENSION: route.name},
                    with_request_body=ext_authz_pb2.BufferSettings(
                        max_request_bytes=body_cap(route),
                        # A body over the cap is refused (413), never checked in part.
                        allow_partial_message=False,
                        pack_as_bytes=True,
                    ),
                )
            )
        xds_route.typed_per_filter_config[BODY_CHECK_FILTER].CopyFrom(pack(per_route))
