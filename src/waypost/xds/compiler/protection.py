"""Request limits and threat protection, all enforced inside Envoy (no call to waypost).

- ``Gateway.limits.max_request_bytes`` -> the buffer filter: a larger body gets 413.
- ``Gateway.limits.max_request_headers_kb`` and the connection timeouts -> the HTTP connection
  manager itself (431 for oversized headers).
- ``Gateway.limits.methods`` and ``Gateway.deny`` -> one RBAC filter with DENY policies; each
  ``Route.deny`` -> a second RBAC filter configured per route. Two filters rather than one because
  Envoy's per-route RBAC config replaces the filter's rules instead of adding to them: the gateway
  rules stay in force on every route whatever the route adds.
"""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.core.v3 import protocol_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.buffer.v3 import buffer_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.type.matcher.v3 import path_pb2, regex_pb2, string_pb2
from google.protobuf import wrappers_pb2

from waypost.policies.model import DenyRule, Gateway, Route, UserAgents
from waypost.xds.compiler.pb import duration, pack
from waypost.xds.compiler.user_agents import user_agent_policies

__all__ = [
    "BodyLimitFeature",
    "GatewayDenyFeature",
    "RouteDenyFeature",
    "build_deny_rbac",
    "patch_hcm_limits",
]

BUFFER_FILTER = "envoy.filters.http.buffer"
GATEWAY_RBAC_FILTER = "envoy.filters.http.rbac"
ROUTE_RBAC_FILTER = "envoy.filters.http.rbac.route"


def patch_hcm_limits(gateway: Gateway, hcm: hcm_pb2.HttpConnectionManager) -> None:
    limits = gateway.limits
    if limits is None:
        return
    if limits.max_request_headers_kb is not None:
        hcm.max_request_headers_kb.value = limits.max_request_headers_kb
    if limits.idle_timeout is not None or limits.max_connection_duration is not None:
        options = protocol_pb2.HttpProtocolOptions()
        if limits.idle_timeout is not None:
            options.idle_timeout.CopyFrom(duration(limits.idle_timeout))
        if limits.max_connection_duration is not None:
            options.max_connection_duration.CopyFrom(duration(limits.max_connection_duration))
        hcm.common_http_protocol_options.CopyFrom(options)


class BodyLimitFeature:
    filter_name = BUFFER_FILTER

    def applies(self, gateway: Gateway, routes: Sequence[Route]) -> bool:
        return gateway.limits is not None and gateway.limits.max_request_bytes is not None

    def http_filter(self, gateway: Gateway, routes: Sequence[Route]) -> hcm_pb2.HttpFilter:
        assert gateway.limits is not None and gateway.limits.max_request_bytes is not None
        # The buffer filter answers 413 as soon as content-length (or the bytes received) pass
        # the limit, before the upstream sees anything.
        config = buffer_pb2.Buffer(
            max_request_bytes=wrappers_pb2.UInt32Value(value=gateway.limits.max_request_bytes)
        )
        return hcm_pb2.HttpFilter(name=BUFFER_FILTER, typed_config=pack(config))

    def patch_route(self, route: Route, xds_route: route_components_pb2.Route) -> None:
        return None


def _regex(pattern: str) -> string_pb2.StringMatcher:
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=pattern))


def _rule_permission(rule: DenyRule) -> rbac_pb2.Permission:
    conditions: list[rbac_pb2.Permission] = []
    if rule.paths:
        conditions.append(
            rbac_pb2.Permission(
                or_rules=rbac_pb2.Permission.Set(
                    rules=[
                        rbac_pb2.Permission(url_path=path_pb2.PathMatcher(path=_regex(p))) for p in rule.paths
                    ]
                )
            )
        )
    for name, pattern in sorted(rule.headers.items()):
        conditions.append(
            rbac_pb2.Permission(
                header=route_components_pb2.HeaderMatcher(name=name.lower(), string_match=_regex(pattern))
            )
        )
    if len(conditions) == 1:
        return conditions[0]
    return rbac_pb2.Permission(and_rules=rbac_pb2.Permission.Set(rules=conditions))


def _any_principal() -> list[rbac_pb2.Principal]:
    return [rbac_pb2.Principal(any=True)]


def build_deny_rbac(
    rules: Sequence[DenyRule], methods: Sequence[str] = (), user_agents: UserAgents | None = None
) -> rbac_pb2.RBAC:
    """A DENY-action RBAC config: one policy per rule, plus one for methods outside ``methods``."""
    policies: dict[str, rbac_pb2.Policy] = {}
    if methods:
        allowed = sorted(set(methods))
        method_match = route_components_pb2.HeaderMatcher(
            name=":method", string_match=_regex("|".join(allowed)), invert_match=True
        )
        policies["methods"] = rbac_pb2.Policy(
            permissions=[rbac_pb2.Permission(header=method_match)], principals=_any_principal()
        )
    for index, rule in enumerate(rules):
        policies[f"deny-{index}"] = rbac_pb2.Policy(
            permissions=[_rule_permission(rule)], principals=_any_principal()
        )
    if user_agents is not None:
        policies.update(user_agent_policies(user_agents))
    return rbac_pb2.RBAC(action=rbac_pb2.RBAC.DENY, policies=policies)


class GatewayDenyFeature:
    filter_name = GATEWAY_RBAC_FILTER

    def applies(self, gateway: Gateway, routes: Sequence[Route]) -> bool:
        limits = gateway.limits
        return bool(gateway.deny) or (limits is not None and bool(limits.methods or limits.user_agents))

    def http_filter(self, gateway: Gateway, routes: Sequence[Route]) -> hcm_pb2.HttpFilter:
        methods = gateway.limits.methods if gateway.limits is not None else ()
        agents = gateway.limits.user_agents if gateway.limits is not None else None
        config = rbac_filter_pb2.RBAC(rules=build_deny_rbac(gateway.deny, methods, agents))
        return hcm_pb2.HttpFilter(name=GATEWAY_RBAC_FILTER, typed_config=pack(config))

    def patch_route(self, route: Route, xds_route: route_components_pb2.Route) -> None:
        return None


class RouteDenyFeature:
    filter_name = ROUTE_RBAC_FILTER

    def applies(self, gateway: Gateway, routes: Sequence[Route]) -> bool:
        # On every gateway: a route gaining `deny` must bind connections opened before the change
        # too, and only the route table (not the listener) reaches those at once.
        return True

    def http_filter(self, gateway: Gateway, routes: Sequence[Route]) -> hcm_pb2.HttpFilter:
        # No rules at the filter level: routes without `deny` pass untouched.
        return hcm_pb2.HttpFilter(name=ROUTE_RBAC_FILTER, typed_config=pack(rbac_filter_pb2.RBAC()))

    def patch_route(self, route: Route, xds_route: route_components_pb2.Route) -> None:
        if route.deny:
            per_route = rbac_filter_pb2.RBACPerRoute(
                rbac=rbac_filter_pb2.RBAC(rules=build_deny_rbac(route.deny))
            )
            xds_route.typed_per_filter_config[ROUTE_RBAC_FILTER].CopyFrom(pack(per_route))
