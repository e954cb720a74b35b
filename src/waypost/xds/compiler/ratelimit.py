"""RateLimitPolicy -> Envoy's rate-limit filters: ``local_ratelimit`` and ``ratelimit`` (RLS).

``scope: local`` limits become token buckets inside each Envoy (no call leaves the proxy);
global limits become per-route rate-limit actions whose descriptors Envoy sends to waypost's
RateLimitService (:mod:`waypost.filters.ratelimit`). Every descriptor starts with the entry
``limit = <policy>/<index>``, so the service finds the limit by a dict lookup and never re-matches
the request. The descriptor layout is shared with the service through :mod:`waypost.contract`.

One hop: on a route the ext_authz decision service decides (an AuthPolicy not enforced natively),
global limits keyed by consumer or plan are counted by that decision itself
(:mod:`waypost.filters.authz.quota`), which answers 429 with the RLS's headers; their descriptors
are not sent to the RLS, so such a request costs Envoy one call to Python, not two. Limits keyed
by anything else (client IP, header, route) stay with the RLS.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from envoy.config.core.v3 import base_pb2, config_source_pb2, grpc_service_pb2
from envoy.config.ratelimit.v3 import rls_pb2 as rls_config_pb2
from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2 as common_rl_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2 as local_pb2
from envoy.extensions.filters.http.ratelimit.v3 import rate_limit_pb2 as rl_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.type.metadata.v3 import metadata_pb2
from envoy.type.v3 import token_bucket_pb2
from google.protobuf import duration_pb2, wrappers_pb2

from waypost import contract as d
from waypost.contract import RATELIMIT_CLUSTER
from waypost.policies.model import Gateway, Limit, PolicySet, RateLimitPolicy, Route
from waypost.policies.types import RATE_UNIT_SECONDS
from waypost.xds.compiler.jwt_native import native_routes
from waypost.xds.compiler.pb import pack

__all__ = [
    "GLOBAL_FILTER",
    "LOCAL_FILTER",
    "GlobalRateLimitFeature",
    "LocalRateLimitFeature",
    "global_actions",
]

LOCAL_FILTER = "envoy.filters.http.local_ratelimit"
GLOBAL_FILTER = "envoy.filters.http.ratelimit"

# The RLS answers from memory in well under a millisecond; Redis adds one round trip. Past this,
# Envoy lets the request through (failure_mode_deny false): a slow limiter must not be an outage.
_RLS_TIMEOUT = duration_pb2.Duration(nanos=250_000_000)
# Distinct client IPs / header values one Envoy keeps a bucket for; least recently used go first.
_MAX_DYNAMIC_DESCRIPTORS = 10_000


@dataclass(frozen=True)
class _Policies:
    by_name: dict[str, RateLimitPolicy] = field(default_factory=dict)
    counted_by_authz: frozenset[str] = frozenset()
    """Routes whose consumer and plan limits the ext_authz decision counts (module docstring)."""

    def limits(self, route: Route, scope: str) -> list[tuple[RateLimitPolicy, int, Limit]]:
        found = []
        for name in route.rate_limit_policies:
            policy = self.by_name.get(name)
            if policy is None:
                continue
            for index, limit in enumerate(policy.limits):
                if limit.scope == scope:
                    found.append((policy, index, limit))
        return found

    def global_entries(self, route: Route) -> list[tuple[RateLimitPolicy, str, str]]:
        """(policy, limit id, by) of every descriptor the route sends to the RLS."""
        entries: list[tuple[RateLimitPolicy, str, str]] = []
        by_authz = route.name in self.counted_by_authz
        for name in route.rate_limit_policies:
            policy = self.by_name.get(name)
            if policy is None:
                continue
            entries.extend(
                (policy, str(i), lim.by)
                for i, lim in enumerate(policy.limits)
                if lim.scope == "global" and not (by_authz and lim.by == "consumer")
            )
            if (
                policy.plans
                and not by_authz
                and not any(lim.by == "consumer" and lim.scope == "global" for lim in policy.limits)
            ):
                # Plans without a `by: consumer` limit still count per consumer: only planned ones.
                entries.append((policy, d.PLANS_ONLY, "consumer"))
        return entries


def global_actions(policy: str, limit_id: str, by: str, route: Route) -> rc_pb2.RateLimit:
    """The actions building one global descriptor: ``limit`` first, then what the limit is keyed by."""
    actions = [_generic(d.LIMIT_KEY, d.limit_value(policy, limit_id)), *_key_actions(by, route)]
    if by == "consumer":
        # The plan picks the plan's limit; a consumer without one keeps the `by: consumer` limit.
        actions.append(_metadata(d.PLAN_KEY, d.METADATA_PLAN, skip_if_absent=True))
    return rc_pb2.RateLimit(actions=actions)


def _key_actions(by: str, route: Route) -> list[rc_pb2.RateLimit.Action]:
    if by == "consumer":
        # Absent metadata (no authenticated consumer) drops the descriptor: nobody to count.
        return [_metadata(d.CONSUMER_KEY, d.METADATA_CONSUMER)]
    if by == "client_ip":
        # The HCM's xff_num_trusted_hops decides which address this is (Gateway.trusted_hops).
        return [rc_pb2.RateLimit.Action(remote_address=rc_pb2.RateLimit.Action.RemoteAddress())]
    if by == "route":
        return [_generic(d.ROUTE_KEY, route.name)]
    header = by.removeprefix("header:").lower()
    return [
        rc_pb2.RateLimit.Action(
            request_headers=rc_pb2.RateLimit.Action.RequestHeaders(
                header_name=header, descriptor_key=d.HEADER_KEY
            )
        )
    ]


def _generic(key: str, value: str) -> rc_pb2.RateLimit.Action:
    return rc_pb2.RateLimit.Action(
        generic_key=rc_pb2.RateLimit.Action.GenericKey(descriptor_key=key, descriptor_value=value)
    )


def _metadata(
    descriptor_key: str, metadata_key: str, *, skip_if_absent: bool = False
) -> rc_pb2.RateLimit.Action:
    return rc_pb2.RateLimit.Action(
        metadata=rc_pb2.RateLimit.Action.MetaData(
            descriptor_key=descriptor_key,
            metadata_key=metadata_pb2.MetadataKey(
                key=d.METADATA_NAMESPACE, path=[metadata_pb2.MetadataKey.PathSegment(key=metadata_key)]
            ),
            source=rc_pb2.RateLimit.Action.MetaData.DYNAMIC,
            skip_if_absent=skip_if_absent,
        )
    )


class GlobalRateLimitFeature:
    """Envoy's ``ratelimit`` filter, asking waypost's RLS; per-route actions build descriptors."""

    filter_name = GLOBAL_FILTER

    def __init__(self, policies: _Policies | None = None) -> None:
        self._policies = policies or _Policies()

    def bind(self, policy: PolicySet) -> GlobalRateLimitFeature:
        # Routes the decision service decides: it counts their consumer quotas in the same call.
        native = native_routes(policy)
        by_authz = frozenset(
            name for name, route in policy.routes.items() if route.auth and name not in native
        )
        return GlobalRateLimitFeature(_Policies(dict(policy.rate_limit_policies), by_authz))

    def applies(self, gateway: Gateway, routes: Sequence[Route]) -> bool:
        return any(self._policies.global_entries(route) for route in routes)

    def cluster_for(self, route: Route) -> str | None:
        """The decision cluster Envoy calls for ``route`` (the RLS), if any."""
        return RATELIMIT_CLUSTER if self._policies.global_entries(route) else None

    def http_filter(self, gateway: Gateway, routes: Sequence[Route]) -> hcm_pb2.HttpFilter:
        config = rl_pb2.RateLimit(
            domain=d.DOMAIN,
            timeout=_RLS_TIMEOUT,
            failure_mode_deny=False,
            rate_limit_service=rls_config_pb2.RateLimitServiceConfig(
                grpc_service=grpc_service_pb2.GrpcService(
                    envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=RATELIMIT_CLUSTER)
                ),
                transport_api_version=config_source_pb2.ApiVersion.V3,
            ),
            # The RLS sets ratelimit-* and retry-after itself (the spec's names, not x-ratelimit-*).
            disable_x_envoy_ratelimited_header=True,
        )
        return hcm_pb2.HttpFilter(name=GLOBAL_FILTER, typed_config=pack(config))

    def patch_route(self, route: Route, xds_route: rc_pb2.Route) -> None:
        entries = self._policies.global_entries(route)
        if not entries:
            return
        per_route = rl_pb2.RateLimitPerRoute(
            rate_limits=[global_actions(policy.name, limit_id, by, route) for policy, limit_id, by in entries]
        )
        xds_route.typed_per_filter_config[GLOBAL_FILTER].CopyFrom(pack(per_route))


class LocalRateLimitFeature:
    """Envoy's ``local_ratelimit`` filter: token buckets inside each Envoy, per route and key."""

    filter_name = LOCAL_FILTER

    def __init__(self, policies: _Policies | None = None) -> None:
        self._policies = policies or _Policies()

    def bind(self, policy: PolicySet) -> LocalRateLimitFeature:
        return LocalRateLimitFeature(_Policies(dict(policy.rate_limit_policies)))

    def applies(self, gateway: Gateway, routes: Sequence[Route]) -> bool:
        return any(self._policies.limits(route, "local") for route in routes)

    def http_filter(self, gateway: Gateway, routes: Sequence[Route]) -> hcm_pb2.HttpFilter:
        # Disabled at the listener; each limited route enables it with its own buckets.
        return hcm_pb2.HttpFilter(
            name=LOCAL_FILTER, typed_config=pack(local_pb2.LocalRateLimit(stat_prefix="local_rate_limit"))
        )

    def patch_route(self, route: Route, xds_route: rc_pb2.Route) -> None:
        limits = self._policies.limits(route, "local")
        if not limits:
            return
        enforcing = [entry for entry in limits if not entry[0].shadow]
        # Envoy enforces or not per filter instance: a route with any enforcing local limit keeps
        # only those; a route whose local limits are all shadow counts them without enforcing.
        shadow_only = not enforcing
        limits = limits if shadow_only else enforcing
        config = local_pb2.LocalRateLimit(
            stat_prefix="local_rate_limit",
            filter_enabled=_percent_all("local_rate_limit_enabled"),
            filter_enforced=_percent_all("local_rate_limit_enforced"),
            max_dynamic_descriptors=wrappers_pb2.UInt32Value(value=_MAX_DYNAMIC_DESCRIPTORS),
        )
        # The tightest limit is the advertised one on a 429 (the bucket that emptied is not known).
        tightest = min(
            (lim for _, _, lim in limits), key=lambda lim: lim.requests / RATE_UNIT_SECONDS[lim.per]
        )
        window = RATE_UNIT_SECONDS[tightest.per]
        for name, value in (
            ("ratelimit-limit", str(tightest.requests)),
            ("ratelimit-remaining", "0"),
            ("ratelimit-reset", str(window)),
            ("retry-after", str(window)),
        ):
            config.response_headers_to_add.append(
                base_pb2.HeaderValueOption(
                    header=base_pb2.HeaderValue(key=name, value=value),
                    append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
                )
            )
        route_wide = [lim for _, _, lim in limits if lim.by == "route"]
        if route_wide:
            config.token_bucket.CopyFrom(
                _bucket(min(route_wide, key=lambda x: x.requests / RATE_UNIT_SECONDS[x.per]))
            )
        else:
            # Requests no keyed bucket matches (e.g. no such header) pass: an ample default bucket.
            config.token_bucket.CopyFrom(
                token_bucket_pb2.TokenBucket(
                    max_tokens=1_000_000_000,
                    tokens_per_fill=wrappers_pb2.UInt32Value(value=1_000_000_000),
                    fill_interval=duration_pb2.Duration(seconds=1),
                )
            )
        for policy, index, limit in limits:
            if limit.by == "route":
                continue
            limit_id = d.limit_value(policy.name, str(index))
            actions = [_generic(d.LIMIT_KEY, limit_id), *_key_actions(limit.by, route)]
            config.rate_limits.append(rc_pb2.RateLimit(actions=actions))
            key = {
                "consumer": d.CONSUMER_KEY,
                "client_ip": "remote_address",
                "route": d.ROUTE_KEY,
            }.get(limit.by, d.HEADER_KEY)
            config.descriptors.append(
                common_rl_pb2.LocalRateLimitDescriptor(
                    entries=[
                        common_rl_pb2.RateLimitDescriptor.Entry(key=d.LIMIT_KEY, value=limit_id),
                        # An empty value is a wildcard: one bucket per distinct client IP / value.
                        common_rl_pb2.RateLimitDescriptor.Entry(key=key, value=""),
                    ],
                    token_bucket=_bucket(limit),
                )
            )
        if shadow_only:
            # Shadow: Envoy counts (stats local_rate_limit.rate_limited) but never enforces.
            config.filter_enforced.CopyFrom(_percent_none("local_rate_limit_enforced"))
        xds_route.typed_per_filter_config[LOCAL_FILTER].CopyFrom(pack(config))


def _bucket(limit: Limit) -> token_bucket_pb2.TokenBucket:
    return token_bucket_pb2.TokenBucket(
        max_tokens=limit.requests,
        tokens_per_fill=wrappers_pb2.UInt32Value(value=limit.requests),
        fill_interval=duration_pb2.Duration(seconds=RATE_UNIT_SECONDS[limit.per]),
    )


def _percent_all(runtime_key: str) -> base_pb2.RuntimeFractionalPercent:
    from envoy.type.v3 import percent_pb2

    return base_pb2.RuntimeFractionalPercent(
        default_value=percent_pb2.FractionalPercent(
            numerator=100, denominator=percent_pb2.FractionalPercent.HUNDRED
        ),
        runtime_key=runtime_key,
    )


def _percent_none(runtime_key: str) -> base_pb2.RuntimeFractionalPercent:
    from envoy.type.v3 import percent_pb2

    return base_pb2.RuntimeFractionalPercent(
        default_value=percent_pb2.FractionalPercent(
            numerator=0, denominator=percent_pb2.FractionalPercent.HUNDRED
        ),
        runtime_key=runtime_key,
    )
