"""One aggregate cell: the figures of one key over one bucket, and the key's dimensions.

A key is (gateway, api, route, consumer, status class). The status class keeps the codes an API
owner asks about by name apart from the rest of their class: ``401``, ``403`` and ``429`` are
classes of their own, every other 4xx is ``4xx``. A :class:`Cell` holds request count (weighted:
a Gateway sampling 10% counts each logged request as 10), bytes both ways, a sketch of total
duration and one of upstream time, and small counters of methods and response flags (both are
bounded sets: Envoy's flags, HTTP's methods with anything else as ``OTHER``).

Not thread-safe: cells are built and merged on the event loop only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from waypost.analytics.sketch import Sketch, new_sketch

__all__ = ["DENIED", "ERRORS", "LIMITED", "OTHER_CONSUMER", "STATUS_CLASSES", "Cell", "Key", "status_class"]

STATUS_CLASSES = ("2xx", "3xx", "401", "403", "429", "4xx", "5xx", "other")
DENIED = frozenset({"401", "403"})
LIMITED = frozenset({"429"})
ERRORS = frozenset({"5xx"})
OTHER_CONSUMER = "other"
"""Where consumers beyond a route's top N are folded (see :mod:`waypost.analytics.cardinality`)."""

_NAMED = {401: "401", 403: "403", 429: "429"}
_CLASS = {2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"})


def status_class(code: int) -> str:
    return _NAMED.get(code) or _CLASS.get(code // 100, "other")


def method_name(method: str) -> str:
    return method if method in _METHODS else "OTHER"


class Key(NamedTuple):
    gateway: str
    api: str
    route: str
    consumer: str
    status: str


@dataclass(slots=True)
class Cell:
    requests: float = 0.0
    bytes_in: float = 0.0
    bytes_out: float = 0.0
    duration: Sketch = field(default_factory=new_sketch)
    """Milliseconds from the first byte received to the last byte sent downstream."""
    upstream: Sketch = field(default_factory=new_sketch)
    """Milliseconds from the first byte sent upstream to the last byte received from it (requests
    that reached an upstream only)."""
    methods: dict[str, float] = field(default_factory=dict)
    flags: dict[str, float] = field(default_factory=dict)

    def add(
        self,
        *,
        weight: float,
        method: str,
        flags: str,
        duration_ms: float,
        upstream_ms: float | None,
        bytes_in: int,
        bytes_out: int,
    ) -> None:
        self.requests += weight
        self.bytes_in += bytes_in * weight
        self.bytes_out += bytes_out * weight
        self.duration.add(duration_ms, weight)
        if upstream_ms is not None:
            self.upstream.add(upstream_ms, weight)
        method = method_name(method)
        self.methods[method] = self.methods.get(method, 0.0) + weight
        if flags:
            self.flags[flags] = self.flags.get(flags, 0.0) + weight

    def merge(self, other: Cell) -> None:
        self.requests += other.requests
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out
        if other.duration.count:
            self.duration.merge(other.duration)
        if other.upstream.count:
            self.upstream.merge(other.upstream)
        for name, n in other.methods.items():
            self.methods[name] = self.methods.get(name, 0.0) + n
        for name, n in other.flags.items():
            self.flags[name] = self.flags.get(name, 0.0) + n
