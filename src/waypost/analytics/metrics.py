"""Prometheus metrics of call analytics, with bounded labels, on every replica's /metrics.

- ``waypost_analytics_requests_total{gateway,api,route,consumer,status}``: requests (sampled
  Gateways count each logged request by its weight); ``consumer`` is one of the route's top N or
  ``other`` and ``status`` one of the status classes, so series are bounded by the cap, and by
  :data:`MAX_SERIES` overall (the least recently updated series go first).
- ``waypost_analytics_request_duration_seconds{gateway,api,route}``: a histogram of total
  duration, built from the one-second sketches' bins (a bin counts in the bucket its
  representative value falls in: within the sketch's 1% of the boundary).
- ``waypost_analytics_bytes_total{gateway,api,route,direction}``.
- ``waypost_analytics_anomaly{consumer,kind}`` (1 while raised) and
  ``waypost_analytics_anomalies_total{kind}``.
- ``waypost_analytics_entries_total{node}`` (per Envoy node id: bounded by the fleet),
  ``waypost_analytics_streams``, ``waypost_analytics_dropped_total{reason}`` (entries or rows
  waypost itself lost: a bad entry, a failed write).

Entries Envoy loses never reach waypost, so Envoy counts them: ``logs_dropped`` (the stream was
backed up) and, while the collector is unreachable, entries handed to the logger
(``access_logs.grpc_access_log.logs_written``) that waypost never received: ``logs_written``
minus ``waypost_analytics_entries_total{node}`` (docs/analytics.md has the PromQL).

These are the contract of the fleet view (:mod:`waypost.analytics.fleet`): Prometheus sums them
across replicas.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Callable, Iterator

from prometheus_client import Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from waypost.analytics.anomaly import Anomaly
from waypost.analytics.cells import Cell, Key

__all__ = ["DROPPED", "DURATION_BUCKETS", "ENTRIES", "MAX_SERIES", "STREAMS", "AnalyticsMetrics"]

ENTRIES = Counter(
    "waypost_analytics_entries_total", "Access-log entries received, by Envoy node id.", ["node"]
)
STREAMS = Gauge("waypost_analytics_streams", "Envoy access-log streams connected.")
DROPPED = Counter(
    "waypost_analytics_dropped_total",
    "Entries or aggregate rows waypost lost, by reason (bad_entry, write_failed).",
    ["reason"],
)

MAX_SERIES = 20_000
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_ROUTE = tuple[str, str, str]


class AnalyticsMetrics(Collector):
    """Cumulative figures, fed once a second with the closed cells; read by Prometheus."""

    def __init__(self, anomalies: Callable[[], list[Anomaly]], raised: Callable[[], dict[str, int]]) -> None:
        self._requests: OrderedDict[Key, float] = OrderedDict()
        self._bytes: dict[_ROUTE, list[float]] = {}
        self._hist: dict[_ROUTE, list[float]] = {}
        self._sum: dict[_ROUTE, float] = {}
        self._anomalies = anomalies
        self._raised = raised

    def add(self, key: Key, cell: Cell) -> None:
        self._requests[key] = self._requests.pop(key, 0.0) + cell.requests
        if len(self._requests) > MAX_SERIES:
            self._requests.popitem(last=False)
        route = (key.gateway, key.api, key.route)
        sent = self._bytes.setdefault(route, [0.0, 0.0])
        sent[0] += cell.bytes_in
        sent[1] += cell.bytes_out
        counts = self._hist.get(route)
        if counts is None:
            counts = self._hist[route] = [0.0] * (len(DURATION_BUCKETS) + 1)
        sketch = cell.duration
        store, mapping = sketch._store, sketch._mapping
        for index, weight in enumerate(store.bins):
            if weight:
                seconds = mapping.value(store.offset + index) / 1000
                counts[bisect.bisect_left(DURATION_BUCKETS, seconds)] += weight
        counts[0] += sketch._zero_count
        self._sum[route] = self._sum.get(route, 0.0) + sketch.sum / 1000

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "waypost_analytics_requests",
            "Requests in Envoy's access log by gateway, api, route, consumer (top N or other), status.",
            labels=list(Key._fields),
        )
        for key, value in self._requests.items():
            requests.add_metric(list(key), value)
        yield requests
        sent = CounterMetricFamily(
            "waypost_analytics_bytes",
            "Body and header bytes, by direction (in, out).",
            labels=["gateway", "api", "route", "direction"],
        )
        for route, (bytes_in, bytes_out) in self._bytes.items():
            sent.add_metric([*route, "in"], bytes_in)
            sent.add_metric([*route, "out"], bytes_out)
        yield sent
        hist = HistogramMetricFamily(
            "waypost_analytics_request_duration_seconds",
            "Total request duration in Envoy, from the first byte in to the last byte out.",
            labels=["gateway", "api", "route"],
        )
        for route, counts in self._hist.items():
            cumulative, buckets = 0.0, []
            for bound, n in zip((*map(str, DURATION_BUCKETS), "+Inf"), counts, strict=True):
                cumulative += n
                buckets.append((bound, cumulative))
            hist.add_metric(list(route), buckets, self._sum.get(route, 0.0))
        yield hist
        active = GaugeMetricFamily(
            "waypost_analytics_anomaly",
            "1 while a consumer's anomaly is raised.",
            labels=["consumer", "kind"],
        )
        for anomaly in self._anomalies():
            active.add_metric([anomaly.consumer, anomaly.kind], 1.0)
        yield active
        raised = CounterMetricFamily(
            "waypost_analytics_anomalies", "Anomalies raised since start, by kind.", labels=["kind"]
        )
        for kind, n in self._raised().items():
            raised.add_metric([kind], float(n))
        yield raised
