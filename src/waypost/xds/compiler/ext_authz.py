"""Route.auth -> Envoy's ext_authz filter calling waypost's Check service, per route.

Only gateways with at least one authenticated route get the filter. Each such route carries
``context_extensions`` naming itself and its AuthPolicies, so the decision service looks up a
prebuilt plan instead of re-matching the request; every other route of the gateway disables the
filter per route and costs nothing. The decision service is reached through the cluster
:data:`~waypost.contract.AUTHZ_CLUSTER` (or ``AUTHZ_HTTP_CLUSTER``), which waypost delivers over
CDS/EDS with the endpoints `waypost serve` knows (its own, or ``--authz-address``); see
:mod:`waypost.xds.compiler.decisions`.

On the same gateways, :class:`IdentityHeadersFeature` removes every client-sent ``x-waypost-*``
request header first, on every route (authenticated or not), so identity headers reaching an
upstream were always set by waypost.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.config.core.v3 import config_source_pb2, grpc_service_pb2, http_uri_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.type.matcher.v3 import string_pb2
from envoy.type.v3 import http_status_pb2

from waypost.contract import (
    AUTHZ_CLUSTER,
    AUTHZ_HTTP_CLUSTER,
    AUTHZ_HTTP_PATH_PREFIX,
    IDENTITY_HEADER_PREFIX,
    METADATA_CONSUMER,
    METADATA_PLAN,
)
from waypost.policies.model import AuthPolicy, Gateway, PolicySet, Route
from waypost.xds.compiler.jwt_native import native_routes
from waypost.xds.compiler.pb import duration, pack

__all__ = [
    "EXT_AUTHZ_FILTER",
    "ExtAuthzFeature",
    "IdentityHeadersFeature",
]

EXT_AUTHZ_FILTER = "envoy.filters.http.ext_authz"
HEADER_MUTATION_FILTER = "waypost.identity_headers"
_RATE_LIMIT_HEADERS = ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset", "retry-after"]
_BASE_TIMEOUT_MS = 500
_TIMEOUT_MARGIN_MS = 250


def _needs_authz(routes: Sequence[Route]) -> bool:
    return any(route.auth_policies for route in routes)


class IdentityHeadersFeature:
    """Strip client-sent ``x-waypost-*`` request headers before anything else sees the request.

    On every gateway, with or without auth: a backend that trusts ``x-waypost-consumer`` must not
    be reachable with a forged one through a gateway that happens to have no AuthPolicy."""

    filter_name = HEADER_MUTATION_FILTER

    def applies(self, gateway: Gateway, routes: Sequence[Route]) -> bool:
        return True

    def http_filter(self, gateway: Gateway, routes: Sequence[Route]) -> hcm_pb2.HttpFilter:
        strip = mutation_rules_pb2.HeaderMutation(
            remove_on_match=mutation_rules_pb2.HeaderMutation.RemoveOnMatch(
                key_matcher=string_pb2.StringMatcher(prefix=IDENTITY_HEADER_PREFIX)
            )
        )
        config = header_mutation_pb2.HeaderMutation(
            mutations=header_mutation_pb2.Mutations(request_mutations=[strip])
        )
        return hcm_pb2.HttpFilter(name=HEADER_MUTATION_FILTER, typed_config=pack(config))

    def patch_route(self, route: Route, xds_route: route_components_pb2.Route) -> None:
        return None


class ExtAuthzFeature:
    """The ext_authz filter (fail closed unless the Gateway opts into fail-open): gRPC Check, or
    the HTTP endpoint for Gateways with ``auth_service: http`` whose policies it can decide."""

    filter_name = EXT_AUTHZ_FILTER

    def __init__(self, policy: PolicySet | None = None) -> None:
        self.auth_policies: Mapping[str, AuthPolicy] = policy.auth_policies if policy is not None else {}
        # Routes Envoy enforces itself (jwt_authn + rbac, see jwt_native): never a Check call.
        self._native: frozenset[str] = frozenset(native_routes(policy)) if policy is not None else frozenset()
        self._http_gateways: frozenset[str] = frozenset()
        if policy is not None:
            self._http_gateways = frozenset(
                name
                for name, gateway in policy.gateways.items()
                if gateway.auth_service == "http"
                and _http_capable(
                    [
                        policy.auth_policies[p]
                        for route in policy.routes.values()
                        if route.gateway == name
                        for p in route.auth_policies
                        if p in policy.auth_policies
                    ]
                )
            )

    def bind(self, policy: PolicySet) -> ExtAuthzFeature:
        """This feature for one policy version: the filter's settings depend on the AuthPolicies."""
        return ExtAuthzFeature(policy)

    def applies(self, gateway: Gateway, routes: Sequence[Route]) -> bool:
        return _needs_authz([r for r in routes if r.name not in self._native])

    def cluster_for(self, route: Route) -> str | None:
        """The decision cluster Envoy calls for ``route``, if any."""
        if not route.auth_policies or route.name in self._native:
            return None
        return AUTHZ_HTTP_CLUSTER if route.gateway in self._http_gateways else AUTHZ_CLUSTER

    def http_filter(self, gateway: Gateway, routes: Sequence[Route]) -> hcm_pb2.HttpFilter:
        policies = [
            self.auth_policies[name]
            for route in routes
            if route.name not in self._native
            for name in route.auth_policies
            if name in self.auth_policies
        ]
        fail_open = gateway.auth_failure_mode == "open"
        config = ext_authz_pb2.ExtAuthz(
            transport_api_version=config_source_pb2.ApiVersion.V3,
            failure_mode_allow=fail_open,
            # Fail closed with 503: the caller did nothing wrong, the decision service is down.
            status_on_error=http_status_pb2.HttpStatus(code=http_status_pb2.StatusCode.ServiceUnavailable),
            clear_route_cache=False,
        )
        if gateway.name in self._http_gateways:
            config.http_service.CopyFrom(_http_service(policies, AUTHZ_HTTP_PATH_PREFIX))
        else:
            config.grpc_service.CopyFrom(
                grpc_service_pb2.GrpcService(
                    envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=AUTHZ_CLUSTER),
                    timeout=duration(_timeout_ms(policies)),
                )
            )
        if fail_open:
            config.failure_mode_allow_header_add = True
        headers = _credential_headers(policies)
        if headers is not None:
            # Only credentials travel to the decision service: smaller CheckRequests, less to parse.
            # Envoy wants at least one pattern; mtls-only policies need no header but `host`.
            config.allowed_headers.patterns.extend(
                string_pb2.StringMatcher(exact=h) for h in headers or ["host"]
            )
        return hcm_pb2.HttpFilter(name=EXT_AUTHZ_FILTER, typed_config=pack(config))

    def patch_route(self, route: Route, xds_route: route_components_pb2.Route) -> None:
        if route.name in self._native:
            per_route = ext_authz_pb2.ExtAuthzPerRoute(disabled=True)
        elif route.auth_policies and route.gateway in self._http_gateways:
            # HTTP mode carries no context extensions: the route's name travels in the path.
            policies = [self.auth_policies[p] for p in route.auth_policies if p in self.auth_policies]
            per_route = ext_authz_pb2.ExtAuthzPerRoute(
                check_settings=ext_authz_pb2.CheckSettings(
                    http_service=_http_service(policies, f"{AUTHZ_HTTP_PATH_PREFIX}{route.name}")
                )
            )
        elif route.auth_policies:
            per_route = ext_authz_pb2.ExtAuthzPerRoute(
                check_settings=ext_authz_pb2.CheckSettings(
                    context_extensions={"route": route.name, "policies": ",".join(route.auth_policies)}
                )
            )
        else:
            per_route = ext_authz_pb2.ExtAuthzPerRoute(disabled=True)
        xds_route.typed_per_filter_config[EXT_AUTHZ_FILTER].CopyFrom(pack(per_route))


def _http_capable(policies: Sequence[AuthPolicy]) -> bool:
    """Whether the HTTP endpoint can decide for these policies (it sees no peer certificate, and
    plugins may add any header, which HTTP mode could only pass on by name)."""
    return all(
        source.api_key is not None or source.jwt is not None for p in policies for source in p.identity
    )


def _http_service(policies: Sequence[AuthPolicy], path_prefix: str) -> ext_authz_pb2.HttpService:
    claim_headers = sorted(
        {
            header.lower()
            for policy in policies
            for source in policy.identity
            if source.jwt is not None
            for header in source.jwt.claims_to_headers.values()
        }
    )
    return ext_authz_pb2.HttpService(
        server_uri=http_uri_pb2.HttpUri(
            uri=f"http://{AUTHZ_HTTP_CLUSTER}",
            cluster=AUTHZ_HTTP_CLUSTER,
            timeout=duration(_timeout_ms(policies)),
        ),
        path_prefix=path_prefix,
        authorization_response=ext_authz_pb2.AuthorizationResponse(
            allowed_upstream_headers=_matchers(claim_headers, prefixes=[IDENTITY_HEADER_PREFIX]),
            allowed_client_headers=_matchers(["content-type", "www-authenticate", *_RATE_LIMIT_HEADERS]),
            # A consumer's counted quota (filters.authz.quota): the headers the RLS path sets.
            allowed_client_headers_on_success=_matchers(_RATE_LIMIT_HEADERS[:3]),
            # CONTRACT (rate limits): the same dynamic metadata keys as the gRPC service.
            dynamic_metadata_from_headers=_matchers([METADATA_CONSUMER, METADATA_PLAN]),
        ),
    )


def _matchers(exact: Sequence[str], prefixes: Sequence[str] = ()) -> string_pb2.ListStringMatcher:
    return string_pb2.ListStringMatcher(
        patterns=[string_pb2.StringMatcher(prefix=p) for p in prefixes]
        + [string_pb2.StringMatcher(exact=e) for e in exact]
    )


def _timeout_ms(policies: Sequence[AuthPolicy]) -> int:
    plugin_timeouts = [
        source.custom.timeout
        for policy in policies
        for source in policy.identity
        if source.custom is not None
    ]
    return max([_BASE_TIMEOUT_MS, *(t + _TIMEOUT_MARGIN_MS for t in plugin_timeouts)])


def _credential_headers(policies: Sequence[AuthPolicy]) -> list[str] | None:
    """The request headers decisions read, or None when a plugin or CEL rule may read any."""
    headers: set[str] = set()
    for policy in policies:
        for source in policy.identity:
            if source.custom is not None:
                return None
            if source.api_key is not None:
                headers.add(source.api_key.header.lower())
            elif source.jwt is not None:
                headers.add(source.jwt.header.lower())
        for rule in policy.rules:
            match = rule.allow or rule.deny
            if match is not None and match.when is not None and "headers" in match.when:
                return None
    return sorted(headers)
