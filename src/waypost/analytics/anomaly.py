"""Anomalies: a consumer whose request, error or denied rate departs sharply from its own
recent baseline.

The rule (documented in docs/analytics.md; its false-positive rate is measured by
``bench/analytics.py --anomalies`` on steady synthetic traffic):

- Traffic is cut into windows of :data:`WINDOW` seconds per consumer: requests ``n``, errors
  ``e`` (5xx) and denials ``d`` (401, 403, 429).
- The baseline is an exponentially weighted mean and variance of ``n`` (and weighted means of
  ``e`` and ``d``) with a time constant of :data:`BASELINE` seconds, updated after every window.
- Nothing is flagged before the baseline has :data:`WARMUP` windows.
- ``requests``: ``n > max(3 * mean, mean + 6 * sqrt(var + mean) + 10)`` (a spike), or
  ``mean >= 20 and n < mean / 4`` (traffic fell away).
- ``errors`` / ``denied``: with ``p`` the window's fraction and ``b`` the baseline's, at least
  5 such responses and ``p > b + max(0.25, 6 * sqrt(b * (1 - b) / n))``.
- A flag starts with one log line and stays raised until :data:`CLEAR_AFTER` seconds pass
  without the condition. ``waypost_analytics_anomaly{consumer,kind}`` is 1 while raised.

Event loop only. State is O(consumers), and consumers are already bounded by the cardinality
cap; idle ones are forgotten after :data:`FORGET_AFTER` seconds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["KINDS", "Anomaly", "AnomalyDetector", "WindowCounts"]

WINDOW = 10
BASELINE = 300.0
WARMUP = 12
CLEAR_AFTER = 60.0
FORGET_AFTER = 3600.0
KINDS = ("requests", "errors", "denied")

_ALPHA = 1 - math.exp(-WINDOW / BASELINE)


@dataclass(slots=True)
class WindowCounts:
    requests: float = 0.0
    errors: float = 0.0
    denied: float = 0.0


@dataclass(frozen=True)
class Anomaly:
    consumer: str
    kind: str
    since: float
    last: float
    observed: float
    baseline: float
    detail: str

    def as_dict(self) -> dict[str, object]:
        return {
            "consumer": self.consumer,
            "kind": self.kind,
            "since": self.since,
            "last": self.last,
            "observed": round(self.observed, 4),
            "baseline": round(self.baseline, 4),
            "detail": self.detail,
        }


@dataclass(slots=True)
class _Baseline:
    mean: float = 0.0
    var: float = 0.0
    errors: float = 0.0
    denied: float = 0.0
    windows: int = 0
    last_seen: float = 0.0
    raised: dict[str, Anomaly] = field(default_factory=dict)

    def update(self, w: WindowCounts) -> None:
        if self.windows == 0:
            self.mean, self.errors, self.denied = w.requests, w.errors, w.denied
        else:
            delta = w.requests - self.mean
            self.mean += _ALPHA * delta
            self.var = (1 - _ALPHA) * (self.var + _ALPHA * delta * delta)
            self.errors += _ALPHA * (w.errors - self.errors)
            self.denied += _ALPHA * (w.denied - self.denied)
        self.windows += 1


def _fraction_departs(count: float, n: float, base_count: float, base_n: float) -> tuple[bool, float, float]:
    if n <= 0 or count < 5:
        return False, 0.0, 0.0
    p = count / n
    b = base_count / base_n if base_n > 0 else 0.0
    b = min(max(b, 0.0), 1.0)
    return p > b + max(0.25, 6 * math.sqrt(b * (1 - b) / n)), p, b


def evaluate(base: _Baseline, w: WindowCounts) -> list[tuple[str, float, float, str]]:
    """The kinds this window departs in: (kind, observed, baseline, detail). Pure."""
    if base.windows < WARMUP:
        return []
    found = []
    spike = max(3 * base.mean, base.mean + 6 * math.sqrt(base.var + base.mean) + 10)
    if w.requests > spike:
        found.append(("requests", w.requests / WINDOW, base.mean / WINDOW, "request rate spike"))
    elif base.mean >= 20 and w.requests < base.mean / 4:
        found.append(("requests", w.requests / WINDOW, base.mean / WINDOW, "request rate fell"))
    for kind, count, base_count in (("errors", w.errors, base.errors), ("denied", w.denied, base.denied)):
        departs, p, b = _fraction_departs(count, w.requests, base_count, base.mean)
        if departs:
            found.append((kind, p, b, f"{kind} rate {p:.0%} against {b:.0%}"))
    return found


class AnomalyDetector:
    def __init__(self) -> None:
        self._baselines: dict[str, _Baseline] = {}
        self._window_start: int | None = None
        self._window: dict[str, WindowCounts] = {}
        self.raised_total: dict[str, int] = dict.fromkeys(KINDS, 0)
        self.windows_evaluated = 0

    def observe(self, second: int, per_consumer: Mapping[str, WindowCounts]) -> list[Anomaly]:
        """Add one closed second; returns the anomalies newly raised when a window closes."""
        start = second - second % WINDOW
        raised: list[Anomaly] = []
        if self._window_start is not None and start != self._window_start:
            raised = self._close(float(self._window_start + WINDOW))
        self._window_start = start
        for consumer, counts in per_consumer.items():
            w = self._window.get(consumer)
            if w is None:
                w = self._window[consumer] = WindowCounts()
            w.requests += counts.requests
            w.errors += counts.errors
            w.denied += counts.denied
        return raised

    def _close(self, now: float) -> list[Anomaly]:
        raised: list[Anomaly] = []
        window, self._window = self._window, {}
        # A consumer that sent nothing this window still has a window: zero requests.
        for consumer in set(window) | set(self._baselines):
            w = window.get(consumer) or WindowCounts()
            base = self._baselines.get(consumer)
            if base is None:
                base = self._baselines[consumer] = _Baseline()
            if w.requests > 0:
                base.last_seen = now
            elif now - base.last_seen > FORGET_AFTER:
                del self._baselines[consumer]
                continue
            self.windows_evaluated += 1
            for kind, observed, baseline, detail in evaluate(base, w):
                current = base.raised.get(kind)
                since = current.since if current is not None else now
                base.raised[kind] = Anomaly(consumer, kind, since, now, observed, baseline, detail)
                if current is None:
                    self.raised_total[kind] += 1
                    raised.append(base.raised[kind])
            for kind, anomaly in list(base.raised.items()):
                if now - anomaly.last > CLEAR_AFTER:
                    del base.raised[kind]
            base.update(w)
        return raised

    def active(self) -> list[Anomaly]:
        return sorted(
            (a for base in self._baselines.values() for a in base.raised.values()),
            key=lambda a: (-a.last, a.consumer, a.kind),
        )

    def consumers(self) -> Iterable[str]:
        return self._baselines.keys()
