"""Call analytics: every request Envoy serves, counted per gateway, api, route, consumer and
status class, from Envoy's own gRPC access-log stream.

Flow: Envoy (``http_grpc`` access logger, compiled per Gateway by
:mod:`waypost.xds.compiler.analytics`) -> :mod:`.collector` (gRPC ``StreamAccessLogs``) ->
:mod:`.aggregate` (one-second cells, rollups; consumers capped by :mod:`.cardinality`, latency
in :mod:`.sketch`) -> :mod:`.store` (SQLite) and :mod:`.metrics` (Prometheus), with
:mod:`.anomaly` watching each consumer. :mod:`.query` shapes the figures every view shows;
:mod:`.service` wires it into ``waypost serve``; :mod:`.top` is ``waypost top``.

Imports only the policy model and shared names; the server imports this package, never the
reverse (except the admin server's page types).
"""

from waypost.analytics.service import Analytics, AnalyticsOptions
from waypost.analytics.store import Retention

__all__ = ["Analytics", "AnalyticsOptions", "Retention"]
