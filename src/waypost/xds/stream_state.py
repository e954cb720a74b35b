"""What an xDS stream keeps per resource type, and the small pieces both protocols share.

:class:`TypeState` (and :class:`DeltaTypeState`) hold what one stream has sent, had acked and had
NACKed for one type; :class:`ConfigWatcher` is the narrow view of the snapshot cache a stream
needs. No I/O; single event loop.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import Counter

from waypost.metrics import XDS_PUSHES
from waypost.xds.cache import NodeInfo
from waypost.xds.snapshot import Snapshot, encode_field
from waypost.xds.types import TypeUrl

__all__ = [
    "ConfigWatcher",
    "DeltaTypeState",
    "NackRecord",
    "NodeAuthorizer",
    "TypeState",
    "cap_text",
    "push_counter",
    "shared_names",
]

CONTROL_PLANE = encode_field(6, encode_field(1, b"waypost"))
DELTA_CONTROL_PLANE = encode_field(7, encode_field(1, b"waypost"))
MAX_NACK_DETAIL = 4096
"""Characters of a NACK's ``error_detail`` kept (stored, logged, shown); Envoy's are a line or two."""
MAX_NODE_NAME = 256
"""Longest ``node.id`` / ``node.cluster`` accepted; a longer one is refused (INVALID_ARGUMENT)."""
GATE_TIMEOUT_S = 5.0
"""How long listeners and routes wait for cluster warming before going out anyway."""


def cap_text(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


NodeAuthorizer = Callable[[NodeInfo], str | None]
"""Decides whether a stream may serve a node: None to allow, or the reason it may not."""


class ConfigWatcher(Protocol):
    """The narrow view of the snapshot cache a stream needs."""

    @property
    def generation(self) -> int: ...

    def snapshot_for(self, node: NodeInfo) -> Snapshot | None: ...

    async def wait_for_change(self, generation: int) -> None: ...

    def watch(self, stream_id: int, node: NodeInfo) -> None: ...

    def unwatch(self, stream_id: int) -> None: ...


@dataclass(frozen=True)
class NackRecord:
    version: str
    message: str
    at: float


@dataclass(slots=True)  # a few per stream, thousands of streams: no per-instance __dict__
class TypeState:
    """What one stream knows about one resource type."""

    subscription: frozenset[str] | None = None
    """Resource names subscribed; None means wildcard (everything the node should have)."""
    sent_version: str | None = None
    sent_nonce: str | None = None
    sent_subscription: frozenset[str] | None = None
    sent_names: frozenset[str] = frozenset()
    acked_version: str | None = None
    acked_snapshot: Snapshot | None = None
    inflight: list[tuple[str, str, Snapshot]] = field(default_factory=list)
    """(nonce, version, snapshot) of responses sent since the last ACK, oldest first."""
    nacked_version: str | None = None
    last_nack: NackRecord | None = None


@dataclass(slots=True)
class DeltaTypeState(TypeState):
    """A delta stream's view of one type: which resources, at which version, the node holds."""

    known: dict[str, str] = field(default_factory=dict)
    """Resource name -> version (digest) the node holds, as far as this stream has told it."""
    wildcard: bool = False
    explicit: set[str] = field(default_factory=set)
    """Names subscribed by name (kept apart from the wildcard, which may be dropped later)."""
    told_absent: set[str] = field(default_factory=set)
    """Subscribed names already reported as not existing, so they are reported once."""
    resumed: bool = False
    """The node started this type with ``initial_resource_versions`` (a reconnect)."""


@functools.cache
def push_counter(type_url: TypeUrl, group: tuple[str, ...]) -> Counter:
    """The push counter of a type and group: looked up once, not on every push."""
    return XDS_PUSHES.labels(type_url.short, ",".join(group))


_NAME_SETS: weakref.WeakValueDictionary[frozenset[str], frozenset[str]] = weakref.WeakValueDictionary()


def shared_names(names: frozenset[str]) -> frozenset[str]:
    """One frozenset object per distinct set of names: a fleet's streams mostly subscribe to and
    hold the same names, and a 50-name set costs kilobytes per stream otherwise."""
    if not names:
        return frozenset()
    shared = _NAME_SETS.get(names)
    if shared is None:
        _NAME_SETS[names] = shared = names
    return shared
