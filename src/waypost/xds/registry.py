"""Endpoints that register themselves: a node fronting a Service is its endpoint while its stream is up.

A node announces ``register: {service: NAME, address: HOST:PORT}`` in its metadata. While any of
its xDS streams to this replica is open it is *live*; when the last one closes it *leaves*, and
stays an endpoint for the Service's ``registration.grace`` (a restart or a failover to another
replica keeps it in place). Whether a node may register at all is the policy's to say
(``Service.registration.nodes``): the registry records claims, and
:func:`waypost.xds.compiler.registered.with_registered` keeps only the ones the current policy
allows, so a policy change takes a registration away at once.

Replicas share claims through Redis (:mod:`waypost.xds.registry_redis`); the claims other
replicas hold arrive here through :meth:`EndpointRegistry.set_remote`.

Contract: event loop only; ``on_change`` is called (soon, once per burst) whenever the set of
endpoints may have changed.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from waypost.log import get_logger
from waypost.policies.types import Endpoint, parse_endpoint

__all__ = ["Claim", "EndpointRegistry", "parse_claim"]

log = get_logger("waypost.registry")

BATCH_S = 0.02


@dataclass(frozen=True, slots=True)
class Claim:
    """A node's word that it is an endpoint of ``service``; ``expires`` is None while it is live."""

    service: str
    endpoint: Endpoint
    node_id: str
    node_cluster: str
    node_labels: Mapping[str, str] = field(default_factory=dict)
    expires: float | None = None

    def same_endpoint(self, other: Claim) -> bool:
        """Equal but for ``expires``: what the compiled endpoints depend on."""
        return replace(self, expires=None) == replace(other, expires=None)

    def to_json(self, expires: float, *, live: bool) -> str:
        """The shared form: ``live`` says whether the node's stream is up at the writing replica
        (a live claim wins over another replica's departing one for the same node)."""
        return json.dumps(
            {
                "live": live,
                "service": self.service,
                "address": str(self.endpoint),
                "node": self.node_id,
                "cluster": self.node_cluster,
                "labels": dict(self.node_labels),
                "expires": expires,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> tuple[bool, Claim]:
        """The shared form back: (whether it was live where written, the claim)."""
        data = json.loads(text)
        claim = cls(
            service=str(data["service"]),
            endpoint=parse_endpoint(data["address"]),
            node_id=str(data["node"]),
            node_cluster=str(data["cluster"]),
            node_labels={str(k): str(v) for k, v in dict(data["labels"]).items()},
            expires=float(data["expires"]),
        )
        return bool(data.get("live", False)), claim


def parse_claim(
    register: tuple[str, str], node_id: str, node_cluster: str, node_labels: Mapping[str, str]
) -> Claim:
    """The claim of a node's ``register`` metadata; ValueError when its address is not host:port
    of an IP (a registered endpoint is dialled as given, never resolved)."""
    service, address = register
    endpoint = parse_endpoint(address)
    if not endpoint.is_ip:
        raise ValueError(f"register.address '{address}' must be an IP address and port")
    return Claim(
        service=service,
        endpoint=endpoint,
        node_id=node_id,
        node_cluster=node_cluster,
        node_labels=node_labels,
    )


class EndpointRegistry:
    """This replica's claims (from its own streams), plus the ones other replicas share."""

    def __init__(self, *, grace_for: Callable[[str], float], on_change: Callable[[], None]) -> None:
        self.grace_for = grace_for
        """Seconds a claim of that Service outlives its node's last stream (from the policy)."""
        self._on_change = on_change
        self._claims: dict[tuple[str, str], Claim] = {}
        """(service, node id) -> this replica's claim."""
        self._streams: dict[tuple[str, str], set[int]] = {}
        self._by_stream: dict[int, tuple[str, str]] = {}
        self._remote: dict[tuple[str, str], Claim] = {}
        self._view: tuple[Claim, ...] = ()
        """Every claim known, rebuilt on the loop at each change: threads read it without a lock."""
        self._change_pending = False

    def join(self, stream_id: int, claim: Claim) -> None:
        key = (claim.service, claim.node_id)
        self._by_stream[stream_id] = key
        self._streams.setdefault(key, set()).add(stream_id)
        previous = self._claims.get(key)
        live = replace(claim, expires=None)
        self._claims[key] = live
        if previous != live:
            log.info(
                "endpoint registered", service=claim.service, node=claim.node_id, address=str(claim.endpoint)
            )
            self._changed()

    def leave(self, stream_id: int) -> None:
        key = self._by_stream.pop(stream_id, None)
        if key is None:
            return
        streams = self._streams.get(key, set())
        streams.discard(stream_id)
        if streams:
            return  # another stream of the same node is still open
        del self._streams[key]
        grace = self.grace_for(key[0])
        self._claims[key] = replace(self._claims[key], expires=time.time() + grace)
        log.info("endpoint left", service=key[0], node=key[1], grace_s=grace)
        self._changed()  # still an endpoint, but with an expiry the other replicas must learn
        asyncio.get_running_loop().call_later(grace + 0.01, self._expire)

    def local_claims(self) -> list[Claim]:
        return list(self._claims.values())

    def set_remote(self, claims: Mapping[tuple[str, str], Claim]) -> None:
        """Claims other replicas share (any of this replica's own are ignored in favour of its own).

        A renewal moves only a claim's expiry, which no compiled endpoint depends on: the view
        takes the new expiry without a rebuild of the snapshot."""
        before = self._remote
        self._remote = dict(claims)
        same = before.keys() == self._remote.keys() and all(
            before[key].same_endpoint(claim) for key, claim in self._remote.items()
        )
        if same:
            self._view = self._merged()
        else:
            self._changed()

    def claims(self, now: float | None = None) -> list[Claim]:
        """Every claim still in force: live ones, and departed ones within their grace. Safe to
        call from any thread."""
        now = time.time() if now is None else now
        return [c for c in self._view if c.expires is None or c.expires > now]

    def _expire(self) -> None:
        now = time.time()
        gone = [
            key for key, claim in self._claims.items() if claim.expires is not None and claim.expires <= now
        ]
        for key in gone:
            del self._claims[key]
        if gone:
            self._changed()

    def _merged(self) -> tuple[Claim, ...]:
        merged = {**self._remote, **self._claims}
        return tuple(sorted(merged.values(), key=lambda c: (c.service, c.node_id)))

    def _changed(self) -> None:
        self._view = self._merged()
        # Changes within BATCH_S (a fleet reconnecting, steady churn) cost one snapshot rebuild
        # and one push per stream: the rebuild rate stays bounded whatever the churn.
        if not self._change_pending:
            self._change_pending = True
            asyncio.get_running_loop().call_later(BATCH_S, self._notify)

    def _notify(self) -> None:
        self._change_pending = False
        self._on_change()
