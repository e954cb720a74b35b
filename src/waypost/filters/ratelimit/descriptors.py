"""The descriptor contract between the compiler (Envoy's rate-limit actions) and the RLS.

One module both sides import, so the keys Envoy sends and the keys the service reads cannot
drift apart. A global descriptor is ``limit=<policy>/<index>`` followed by the entry the limit is
keyed by (``consumer`` [+ ``plan``], ``remote_address``, ``header``, ``route``).
"""

from __future__ import annotations

__all__ = [
    "CONSUMER_KEY",
    "DOMAIN",
    "HEADER_KEY",
    "LIMIT_KEY",
    "METADATA_CONSUMER",
    "METADATA_NAMESPACE",
    "METADATA_PLAN",
    "PLANS_ONLY",
    "PLAN_KEY",
    "ROUTE_KEY",
    "limit_value",
    "parse_limit_value",
]

DOMAIN = "waypost"
LIMIT_KEY = "limit"
CONSUMER_KEY = "consumer"
PLAN_KEY = "plan"
HEADER_KEY = "header"
ROUTE_KEY = "route"
REMOTE_ADDRESS_KEY = "remote_address"
PLANS_ONLY = "plans"
"""The limit index of the implicit per-consumer limit of a policy with plans but no consumer limit."""

# Contract with the ext_authz decision service: it sets these string keys in this namespace.
METADATA_NAMESPACE = "envoy.filters.http.ext_authz"
METADATA_CONSUMER = "consumer"
METADATA_PLAN = "plan"


def limit_value(policy: str, limit_id: str) -> str:
    # Policy names cannot contain '/', so the split is unambiguous.
    return f"{policy}/{limit_id}"


def parse_limit_value(value: str) -> tuple[str, str]:
    policy, _, limit_id = value.partition("/")
    return policy, limit_id
