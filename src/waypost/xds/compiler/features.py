"""HTTP filter features: each adds one Envoy HTTP filter to a gateway and patches its routes.

A feature is one module behind one small interface (:class:`HttpFeature`). The registry
:data:`HTTP_FEATURES` is an explicit tuple, in filter-chain order; the router filter always
comes last and is not a feature.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from waypost.policies.model import Gateway, PolicySet, Route
from waypost.xds.compiler.cors import CorsFeature
from waypost.xds.compiler.ratelimit import GlobalRateLimitFeature, LocalRateLimitFeature

__all__ = ["HTTP_FEATURES", "HttpFeature", "bind_features"]


class HttpFeature(Protocol):
    """One Envoy HTTP filter, configured from policy."""

    filter_name: str

    def applies(self, gateway: Gateway, routes: Sequence[Route]) -> bool:
        """Whether this gateway's filter chain needs the filter at all."""
        ...

    def http_filter(self, gateway: Gateway, routes: Sequence[Route]) -> hcm_pb2.HttpFilter: ...

    def patch_route(self, route: Route, xds_route: route_components_pb2.Route) -> None:
        """Add this feature's per-route config (typed_per_filter_config, actions) to one route."""
        ...


# Local limits run before the global ones: a request a local bucket refuses costs no RLS call.
HTTP_FEATURES: tuple[HttpFeature, ...] = (CorsFeature(), LocalRateLimitFeature(), GlobalRateLimitFeature())


def bind_features(policy: PolicySet) -> tuple[HttpFeature, ...]:
    """The registry with each feature that reads other documents (``with_policy``) bound to ``policy``.

    A Route names its RateLimitPolicy; the feature needs the policy's content to patch the route.
    """
    return tuple(
        f.with_policy(policy) if hasattr(f, "with_policy") else f  # type: ignore[attr-defined]
        for f in HTTP_FEATURES
    )
