"""Call analytics units: sketch encoding, status classes, the consumer cap under a flood, rollups,
the SQLite store across a reopen, the figures, the collector's entry decoding, and the anomaly
rule on steady and departing traffic."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from envoy.data.accesslog.v3 import accesslog_pb2
from google.protobuf import struct_pb2

from waypost.analytics.aggregate import DAY, HOUR, MINUTE, SECOND, Aggregator
from waypost.analytics.anomaly import WARMUP, WINDOW, AnomalyDetector, WindowCounts
from waypost.analytics.cardinality import ConsumerCap
from waypost.analytics.cells import OTHER_CONSUMER, Key, status_class
from waypost.analytics.collector import AUTHZ_NAMESPACE, SAMPLE_TAG, Collector
from waypost.analytics.query import figures, parse_range, resolution_for
from waypost.analytics.service import Analytics, AnalyticsOptions
from waypost.analytics.sketch import decode, encode, new_sketch, quantile
from waypost.analytics.store import Retention, Store

T0 = 1_800_000_000 - 1_800_000_000 % DAY + 3 * HOUR  # a day boundary plus three hours


def record(
    agg: Aggregator,
    now: int,
    consumer: str = "acme",
    status: int = 200,
    ms: float = 10.0,
    *,
    route: str = "orders",
    plan: str = "",
) -> None:
    agg.record(
        now,
        gateway="public",
        route=route,
        consumer=consumer,
        plan=plan,
        method="GET",
        status=status,
        flags="",
        duration_ms=ms,
        upstream_ms=ms / 2,
        bytes_in=100,
        bytes_out=1000,
    )


def test_sketch_round_trip_and_accuracy() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(3, 1) for _ in range(5000)]
    sketch = new_sketch()
    for v in values:
        sketch.add(v)
    copy = decode(encode(sketch))
    assert copy.count == sketch.count and copy.sum == pytest.approx(sketch.sum)
    values.sort()
    for q in (0.5, 0.95, 0.99):
        exact = values[int(q * (len(values) - 1))]
        assert quantile(copy, q) == pytest.approx(exact, rel=0.011)
    with pytest.raises(ValueError):
        decode(b"nonsense")


def test_status_classes_name_401_403_429() -> None:
    assert [status_class(c) for c in (200, 301, 401, 403, 404, 429, 503, 0)] == [
        "2xx",
        "3xx",
        "401",
        "403",
        "4xx",
        "429",
        "5xx",
        "other",
    ]


def test_consumer_cap_folds_a_flood_into_other_and_promotes_the_busiest() -> None:
    cap = ConsumerCap(top=3, track=50)
    labels = {cap.admit(f"id-{i}", 1, period=0) for i in range(10_000)}
    assert labels == {"id-0", "id-1", "id-2", OTHER_CONSUMER}
    assert len(cap._counts) == 50  # bounded whatever the flood
    for _ in range(100):
        cap.admit("id-7", 1, period=0)  # busy, but folded into other this period
    assert cap.admit("id-7", 1, period=1) == "id-7"  # the next period it has its own series


def test_flush_rolls_seconds_into_minutes_hours_days() -> None:
    agg = Aggregator()
    for i in range(3):
        record(agg, T0 + i, ms=10.0 * (i + 1))
    record(agg, T0 + 61, status=503)
    closed = agg.flush(T0 + 62)
    assert sorted(closed.seconds) == [T0, T0 + 1, T0 + 2, T0 + 61]
    by_res: dict[int, list[float]] = {}
    for row in closed.rows:
        by_res.setdefault(row.resolution, []).append(row.requests)
    assert sum(by_res[SECOND]) == 4
    assert sorted(by_res[MINUTE]) == [1, 3]  # two minutes (one of them 5xx)
    assert sum(by_res[HOUR]) == 4 and sum(by_res[DAY]) == 4
    assert len(agg.open_cells(MINUTE)) == 1  # the ended minute left memory once written


def test_store_survives_reopen_and_prunes(tmp_path: Path) -> None:
    agg = Aggregator()
    record(agg, T0, consumer="acme", plan="gold")
    record(agg, T0, consumer="globex", status=429)
    store = Store(tmp_path)
    store.write(agg.flush(T0 + 1).rows, dict(agg.plans))
    store.close()

    store = Store(tmp_path)
    assert store.plans() == {"acme": "gold"}
    restored = Aggregator()
    restored.restore((r.resolution, r.start, r.key, r.cell) for r in store.open_rollups(T0 + 5))
    record(restored, T0 + 5, consumer="acme")
    store.write(restored.flush(T0 + 6).rows)
    minute = store.rows(MINUTE, T0, T0)
    assert sum(r.cell.requests for r in minute) == 3
    assert sum(r.cell.requests for r in store.rows(SECOND, T0, T0 + 10, {"consumer": "acme"})) == 2
    assert store.prune(T0 + 2 * 3600, Retention(second=3600)) == 3  # the three second rows
    assert store.rows(SECOND, 0, T0 + 10) == []
    with pytest.raises(ValueError):
        store.rows(SECOND, 0, 1, {"nope": "x"})


def test_figures_totals_tops_and_filled_series(tmp_path: Path) -> None:
    agg = Aggregator()
    for _ in range(4):
        record(agg, T0, consumer="acme", ms=20)
    record(agg, T0 + 2, consumer="globex", status=401)
    record(agg, T0 + 2, consumer="globex", status=503, route="billing")
    store = Store(tmp_path)
    store.write(agg.flush(T0 + 3).rows)
    data = figures(
        store.rows(SECOND, T0, T0 + 3), start=T0, end=T0 + 3, resolution=1, filters={}, plans={"acme": "gold"}
    )
    totals = data["totals"]
    assert (totals["requests"], totals["errors"], totals["unauthorized"]) == (6, 1, 1)
    assert totals["p50_ms"] == pytest.approx(20, rel=0.01)
    assert [c["consumer"] for c in data["top_consumers"]] == ["acme", "globex"]
    assert data["top_consumers"][0]["plan"] == "gold"
    assert [p["requests"] for p in data["series"]] == [4, 0, 2, 0]


def test_ranges() -> None:
    assert parse_range("15m") == 900 and parse_range("7d") == 7 * 86400
    for bad in ("", "15", "1y", "0s", "99999d"):
        with pytest.raises(ValueError):
            parse_range(bad)
    assert [resolution_for(s) for s in (60, 3600, 86400, 30 * 86400)] == [1, 60, 3600, 86400]


def test_collector_reads_envoy_entries() -> None:
    entry = accesslog_pb2.HTTPAccessLogEntry()
    common = entry.common_properties
    common.route_name = "orders"
    common.duration.FromMilliseconds(42)
    common.time_to_first_upstream_tx_byte.FromMilliseconds(2)
    common.time_to_last_upstream_rx_byte.FromMilliseconds(32)
    common.response_flags.upstream_request_timeout = True
    common.custom_tags[SAMPLE_TAG] = "25"
    metadata = struct_pb2.Struct()
    metadata.update({"consumer": "acme", "plan": "gold"})
    common.metadata.filter_metadata[AUTHZ_NAMESPACE].CopyFrom(metadata)
    entry.request.request_method = 3  # POST
    entry.request.request_headers_bytes = 100
    entry.request.request_body_bytes = 20
    entry.response.response_code.value = 504
    entry.response.response_body_bytes = 7
    agg = Aggregator()
    assert Collector(agg).ingest("public", [entry], T0) == 1
    (key, cell), *_ = agg.flush(T0 + 1).seconds[T0].items()
    assert key == Key("public", "", "orders", "acme", "5xx")
    assert cell.requests == 4  # sampled at 25%: one entry stands for four requests
    assert cell.methods == {"POST": 4} and cell.flags == {"UT": 4}
    assert cell.bytes_in == 480 and cell.bytes_out == 28
    assert quantile(cell.duration, 0.5) == pytest.approx(42, rel=0.01)
    assert quantile(cell.upstream, 0.5) == pytest.approx(30, rel=0.01)
    assert agg.plans == {"acme": "gold"}


def _steady(detector: AnomalyDetector, windows: int, start: int, rate: float = 20.0) -> int:
    """Feed ``windows`` windows of steady traffic, returning the next second."""
    s = start
    for _ in range(windows * WINDOW):
        detector.observe(s, {"acme": WindowCounts(rate, rate * 0.01, rate * 0.02)})
        s += 1
    return s


def test_anomaly_rule_flags_departures_only() -> None:
    detector = AnomalyDetector()
    s = _steady(detector, WARMUP + 30, T0)
    assert detector.active() == [] and sum(detector.raised_total.values()) == 0
    # A spike: ten times the request rate for one window.
    raised = []
    for _ in range(WINDOW):
        raised += detector.observe(s, {"acme": WindowCounts(200, 2, 4)})
        s += 1
    raised += detector.observe(s, {})
    assert [(a.consumer, a.kind) for a in raised] == [("acme", "requests")]
    # An error burst at the usual rate.
    s = _steady(detector, 30, s + 1)
    raised = []
    for _ in range(WINDOW + 1):
        raised += detector.observe(s, {"acme": WindowCounts(20, 15, 0)})
        s += 1
    assert [a.kind for a in raised] == ["errors"]
    assert {a.kind for a in detector.active()} >= {"errors"}


async def test_service_validates_queries(tmp_path: Path) -> None:
    analytics = Analytics(AnalyticsOptions(port=0, data_dir=tmp_path))
    await analytics.start("127.0.0.1")
    try:
        assert (await analytics.figures_response({"range": "1y"}))[0] == 400
        status, body = await analytics.figures_response({"range": "5m", "colour": "red"})
        assert status == 400 and "colour" in body["error"]
        assert (await analytics.fleet_response({}))[0] == 404
        status, body = await analytics.figures_response({"range": "5m", "consumer": "acme"})
        assert status == 200 and body["totals"]["requests"] == 0
        assert (await analytics.live_response({"seconds": "x"}))[0] == 400
    finally:
        await analytics.stop()
    await asyncio.sleep(0)


def test_metrics_bounded_labels_histogram_and_anomaly_gauge() -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from waypost.analytics.anomaly import Anomaly
    from waypost.analytics.metrics import AnalyticsMetrics

    agg = Aggregator()
    for ms in (3.0, 30.0, 300.0):
        record(agg, T0, ms=ms)
    anomaly = Anomaly("acme", "requests", T0, T0, 10.0, 1.0, "request rate spike")
    metrics = AnalyticsMetrics(lambda: [anomaly], lambda: {"requests": 1, "errors": 0, "denied": 0})
    for key, cell in agg.flush(T0 + 1).seconds[T0].items():
        metrics.add(key, cell)
    registry = CollectorRegistry()
    registry.register(metrics)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(generate_latest(registry).decode())
        for s in f.samples
    }
    labels = (
        ("api", ""),
        ("consumer", "acme"),
        ("gateway", "public"),
        ("route", "orders"),
        ("status", "2xx"),
    )
    assert samples[("waypost_analytics_requests_total", labels)] == 3
    route = (("api", ""), ("gateway", "public"), ("route", "orders"))
    assert samples[("waypost_analytics_request_duration_seconds_count", route)] == 3
    assert (
        samples[
            ("waypost_analytics_request_duration_seconds_bucket", tuple(sorted((*route, ("le", "0.005")))))
        ]
        == 1
    )
    assert (
        samples[
            ("waypost_analytics_request_duration_seconds_bucket", tuple(sorted((*route, ("le", "0.05")))))
        ]
        == 2
    )
    assert samples[("waypost_analytics_anomaly", (("consumer", "acme"), ("kind", "requests")))] == 1
    assert samples[("waypost_analytics_anomalies_total", (("kind", "requests"),))] == 1


def test_api_dimension_from_the_policy() -> None:
    from types import SimpleNamespace

    from waypost.analytics.routes import route_apis

    policy = SimpleNamespace(
        apis={
            "shop": SimpleNamespace(routes=("orders", "billing")),
            "zzz": SimpleNamespace(routes=("orders",)),  # listed twice: the first Api by name wins
        }
    )
    assert route_apis(policy) == {"orders": "shop", "billing": "shop"}  # type: ignore[arg-type]
    agg = Aggregator()
    agg.api_of = route_apis(policy)  # type: ignore[arg-type]
    record(agg, T0)
    (key,) = agg.flush(T0 + 1).seconds[T0]
    assert key.api == "shop"
