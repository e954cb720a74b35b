"""Latency sketches: DDSketch (relative-error quantiles, mergeable) and a compact byte encoding.

Every latency waypost keeps is a :class:`ddsketch.LogCollapsingLowestDenseDDSketch` with
:data:`RELATIVE_ACCURACY` (a reported quantile is within 1% of a true sample value) and at most
:data:`BIN_LIMIT` bins (past that the lowest bins collapse, so memory is bounded whatever the
spread). Sketches of any two buckets merge exactly, which is what makes one-second buckets roll up
into minutes, hours and days, and many keys into one figure, without losing accuracy.

The library's own protobuf drops count/sum/min/max and writes every bin between the lowest and
highest as a dense array; :func:`encode` writes only the non-empty bins (a few dozen for a typical
latency spread), which is what the store keeps per row.
"""

from __future__ import annotations

import struct

from ddsketch import LogCollapsingLowestDenseDDSketch

__all__ = ["BIN_LIMIT", "RELATIVE_ACCURACY", "Sketch", "decode", "encode", "new_sketch", "quantile"]

RELATIVE_ACCURACY = 0.01
BIN_LIMIT = 1024
Sketch = LogCollapsingLowestDenseDDSketch

_HEADER = struct.Struct("<Bdddd")  # version, zero count, sum, min, max
_BIN = struct.Struct("<id")  # key, weight
_VERSION = 1


def new_sketch() -> Sketch:
    return LogCollapsingLowestDenseDDSketch(RELATIVE_ACCURACY, bin_limit=BIN_LIMIT)


def quantile(sketch: Sketch, q: float) -> float | None:
    """The q-quantile (0..1), or None for an empty sketch."""
    if sketch.count <= 0:
        return None
    value = sketch.get_quantile_value(q)
    return None if value is None else float(value)


def encode(sketch: Sketch) -> bytes:
    store = sketch._store
    bins = [_BIN.pack(store.offset + index, weight) for index, weight in enumerate(store.bins) if weight > 0]
    header = _HEADER.pack(_VERSION, sketch._zero_count, sketch._sum, sketch._min, sketch._max)
    return header + b"".join(bins)


def decode(data: bytes) -> Sketch:
    """The sketch :func:`encode` wrote; raises ValueError on bytes it did not write."""
    if len(data) < _HEADER.size or (len(data) - _HEADER.size) % _BIN.size or data[0] != _VERSION:
        raise ValueError("not an encoded waypost sketch")
    _, zero, total, low, high = _HEADER.unpack_from(data)
    sketch = new_sketch()
    store = sketch._store
    for key, weight in _BIN.iter_unpack(data[_HEADER.size :]):
        store.add(key, weight)
    sketch._zero_count = zero
    sketch._count = store.count + zero
    sketch._sum, sketch._min, sketch._max = total, low, high
    return sketch
