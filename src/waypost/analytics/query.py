"""Figures over a time range, computed from stored rows: totals, status classes, error and
denial rates, p50/p95/p99 latency, top APIs, consumers and routes, and a time series.

Pure functions of rows (no I/O): the service reads the rows, this module shapes the JSON that the
analytics page, ``/analytics.json`` and ``waypost top`` all show, so the three always agree.

A range is read at one resolution (:func:`resolution_for`), chosen so a chart has at most a few
hundred points: up to 5 minutes in seconds, up to 5 hours in minutes, up to 10 days in hours,
longer in days. The range's start is rounded down to that resolution.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from waypost.analytics.cells import DENIED, ERRORS, LIMITED, Cell, Key
from waypost.analytics.sketch import quantile
from waypost.analytics.store import StoredRow

__all__ = ["DIMENSIONS", "figures", "parse_range", "resolution_for"]

DIMENSIONS = ("gateway", "api", "route", "consumer")
"""Filters a query may set (drill-down)."""

_RANGE = re.compile(r"^(\d{1,6})(s|m|h|d)$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_RANGE = 730 * 86400
TOP = 10


def parse_range(text: str) -> int:
    """``15m`` -> 900; raises ValueError with a message fit for a 400 response."""
    match = _RANGE.match(text.strip())
    if match is None:
        raise ValueError(f"range {text!r}: write a number and a unit, e.g. 30s, 15m, 6h, 7d")
    seconds = int(match[1]) * _UNIT[match[2]]
    if not 1 <= seconds <= MAX_RANGE:
        raise ValueError(f"range {text!r}: between 1s and {MAX_RANGE // 86400}d")
    return seconds


def resolution_for(span: int) -> int:
    if span <= 300:
        return 1
    if span <= 5 * 3600:
        return 60
    if span <= 10 * 86400:
        return 3600
    return 86400


def _merge(cells: Iterable[Cell]) -> Cell:
    total = Cell()
    for cell in cells:
        total.merge(cell)
    return total


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _summary(rows: Sequence[StoredRow]) -> dict[str, Any]:
    """Counts and latency of a set of rows (any keys, any buckets)."""
    by_status: dict[str, float] = {}
    for row in rows:
        by_status[row.key.status] = by_status.get(row.key.status, 0.0) + row.cell.requests
    cell = _merge(row.cell for row in rows)
    requests = cell.requests

    def share(names: frozenset[str]) -> float:
        return sum(n for status, n in by_status.items() if status in names)

    errors, denied, limited = share(ERRORS), share(DENIED), share(LIMITED)
    return {
        "requests": requests,
        "errors": errors,
        "error_rate": round(errors / requests, 6) if requests else 0.0,
        "denied": denied,
        "unauthorized": by_status.get("401", 0.0),
        "forbidden": by_status.get("403", 0.0),
        "limited": limited,
        "status": dict(sorted(by_status.items())),
        "bytes_in": cell.bytes_in,
        "bytes_out": cell.bytes_out,
        "p50_ms": _ms(quantile(cell.duration, 0.5)),
        "p95_ms": _ms(quantile(cell.duration, 0.95)),
        "p99_ms": _ms(quantile(cell.duration, 0.99)),
        "upstream_p50_ms": _ms(quantile(cell.upstream, 0.5)),
        "upstream_p99_ms": _ms(quantile(cell.upstream, 0.99)),
        "methods": dict(sorted(cell.methods.items())),
        "flags": dict(sorted(cell.flags.items())),
    }


def _top(rows: Sequence[StoredRow], dimension: Callable[[Key], str], name: str) -> list[dict[str, Any]]:
    groups: dict[str, list[StoredRow]] = {}
    for row in rows:
        groups.setdefault(dimension(row.key), []).append(row)
    ranked = sorted(groups.items(), key=lambda item: -sum(r.cell.requests for r in item[1]))
    out = []
    for value, group in ranked[:TOP]:
        summary = _summary(group)
        out.append(
            {
                name: value,
                **{
                    k: summary[k]
                    for k in (
                        "requests",
                        "errors",
                        "error_rate",
                        "denied",
                        "limited",
                        "p50_ms",
                        "p95_ms",
                        "p99_ms",
                    )
                },
            }
        )
    return out


def figures(
    rows: Sequence[StoredRow],
    *,
    start: int,
    end: int,
    resolution: int,
    filters: Mapping[str, str],
    plans: Mapping[str, str],
) -> dict[str, Any]:
    buckets: dict[int, list[StoredRow]] = {}
    for row in rows:
        buckets.setdefault(row.start, []).append(row)
    series = []
    # Every bucket of the range, empty ones as zeros, so a chart spans the range chosen.
    first = start - start % resolution
    for t in range(first, end - end % resolution + 1, resolution):
        s = _summary(buckets.get(t, []))
        series.append(
            {k: s[k] for k in ("requests", "errors", "denied", "limited", "p50_ms", "p95_ms", "p99_ms")}
            | {"t": t}
        )
    consumers = _top(rows, lambda k: k.consumer, "consumer")
    for entry in consumers:
        entry["plan"] = plans.get(entry["consumer"], "")
    return {
        "from": start,
        "to": end,
        "resolution": resolution,
        "filters": dict(filters),
        "totals": _summary(rows),
        "top_apis": _top(rows, lambda k: k.api, "api"),
        "top_consumers": consumers,
        "top_routes": _top(rows, lambda k: k.route, "route"),
        "series": series,
    }
