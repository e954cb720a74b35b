"""Route.auth -> Envoy's ext_authz filter calling waypost's Check service, per route.

Every gateway carries the filter, whether or not any route is authenticated, and its
filter-level config depends only on the Gateway (``auth_service``, ``auth_failure_mode``), never on
Routes or AuthPolicies. CONTRACT (no window without auth): an auth change then alters only the
route table, which Envoy swaps for every connection at once; the listener is not replaced, so no
connection opened before the change keeps a filter chain that lacks the filter (200 without a
key) or has one the new routes do not configure (403 on public routes). Everything that depends
on policies (the service, its timeout, the claim headers) is per route, in ``check_settings``.

An authenticated route carries ``context_extensions`` naming itself and its AuthPolicies, so the
decision service looks up a prebuilt plan instead of re-matching the request; every other route
disables the filter per route and costs nothing: Envoy then never calls the decision service, so
its cluster may be absent (it is delivered only when a route needs it, :meth:`cluster_for`; Envoy
accepts a listener whose ext_authz names a cluster it lacks, and the snapshot check skips the
filter-level service, which no route uses) and ``auth_failure_mode`` is never consulted. The
decision service is reached through the cluster :data:`~waypost.contract.AUTHZ_CLUSTER` (or
``AUTHZ_HTTP_CLUSTER``), which waypost delivers over CDS/EDS with the endpoints `waypost serve`
knows (its own, or ``--authz-address``); see :mod:`waypost.xds.compiler.decisions`.

On every gateway, :class:`IdentityHeadersFeature` removes every client-sent ``x-waypost-*``
request header first, and on every route (authenticated or not) every other header an AuthPolicy
maps a claim to (:mod:`waypost.policies.identity`), so identity headers reaching an upstream were
always set by waypost, whichever source identified the caller.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.config.core.v3 import config_source_pb2, grpc_service_pb2, http_uri_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import http_status_pb2

from waypost.contract import (
    AUTHZ_CLUSTER,
    AUTHZ_HTTP_CLUSTER,
    AUTHZ_HTTP_PATH_PREFIX,
    IDENTITY_HEADER_PREFIX,
    METADATA_CONSUMER,
    METADATA_PLAN,
)
from waypost.policies.identity import identity_headers
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


class IdentityHeadersFeature:
    """Strip client-sent identity headers before anything else sees the request.

    On every gateway, with or without auth: a backend that trusts ``x-waypost-consumer`` must not
    be reachable with a forged one through a gateway that happens to have no AuthPolicy. The
    ``x-waypost-`` prefix is removed by the filter itself; the claim headers of the policy's
    AuthPolicies per route (header_mutation applies both), so they change with the route table,
    never the listener (see the CONTRACT above)."""

    filter_name = HEADER_MUTATION_FILTER

    def __init__(self, policy: PolicySet | None = None) -> None:
        self._claim_headers = identity_headers(policy.auth_policies) if policy is not None else ()

    def bind(self, policy: PolicySet) -> IdentityHeadersFeature:
        return IdentityHeadersFeature(policy)

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
        if not self._claim_headers:
            return
        per_route = header_mutation_pb2.HeaderMutationPerRoute(
            mutations=header_mutation_pb2.Mutations(
                request_mutations=[
                    mutation_rules_pb2.HeaderMutation(remove=name) for name in self._claim_headers
                ]
            )
        )
        xds_route.typed_per_filter_config[HEADER_MUTATION_FILTER].CopyFrom(pack(per_route))


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
        """This feature for one policy version: the per-route settings depend on the AuthPolicies."""
        return ExtAuthzFeature(policy)

    def applies(self, gateway: Gateway, routes: Sequence[Route]) -> bool:
        return True

    def cluster_for(self, route: Route) -> str | None:
        """The decision cluster Envoy calls for ``route``, if any."""
        if not route.auth_policies or route.name in self._native:
            return None
        return AUTHZ_HTTP_CLUSTER if route.gateway in self._http_gateways else AUTHZ_CLUSTER

    def http_filter(self, gateway: Gateway, routes: Sequence[Route]) -> hcm_pb2.HttpFilter:
        # From the Gateway alone (see the module's CONTRACT): no policy change alters the listener.
        fail_open = gateway.auth_failure_mode == "open"
        config = ext_authz_pb2.ExtAuthz(
            transport_api_version=config_source_pb2.ApiVersion.V3,
            failure_mode_allow=fail_open,
            # Fail closed with 503: the caller did nothing wrong, the decision service is down.
            status_on_error=http_status_pb2.HttpStatus(code=http_status_pb2.StatusCode.ServiceUnavailable),
            clear_route_cache=False,
        )
        if gateway.auth_service == "http":
            config.http_service.CopyFrom(_http_service((), AUTHZ_HTTP_PATH_PREFIX))
            # The HTTP transport forwards only a few headers unless told otherwise; which ones
            # hold credentials depends on policies, so every header travels (as over gRPC).
            config.allowed_headers.patterns.append(
                string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=".*"))
            )
        else:
            config.grpc_service.CopyFrom(_grpc_service(()))
        if fail_open:
            config.failure_mode_allow_header_add = True
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
            # The service is named per route, even on gRPC gateways: its timeout follows the
            # route's plugins, and an `auth_service: http` gateway decides here in gRPC what its
            # HTTP endpoint cannot (mTLS, plugins).
            policies = [self.auth_policies[p] for p in route.auth_policies if p in self.auth_policies]
            per_route = ext_authz_pb2.ExtAuthzPerRoute(
                check_settings=ext_authz_pb2.CheckSettings(
                    context_extensions={"route": route.name, "policies": ",".join(route.auth_policies)},
                    grpc_service=_grpc_service(policies),
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


def _grpc_service(policies: Sequence[AuthPolicy]) -> grpc_service_pb2.GrpcService:
    return grpc_service_pb2.GrpcService(
        envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=AUTHZ_CLUSTER),
        timeout=duration(_timeout_ms(policies)),
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
