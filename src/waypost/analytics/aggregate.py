"""The aggregator: access-log entries in, one-second cells out, rolled up into minutes, hours
and days.

Entries are counted in the second waypost receives them (Envoy flushes its log buffer every
second, so a request shows at most about a second after it completed). :meth:`Aggregator.flush`,
called once a second, closes every second before ``now``: each closed cell is merged into the
open minute, hour and day (UTC) of its key, and the closed seconds plus every rollup cell they
touched are returned as :class:`Row` values for the store to write. Rollups live in memory only
while their period is open (at most one minute, hour and day per key), so memory is bounded by
the number of keys, which the consumer cap bounds (see :mod:`waypost.analytics.cardinality`).

Event loop only: :meth:`record` and :meth:`flush` must not run concurrently.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from waypost.analytics.cardinality import ConsumerCap
from waypost.analytics.cells import DENIED, ERRORS, LIMITED, OTHER_CONSUMER, Cell, Key, status_class
from waypost.analytics.sketch import encode

__all__ = ["RESOLUTIONS", "Aggregator", "Row", "encode_row"]

SECOND, MINUTE, HOUR, DAY = 1, 60, 3600, 86400
RESOLUTIONS = (SECOND, MINUTE, HOUR, DAY)
_ROLLUPS = (MINUTE, HOUR, DAY)


@dataclass(frozen=True, slots=True)
class Row:
    """One cell of one bucket, as the store writes it (sketches encoded)."""

    resolution: int
    start: int
    key: Key
    requests: float
    bytes_in: float
    bytes_out: float
    duration_sum: float
    upstream_sum: float
    duration: bytes
    upstream: bytes
    methods: Mapping[str, float]
    flags: Mapping[str, float]


def encode_row(resolution: int, start: int, key: Key, cell: Cell) -> Row:
    return Row(
        resolution,
        start,
        key,
        cell.requests,
        cell.bytes_in,
        cell.bytes_out,
        cell.duration.sum,
        cell.upstream.sum,
        encode(cell.duration),
        encode(cell.upstream),
        dict(cell.methods),
        dict(cell.flags),
    )


@dataclass(frozen=True)
class Closed:
    """What one :meth:`Aggregator.flush` closed: cells per second, and the rows to write."""

    seconds: dict[int, dict[Key, Cell]]
    rows: list[Row]


class Aggregator:
    def __init__(self, *, top_consumers: int = 20, tracked_consumers: int = 1000) -> None:
        self._top = top_consumers
        self._track = tracked_consumers
        self._caps: dict[tuple[str, str], ConsumerCap] = {}
        self._seconds: dict[int, dict[Key, Cell]] = {}
        self._open: dict[int, dict[tuple[int, Key], Cell]] = {r: {} for r in _ROLLUPS}
        self.api_of: Mapping[str, str] = {}
        """Route name -> Api name, from the current policy (empty when no Api kind exists)."""
        self.plans: dict[str, str] = {}
        """Consumer -> the plan its latest request carried (ext_authz metadata)."""
        self.entries = 0

    def record(
        self,
        now: int,
        *,
        gateway: str,
        route: str,
        consumer: str,
        plan: str,
        method: str,
        status: int,
        flags: str,
        duration_ms: float,
        upstream_ms: float | None,
        bytes_in: int,
        bytes_out: int,
        weight: float = 1.0,
    ) -> None:
        """Count one request in second ``now`` (integer epoch seconds)."""
        self.entries += 1
        cap = self._caps.get((gateway, route))
        if cap is None:
            cap = self._caps[(gateway, route)] = ConsumerCap(top=self._top, track=self._track)
        label = cap.admit(consumer, weight, now // MINUTE)
        if plan and label != OTHER_CONSUMER:
            self.plans[label] = plan
        key = Key(gateway, self.api_of.get(route, ""), route, label, status_class(status))
        cells = self._seconds.get(now)
        if cells is None:
            cells = self._seconds[now] = {}
        cell = cells.get(key)
        if cell is None:
            cell = cells[key] = Cell()
        cell.add(
            weight=weight,
            method=method,
            flags=flags,
            duration_ms=duration_ms,
            upstream_ms=upstream_ms,
            bytes_in=bytes_in,
            bytes_out=bytes_out,
        )

    def restore(self, rows: Iterable[tuple[int, int, Key, Cell]]) -> None:
        """Reopen rollup cells read back from the store (a restart mid-period keeps adding to them)."""
        for resolution, start, key, cell in rows:
            if resolution in self._open:
                self._open[resolution][(start, key)] = cell

    def flush(self, now: int) -> Closed:
        """Close every second before ``now`` and roll it up; see the module docstring."""
        closed = {s: cells for s, cells in self._seconds.items() if s < now}
        for s in closed:
            del self._seconds[s]
        rows = [
            encode_row(SECOND, s, key, cell) for s, cells in closed.items() for key, cell in cells.items()
        ]
        touched: set[tuple[int, int, Key]] = set()
        for s, cells in closed.items():
            for resolution in _ROLLUPS:
                start = s - s % resolution
                open_cells = self._open[resolution]
                for key, cell in cells.items():
                    target = open_cells.get((start, key))
                    if target is None:
                        target = open_cells[(start, key)] = Cell()
                    target.merge(cell)
                    touched.add((resolution, start, key))
        rows.extend(
            encode_row(resolution, start, key, self._open[resolution][(start, key)])
            for resolution, start, key in sorted(touched)
        )
        # A period that has ended was written above (or on an earlier flush): drop it from memory.
        for resolution in _ROLLUPS:
            current = now - now % resolution
            stale = [k for k in self._open[resolution] if k[0] < current]
            for k in stale:
                del self._open[resolution][k]
        return Closed(closed, rows)

    def open_cells(self, resolution: int) -> dict[tuple[int, Key], Cell]:
        return self._open[resolution]


def consumer_counts(cells: Mapping[Key, Cell]) -> dict[str, tuple[float, float, float]]:
    """Requests, errors, denials per consumer in one second (named consumers only)."""
    out: dict[str, tuple[float, float, float]] = {}
    for key, cell in cells.items():
        if not key.consumer or key.consumer == OTHER_CONSUMER:
            continue
        n, e, d = out.get(key.consumer, (0.0, 0.0, 0.0))
        n += cell.requests
        if key.status in ERRORS:
            e += cell.requests
        elif key.status in DENIED or key.status in LIMITED:
            d += cell.requests
        out[key.consumer] = (n, e, d)
    return out
