"""HTTP filter features: each adds one Envoy HTTP filter to a gateway and patches its routes.

A feature is one module behind one small interface (:class:`HttpFeature`). The registry
:data:`HTTP_FEATURES` is an explicit tuple, in filter-chain order; the router filter always
comes last and is not a feature.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from waypost.policies.model import Gateway, Route
from waypost.xds.compiler.admission import AdmissionFeature
from waypost.xds.compiler.body_checks import BodyCheckFeature
from waypost.xds.compiler.cache import CacheFeature
from waypost.xds.compiler.compression import CompressionFeature
from waypost.xds.compiler.cors import CorsFeature
from waypost.xds.compiler.ext_authz import ExtAuthzFeature, IdentityHeadersFeature
from waypost.xds.compiler.fault import FaultFeature
from waypost.xds.compiler.grpc_json import GrpcJsonFeature
from waypost.xds.compiler.jwt_native import JwtAuthnFeature, NativeRbacFeature, patch_hcm_native_replies
from waypost.xds.compiler.observability import patch_hcm_observability, tracing_clusters
from waypost.xds.compiler.protection import (
    BodyLimitFeature,
    DenyFeature,
    patch_hcm_limits,
)
from waypost.xds.compiler.ratelimit import GlobalRateLimitFeature, LocalRateLimitFeature
from waypost.xds.compiler.screening import ScreenFeature, patch_hcm_screen_log
from waypost.xds.compiler.slow_clients import patch_hcm_slow_clients
from waypost.xds.compiler.upgrades import GrpcWebFeature

__all__ = ["GATEWAY_CLUSTERS", "HCM_HOOKS", "HTTP_FEATURES", "HcmHook", "HttpFeature"]


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


HTTP_FEATURES: tuple[HttpFeature, ...] = (
    # First, so nothing downstream (ext_authz included) ever sees a forged x-waypost-* header.
    IdentityHeadersFeature(),
    # Cheap refusals next: a denied or oversized request costs nothing further, no auth call.
    DenyFeature(),
    # Injection screening of path, query and headers: RE2 in Envoy, no call to waypost.
    ScreenFeature(),
    BodyLimitFeature(),
    FaultFeature(),
    # Before ext_authz: Envoy answers CORS preflights without asking for credentials.
    CorsFeature(),
    GrpcWebFeature(),
    # JWT-only policies Envoy enforces itself: verify, then authorize; no ext_authz call there.
    JwtAuthnFeature(),
    NativeRbacFeature(),
    ExtAuthzFeature(),
    # After ext_authz, whose dynamic metadata (consumer, plan) keys the limits; local buckets
    # before global ones, so a request a local bucket refuses costs no call to waypost.
    LocalRateLimitFeature(),
    GlobalRateLimitFeature(),
    # Body validation and screening in the decision service: after auth and rate limits, so a
    # request refused there costs no body buffering.
    BodyCheckFeature(),
    # Load shedding per Service: after every refusal above, so only requests that would reach
    # the Service count toward (and are shed by) its success rate.
    AdmissionFeature(),
    # Compressors sit before the cache, so the cache stores identity bodies and every hit is
    # compressed for the client that asks.
    CompressionFeature("brotli"),
    CompressionFeature("zstd"),
    CompressionFeature("gzip"),
    # The cache answers hits itself, skipping every filter after it: it must stay after any
    # filter that authenticates, authorizes or rate-limits a request.
    CacheFeature(),
    GrpcJsonFeature(),
)
"""In filter-chain order. A feature with a ``bind(policy)`` method is bound to each policy
version before use, for settings that need more of the policy than a gateway and its routes
(other documents, the files a route names)."""

HcmHook = Callable[[Gateway, hcm_pb2.HttpConnectionManager], None]
HCM_HOOKS: tuple[HcmHook, ...] = (
    patch_hcm_limits,
    patch_hcm_slow_clients,
    patch_hcm_observability,
    patch_hcm_native_replies,
    patch_hcm_screen_log,
)
"""Gateway features that are connection-manager settings rather than HTTP filters."""

GATEWAY_CLUSTERS: tuple[Callable[[Gateway], Sequence[cluster_pb2.Cluster]], ...] = (tracing_clusters,)
"""Clusters a Gateway needs for itself (e.g. a tracing collector), beside its Routes' Services."""
