"""Prometheus metrics of the rate-limit service (served on the admin port's /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

__all__ = [
    "RATELIMIT_DECISIONS",
    "RATELIMIT_OVER_LIMIT",
    "RATELIMIT_SHADOW_DENIALS",
    "RATELIMIT_STORE_ERRORS",
    "RATELIMIT_STORE_OUTAGES",
    "RATELIMIT_STORE_UP",
]

RATELIMIT_DECISIONS = Counter(
    "waypost_ratelimit_decisions_total",
    "Rate-limit decisions (one per ShouldRateLimit call), by result "
    "(ok, over_limit, shadow_over_limit, store_error).",
    ["result"],
)
RATELIMIT_OVER_LIMIT = Counter(
    "waypost_ratelimit_over_limit_total", "Descriptors over their limit and denied, by policy.", ["policy"]
)
RATELIMIT_SHADOW_DENIALS = Counter(
    "waypost_ratelimit_shadow_denials_total",
    "Descriptors over the limit of a shadow policy (reported, not denied), by policy.",
    ["policy"],
)
RATELIMIT_STORE_ERRORS = Counter(
    "waypost_ratelimit_store_errors_total", "Decisions the counter store (Redis) could not answer."
)
RATELIMIT_STORE_OUTAGES = Counter(
    "waypost_ratelimit_store_outages_total", "Times the counter store became unreachable."
)
RATELIMIT_STORE_UP = Gauge(
    "waypost_ratelimit_store_up", "1 while the counter store answers, 0 during an outage."
)
