"""Bounded consumer cardinality: per route, the top N consumers keep their name, the rest are
folded into ``other``.

The rule, per (gateway, route), in periods of one minute:
- a consumer already admitted keeps its own series for the period;
- while fewer than N are admitted, a new consumer is admitted at once (first come);
- otherwise it is counted as ``other``, and its requests are tallied (for at most ``track``
  distinct names per route) as a candidate;
- at each period's end the N busiest of the period (admitted or candidate) are admitted for the
  next one, so a consumer that grows into the top N gets its own series within a minute.

Memory is O(routes x track) whatever the number of distinct consumer ids: a flood of fresh ids
lands in ``other`` and, past ``track``, is not even tallied. Event loop only.
"""

from __future__ import annotations

import heapq

from waypost.analytics.cells import OTHER_CONSUMER

__all__ = ["ConsumerCap"]


class ConsumerCap:
    __slots__ = ("_admitted", "_counts", "_period", "_top", "_track")

    def __init__(self, *, top: int, track: int) -> None:
        self._top = top
        self._track = max(track, top)
        self._admitted: set[str] = set()
        self._counts: dict[str, float] = {}
        self._period = -1

    def admit(self, consumer: str, weight: float, period: int) -> str:
        """The label ``consumer``'s request counts under in ``period`` (minutes since the epoch)."""
        if period != self._period:
            self._roll(period)
        counts = self._counts
        if consumer in counts or len(counts) < self._track:
            counts[consumer] = counts.get(consumer, 0.0) + weight
        if consumer in self._admitted:
            return consumer
        if len(self._admitted) < self._top and consumer != OTHER_CONSUMER:
            self._admitted.add(consumer)
            return consumer
        return OTHER_CONSUMER

    def _roll(self, period: int) -> None:
        if self._counts:
            busiest = heapq.nlargest(self._top, self._counts.items(), key=lambda item: item[1])
            self._admitted = {name for name, _ in busiest if name != OTHER_CONSUMER}
        self._counts = {}
        self._period = period
