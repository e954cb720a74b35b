"""Prometheus metrics of the waypost process, served on the admin port at /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Info

__all__ = [
    "AUTHZ_DECISIONS",
    "POLICY_INFO",
    "POLICY_LOADS",
    "XDS_NACKS",
    "XDS_PUSHES",
    "XDS_STREAMS",
]

POLICY_LOADS = Counter(
    "waypost_policy_loads_total",
    "Policy directory loads, by result (applied, unchanged, invalid).",
    ["result"],
)
POLICY_INFO = Info("waypost_policy", "The policy version currently served.")
XDS_STREAMS = Gauge("waypost_xds_streams", "Connected xDS streams, by protocol.", ["protocol"])
XDS_PUSHES = Counter(
    "waypost_xds_pushes_total", "xDS responses sent, by type and node group.", ["type", "group"]
)
XDS_NACKS = Counter("waypost_xds_nacks_total", "xDS responses Envoy rejected, by type.", ["type"])

AUTHZ_DECISIONS = Counter(
    "waypost_authz_decisions_total",
    "ext_authz decisions, by route and decision (allow, deny, dry_run_deny).",
    ["route", "decision"],
)
