"""Fleet-wide figures from a Prometheus server (``waypost serve --prometheus-url``).

Every replica exports the same aggregates on /metrics (:mod:`waypost.analytics.metrics`); a real
Prometheus scraping all of them is the engine that sums across replicas. This module only asks
it, over its HTTP API (``/api/v1/query``), and shapes the answers:

- ``totals``: requests per replica (``instance``) and their sum, from the counters' current
  values (exact: no extrapolation);
- over the chosen range: requests by api, consumer and status class (``increase()``, which
  Prometheus extrapolates to the range's edges), and p50/p95/p99 from the summed histograms.

Blocking (urllib): call it in a worker thread.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

__all__ = ["FleetError", "fleet_figures"]

REQUESTS = "waypost_analytics_requests_total"
DURATION = "waypost_analytics_request_duration_seconds_bucket"


class FleetError(Exception):
    """Prometheus could not be asked or refused the query; the message says which and why."""


def _query(base: str, promql: str, timeout: float) -> list[dict[str, Any]]:
    url = f"{base.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            body = json.load(reply)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise FleetError(f"prometheus at {base}: {exc}") from exc
    if body.get("status") != "success":
        raise FleetError(f"prometheus at {base}: {body.get('error', 'query failed')} ({promql})")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _by(rows: list[dict[str, Any]], label: str) -> list[dict[str, Any]]:
    out = [
        {label: row["metric"].get(label, ""), "requests": round(float(row["value"][1]), 3)} for row in rows
    ]
    return sorted(out, key=lambda r: -r["requests"])


def _scalar(rows: list[dict[str, Any]]) -> float | None:
    if not rows:
        return None
    value = float(rows[0]["value"][1])
    return None if value != value else value  # NaN: no data in range


def fleet_figures(base: str, range_text: str, *, timeout: float = 5.0) -> dict[str, Any]:
    """``range_text`` is a Prometheus duration (``15m``), already validated by the caller."""
    per_instance = _by(_query(base, f"sum by (instance) ({REQUESTS})", timeout), "instance")
    window = f"[{range_text}]"
    increase = f"increase({REQUESTS}{window})"
    quantiles = {}
    for name, q in (("p50_ms", 0.5), ("p95_ms", 0.95), ("p99_ms", 0.99)):
        seconds = _scalar(
            _query(base, f"histogram_quantile({q}, sum by (le) (rate({DURATION}{window})))", timeout)
        )
        quantiles[name] = None if seconds is None else round(seconds * 1000, 3)
    anomalies = _query(base, "waypost_analytics_anomaly == 1", timeout)
    return {
        "prometheus": base,
        "range": range_text,
        "totals": {
            "requests": round(sum(r["requests"] for r in per_instance), 3),
            "replicas": per_instance,
        },
        "in_range": {
            "requests": _scalar(_query(base, f"sum({increase})", timeout)) or 0.0,
            "by_api": _by(_query(base, f"sum by (api) ({increase})", timeout), "api"),
            "by_consumer": _by(_query(base, f"sum by (consumer) ({increase})", timeout), "consumer"),
            "by_status": _by(_query(base, f"sum by (status) ({increase})", timeout), "status"),
            **quantiles,
        },
        "anomalies": sorted(
            {(r["metric"].get("consumer", ""), r["metric"].get("kind", "")) for r in anomalies}
        ),
    }
