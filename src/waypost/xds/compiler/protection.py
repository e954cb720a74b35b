"""Request limits and threat protection, all enforced inside Envoy (no call to waypost).

- ``Gateway.limits.max_request_bytes`` -> the buffer filter: a larger body gets 413.
- ``Gateway.limits.max_request_headers_kb`` and the connection timeouts -> the HTTP connection
  manager itself (431 for oversized headers).
- ``Gateway.limits.methods``, ``Gateway.limits.user_agents``, ``Gateway.deny`` and ``Route.deny``
  -> one RBAC filter with DENY policies, on every gateway. Its filter-level rules are the Gateway's
  (so the listener depends on the Gateway alone, never on Routes: a route gaining ``deny`` binds
  connections opened before the change too). Envoy's per-route RBAC config *replaces* the
  filter's rules, so a route with ``deny`` carries the Gateway's rules and its own (``route-deny-N``)
  in its per-route config: the gateway rules stay in force on every route. One filter, not one for
  the Gateway and one for routes: each RBAC filter costs every request a pass of its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from envoy.config.core.v3 import protocol_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.buffer.v3 import buffer_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.type.matcher.v3 import path_pb2, regex_pb2, string_pb2
from google.protobuf import wrappers_pb2

from waypost.policies.model import DenyRule, Gateway, PolicySet, Route, UserAgents
from waypost.xds.compiler.pb import duration, pack
from waypost.xds.compiler.user_agents import user_agent_policies

__all__ = [
    "BodyLimitFeature",
    "DenyFeature",
    "build_deny_rbac",
    "patch_hcm_limits",
]

BUFFER_FILTER = "envoy.filters.http.buffer"
DENY_RBAC_FILTER = "envoy.filters.http.rbac"


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
    rules: Sequence[DenyRule],
    methods: Sequence[str] = (),
    user_agents: UserAgents | None = None,
    route_rules: Sequence[DenyRule] = (),
) -> rbac_pb2.RBAC:
    """A DENY-action RBAC config: one policy per rule (``deny-N``, then a route's ``route-deny-N``),
    plus one for methods outside ``methods`` and the user-agent policies."""
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
    for index, rule in enumerate(route_rules):
        policies[f"route-deny-{index}"] = rbac_pb2.Policy(
            permissions=[_rule_permission(rule)], principals=_any_principal()
        )
    return rbac_pb2.RBAC(action=rbac_pb2.RBAC.DENY, policies=policies)


class DenyFeature:
    """The deny RBAC filter: the Gateway's rules at the filter level, a route's added per route."""

    filter_name = DENY_RBAC_FILTER

    def __init__(self, policy: PolicySet | None = None) -> None:
        self._gateways: Mapping[str, Gateway] = policy.gateways if policy is not None else {}

    def bind(self, policy: PolicySet) -> DenyFeature:
        """Bound to a policy version: a route's per-route rules repeat its Gateway's."""
        return DenyFeature(policy)

    def applies(self, gateway: Gateway, routes: Sequence[Route]) -> bool:
        # On every gateway: a route gaining `deny` must bind connections opened before the change
        # too, and only the route table (not the listener) reaches those at once.
        return True

    def http_filter(self, gateway: Gateway, routes: Sequence[Route]) -> hcm_pb2.HttpFilter:
        # No rules at the filter level on a gateway without any: its routes pass untouched.
        rules = _gateway_rules(gateway)
        config = rbac_filter_pb2.RBAC(rules=rules) if rules is not None else rbac_filter_pb2.RBAC()
        return hcm_pb2.HttpFilter(name=DENY_RBAC_FILTER, typed_config=pack(config))

    def patch_route(self, route: Route, xds_route: route_components_pb2.Route) -> None:
        if not route.deny:
            return
        gateway = self._gateways.get(route.gateway)
        limits = gateway.limits if gateway is not None else None
        rules = build_deny_rbac(
            gateway.deny if gateway is not None else (),
            limits.methods if limits is not None else (),
            limits.user_agents if limits is not None else None,
            route_rules=route.deny,
        )
        per_route = rbac_filter_pb2.RBACPerRoute(rbac=rbac_filter_pb2.RBAC(rules=rules))
        xds_route.typed_per_filter_config[DENY_RBAC_FILTER].CopyFrom(pack(per_route))


def _gateway_rules(gateway: Gateway) -> rbac_pb2.RBAC | None:
    limits = gateway.limits
    if not gateway.deny and (limits is None or not (limits.methods or limits.user_agents)):
        return None
    methods = limits.methods if limits is not None else ()
    agents = limits.user_agents if limits is not None else None
    return build_deny_rbac(gateway.deny, methods, agents)
