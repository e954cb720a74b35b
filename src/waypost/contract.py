"""What the compiler and the decision services must agree on, written once.

Below both (imports nothing of waypost): the compiler builds Envoy config from these names, the
decision services read requests by them, and a drift would fail silently at run time (a descriptor
nobody counts, a metadata key nobody reads). Every name here is API: Envoys in the field hold
config naming them, so renaming one is a migration, not a refactor.
"""

from __future__ import annotations

__all__ = [
    "ANALYTICS_CLUSTER",
    "ANALYTICS_SAMPLE_TAG",
    "AUTHZ_CLUSTER",
    "AUTHZ_GRPC_SERVICE",
    "AUTHZ_HTTP_CLUSTER",
    "AUTHZ_HTTP_HEALTH_PATH",
    "AUTHZ_HTTP_PATH_PREFIX",
    "BODY_CHECK_EXTENSION",
    "CONSUMER_HEADER",
    "CONSUMER_KEY",
    "DECISION_CLUSTERS",
    "DOMAIN",
    "HEADER_KEY",
    "IDENTITY_HEADER_PREFIX",
    "LIMIT_KEY",
    "METADATA_CONSUMER",
    "METADATA_NAMESPACE",
    "METADATA_PLAN",
    "PLANS_ONLY",
    "PLAN_KEY",
    "RATELIMIT_CLUSTER",
    "RATELIMIT_GRPC_SERVICE",
    "REMOTE_ADDRESS_KEY",
    "ROUTE_KEY",
    "XDS_CLUSTER",
    "limit_value",
    "parse_limit_value",
]

# --- Clusters -------------------------------------------------------------------------------------

XDS_CLUSTER = "waypost_xds"
"""The one static cluster of every bootstrap: the ADS stream to waypost."""

AUTHZ_CLUSTER = "waypost_authz"
"""The ext_authz Check service (gRPC), delivered over CDS/EDS to node groups that need it."""

AUTHZ_HTTP_CLUSTER = "waypost_authz_http"
"""The same decision core's HTTP/1.1 endpoint, for Gateways with ``auth_service: http``."""

RATELIMIT_CLUSTER = "waypost_ratelimit"
"""The rate-limit service (Envoy's RLS), for Gateways whose Routes have global limits."""

BODY_CHECK_EXTENSION = "check"
"""The ext_authz context extension naming the route on Checks from the body-checks filter
(validation, body screening); auth Checks never carry it, so the Check service tells them apart."""

DECISION_CLUSTERS = (AUTHZ_CLUSTER, AUTHZ_HTTP_CLUSTER, RATELIMIT_CLUSTER)
"""In the order /status and the dashboard list them."""

ANALYTICS_CLUSTER = "waypost_analytics"
"""The call-analytics collector (Envoy's gRPC access-log service), for Gateways with analytics on."""

ANALYTICS_SAMPLE_TAG = "waypost.sample"
"""Access-log custom tag with the Gateway's sample percentage: the collector counts each entry as
100/sample requests."""

AUTHZ_GRPC_SERVICE = "envoy.service.auth.v3.Authorization"
RATELIMIT_GRPC_SERVICE = "envoy.service.ratelimit.v3.RateLimitService"
"""gRPC service names: what the decision ports serve, and what Envoy's gRPC health checks ask."""

# --- ext_authz --------------------------------------------------------------------------------------

CONSUMER_HEADER = "x-waypost-consumer"
"""Set on allowed requests (by ext_authz or the native JWT path): who the caller is."""

IDENTITY_HEADER_PREFIX = "x-waypost-"
"""Identity headers only waypost sets; every gateway strips client-sent ones first."""

AUTHZ_HTTP_PATH_PREFIX = "/_waypost/"
"""HTTP mode: Envoy asks ``/_waypost/<route><original path>`` (route name in the path)."""

AUTHZ_HTTP_HEALTH_PATH = "/healthz"
"""HTTP mode: 200 once a policy version is loaded (Envoy's active health check)."""

METADATA_NAMESPACE = "envoy.filters.http.ext_authz"
"""Where Envoy files the dynamic metadata of ext_authz answers (string keys below)."""
METADATA_CONSUMER = "consumer"
METADATA_PLAN = "plan"
"""Set only when the Consumer has a plan. The HTTP endpoint sends both as response headers."""

# --- Rate-limit descriptors -------------------------------------------------------------------------
# A global descriptor is ``limit=<policy>/<index>`` followed by the entry the limit is keyed by
# (``consumer`` [+ ``plan``], ``remote_address``, ``header``, ``route``).

DOMAIN = "waypost"
LIMIT_KEY = "limit"
CONSUMER_KEY = "consumer"
PLAN_KEY = "plan"
HEADER_KEY = "header"
ROUTE_KEY = "route"
REMOTE_ADDRESS_KEY = "remote_address"
PLANS_ONLY = "plans"
"""The limit index of the implicit per-consumer limit of a policy with plans but no consumer limit."""


def limit_value(policy: str, limit_id: str) -> str:
    # Policy names cannot contain '/', so the split is unambiguous.
    return f"{policy}/{limit_id}"


def parse_limit_value(value: str) -> tuple[str, str]:
    policy, _, limit_id = value.partition("/")
    return policy, limit_id
