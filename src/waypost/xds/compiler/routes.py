"""A Gateway's Routes -> one Envoy RouteConfiguration, one virtual host per host pattern.

Envoy picks exactly one virtual host per request (the most specific domain that matches), so a
route written for ``*`` must also be present in the virtual host of ``api.example.com``, after
that host's own routes: within a virtual host, routes are ordered by host specificity first, then
by match specificity (exact path, longest prefix, regex; more header and method conditions first;
then by name).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from envoy.config.route.v3 import route_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from google.protobuf import wrappers_pb2

from waypost.policies.model import Gateway, HeaderMutation, Route, RouteMatch, Service
from waypost.xds.compiler.cors import preflight_route
from waypost.xds.compiler.features import HttpFeature
from waypost.xds.compiler.names import cluster_name, route_config_name, virtual_host_name
from waypost.xds.compiler.pb import duration, percent
from waypost.xds.compiler.upgrades import patch_websocket

__all__ = ["build_route", "build_route_configuration", "host_covers", "order_routes"]

_HASHING_LB = frozenset({"ring_hash", "maglev"})


def build_route_configuration(
    gateway: Gateway,
    routes: Sequence[Route],
    services: Mapping[str, Service],
    features: Sequence[HttpFeature],
) -> route_pb2.RouteConfiguration:
    domains = sorted({host for route in routes for host in route.hosts} | {"*"}, key=_domain_order)
    virtual_hosts = []
    for domain in domains:
        vhost_routes = order_routes(
            domain, [r for r in routes if any(host_covers(h, domain) for h in r.hosts)]
        )
        virtual_hosts.append(
            rc_pb2.VirtualHost(
                name=virtual_host_name(gateway.name, domain),
                domains=[domain],
                routes=[
                    xds_route
                    for route in vhost_routes
                    for xds_route in _with_preflight(route, build_route(route, services, features))
                ],
            )
        )
    return route_pb2.RouteConfiguration(
        name=route_config_name(gateway.name),
        virtual_hosts=virtual_hosts,
        # A route naming a cluster Envoy lacks answers 503, not 404: it is an outage, not a miss.
        validate_clusters=wrappers_pb2.BoolValue(value=False),
        # `api.example.com:` (an empty port, which the connection manager leaves alone) and any
        # port pick the host's virtual host, never the `*` catch-all.
        ignore_port_in_host_matching=True,
    )


def host_covers(pattern: str, domain: str) -> bool:
    """Whether a route written for ``pattern`` serves requests to virtual host ``domain``."""
    if pattern in ("*", domain):
        return True
    if pattern.startswith("*."):
        return domain.endswith(pattern[1:]) and len(domain) > len(pattern)
    return False


def _host_rank(route: Route, domain: str) -> tuple[int, int]:
    best = (3, 0)
    for pattern in route.hosts:
        if not host_covers(pattern, domain):
            continue
        rank = (0, 0) if pattern == domain else (2, 0) if pattern == "*" else (1, -len(pattern))
        best = min(best, rank)
    return best


def _match_rank(match: RouteMatch) -> tuple[int, int, int, int]:
    kind = {"path": 0, "prefix": 1, "regex": 2}[match.path_kind]
    length = 0 if match.path_kind == "regex" else -len(match.path_value)
    return (kind, length, -len(match.headers), 0 if match.methods else 1)


def order_routes(domain: str, routes: Sequence[Route]) -> list[Route]:
    return sorted(routes, key=lambda r: (_host_rank(r, domain), _match_rank(r.match), r.name))


def _domain_order(domain: str) -> tuple[int, str]:
    return (2 if domain == "*" else 1 if domain.startswith("*.") else 0, domain)


def build_route(
    route: Route, services: Mapping[str, Service], features: Sequence[HttpFeature]
) -> rc_pb2.Route:
    xds_route = rc_pb2.Route(
        name=route.name, match=_build_match(route.match), route=_build_action(route, services)
    )
    if route.request_headers is not None:
        xds_route.request_headers_to_add.extend(_header_options(route.request_headers))
        xds_route.request_headers_to_remove.extend(route.request_headers.remove)
    if route.response_headers is not None:
        xds_route.response_headers_to_add.extend(_header_options(route.response_headers))
        xds_route.response_headers_to_remove.extend(route.response_headers.remove)
    patch_websocket(route, xds_route)
    for feature in features:
        feature.patch_route(route, xds_route)
    return xds_route


def _with_preflight(route: Route, xds_route: rc_pb2.Route) -> list[rc_pb2.Route]:
    preflight = preflight_route(route, xds_route)
    return [xds_route] if preflight is None else [preflight, xds_route]


def _build_match(match: RouteMatch) -> rc_pb2.RouteMatch:
    xds_match = rc_pb2.RouteMatch()
    if match.path is not None:
        xds_match.path = match.path
    elif match.prefix is not None:
        # A prefix matches whole path segments (/v1/orders matches /v1/orders/7, not
        # /v1/ordersx), so a route cannot leak onto a neighbour that merely shares letters.
        if match.prefix == "/" or match.prefix.endswith("/"):
            xds_match.prefix = match.prefix
        else:
            xds_match.path_separated_prefix = match.prefix
    else:
        xds_match.safe_regex.CopyFrom(regex_pb2.RegexMatcher(regex=match.regex or ""))
    if match.methods:
        methods = sorted(set(match.methods))
        method_match = (
            string_pb2.StringMatcher(exact=methods[0])
            if len(methods) == 1
            else string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex="|".join(methods)))
        )
        xds_match.headers.append(rc_pb2.HeaderMatcher(name=":method", string_match=method_match))
    for name, value in sorted(match.headers.items()):
        xds_match.headers.append(
            rc_pb2.HeaderMatcher(name=name.lower(), string_match=string_pb2.StringMatcher(exact=value))
        )
    return xds_match


def _build_action(route: Route, services: Mapping[str, Service]) -> rc_pb2.RouteAction:
    action = rc_pb2.RouteAction()
    backends = route.weighted_backends
    if route.backends is None:
        action.cluster = cluster_name(backends[0].service)
    else:
        action.weighted_clusters.CopyFrom(
            rc_pb2.WeightedCluster(
                clusters=[
                    rc_pb2.WeightedCluster.ClusterWeight(
                        name=cluster_name(b.service), weight=wrappers_pb2.UInt32Value(value=b.weight)
                    )
                    for b in backends
                ]
            )
        )
    if any(services[b.service].lb in _HASHING_LB for b in backends if b.service in services):
        # Consistent hashing needs a key; the client address keeps a client on one upstream.
        action.hash_policy.append(
            rc_pb2.RouteAction.HashPolicy(
                connection_properties=rc_pb2.RouteAction.HashPolicy.ConnectionProperties(source_ip=True)
            )
        )
    if route.mirror is not None:
        # Shadow traffic: Envoy sends the copy without waiting for it and drops its answer.
        action.request_mirror_policies.append(
            rc_pb2.RouteAction.RequestMirrorPolicy(
                cluster=cluster_name(route.mirror.service),
                runtime_fraction=base_pb2.RuntimeFractionalPercent(
                    default_value=percent(route.mirror.percent)
                ),
            )
        )
    if any(services[b.service].protocol == "grpc" for b in backends if b.service in services):
        # gRPC clients send their deadline in grpc-timeout; honour it (capped by `timeout` if set).
        action.max_stream_duration.grpc_timeout_header_max.CopyFrom(duration(route.timeout or 0))
    if route.rewrite is not None:
        action.prefix_rewrite = route.rewrite.prefix
    if route.timeout is not None:
        action.timeout.CopyFrom(duration(route.timeout))
    if route.retries is not None:
        retry = rc_pb2.RetryPolicy(
            retry_on=",".join(route.retries.on),
            num_retries=wrappers_pb2.UInt32Value(value=route.retries.attempts),
        )
        if route.retries.per_try_timeout is not None:
            retry.per_try_timeout.CopyFrom(duration(route.retries.per_try_timeout))
        action.retry_policy.CopyFrom(retry)
    return action


def _header_options(mutation: HeaderMutation) -> list[base_pb2.HeaderValueOption]:
    # "add" sets the header: a client-sent value of the same name is replaced, never kept beside it.
    return [
        base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=name.lower(), value=value),
            append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
        )
        for name, value in sorted(mutation.add.items())
    ]
