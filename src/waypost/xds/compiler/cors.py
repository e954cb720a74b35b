"""Route.cors -> Envoy's CORS filter, configured per route. Envoy answers preflights itself.

A browser preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) carries
neither the route's method nor its header conditions, so a route with ``methods`` or ``headers``
in its match would never see it. Such a route gets a companion route just ahead of it
(:func:`preflight_route`): same path match, preflights only, the same CORS policy with
``forward_not_matching_preflights: false``: the CORS filter answers every preflight there itself
(an origin not allowed gets no ``access-control-*`` headers), so OPTIONS never reaches the
backend through the companion.
"""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.route.v3 import route_components_pb2
from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from google.protobuf import wrappers_pb2

from waypost.policies.model import Cors, Gateway, Route
from waypost.xds.compiler.pb import pack

__all__ = ["CorsFeature", "build_cors_policy", "preflight_route"]

FILTER_NAME = "envoy.filters.http.cors"


def build_cors_policy(cors: Cors) -> cors_pb2.CorsPolicy:
    policy = cors_pb2.CorsPolicy(
        allow_origin_string_match=[_origin_matcher(origin) for origin in cors.origins],
        allow_credentials=wrappers_pb2.BoolValue(value=cors.credentials),
    )
    if cors.methods:
        policy.allow_methods = ",".join(cors.methods)
    if cors.headers:
        policy.allow_headers = ",".join(cors.headers)
    if cors.expose_headers:
        policy.expose_headers = ",".join(cors.expose_headers)
    if cors.max_age is not None:
        policy.max_age = str(cors.max_age // 1000)
    return policy


def _origin_matcher(origin: str) -> string_pb2.StringMatcher:
    if origin == "*":
        return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=".*"))
    # Origins compare case-insensitively in scheme and host (RFC 6454).
    return string_pb2.StringMatcher(exact=origin, ignore_case=True)


class CorsFeature:
    filter_name = FILTER_NAME

    def applies(self, gateway: Gateway, routes: Sequence[Route]) -> bool:
        return any(route.cors is not None for route in routes)

    def http_filter(self, gateway: Gateway, routes: Sequence[Route]) -> hcm_pb2.HttpFilter:
        return hcm_pb2.HttpFilter(name=FILTER_NAME, typed_config=pack(cors_pb2.Cors()))

    def patch_route(self, route: Route, xds_route: route_components_pb2.Route) -> None:
        if route.cors is not None:
            xds_route.typed_per_filter_config[FILTER_NAME].CopyFrom(pack(build_cors_policy(route.cors)))


def _present(name: str) -> rc_pb2.HeaderMatcher:
    return rc_pb2.HeaderMatcher(name=name, present_match=True)


def preflight_route(route: Route, xds_route: rc_pb2.Route) -> rc_pb2.Route | None:
    """The companion route answering ``route``'s preflights, when its match would miss them."""
    if route.cors is None or "OPTIONS" in route.match.methods:
        return None
    if not route.match.methods and not route.match.headers:
        return None
    # A copy of the finished route keeps every filter's per-route settings (auth, deny rules);
    # the CORS filter runs before them and answers an allowed preflight itself.
    preflight = rc_pb2.Route()
    preflight.CopyFrom(xds_route)
    preflight.name = f"{route.name}.preflight"
    del preflight.match.headers[:]
    preflight.match.headers.extend(
        [
            rc_pb2.HeaderMatcher(name=":method", string_match=string_pb2.StringMatcher(exact="OPTIONS")),
            _present("origin"),
            _present("access-control-request-method"),
        ]
    )
    policy = build_cors_policy(route.cors)
    policy.forward_not_matching_preflights.value = False
    preflight.typed_per_filter_config[FILTER_NAME].CopyFrom(pack(policy))
    return preflight
