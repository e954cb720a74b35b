"""Endpoint claims shared between replicas through one Redis hash.

Each replica writes its own claims as fields ``<service>|<node id>|<replica>`` of the hash
``wp:registry``; the value is the claim with an absolute expiry (:meth:`Claim.to_json`). A live
claim's expiry is ``now + max(grace, floor)`` and is renewed when half of that has passed (all of
a replica's live claims at once), so a steady fleet costs one write per claim per half-grace, not
one per tick; a departing claim is written once, with the expiry its grace gives it. A replica
that dies stops renewing, and its nodes' claims lapse after their grace.

Every write also increments the hash's field ``~gen``. Each tick (``interval``) a replica reads that
counter and re-reads the hash only when it moved, when a claim it holds from another replica
reaches its expiry, or every ``RESCAN_S`` in any case; expired fields are deleted by whoever
reads them first. When two replicas hold a claim for the same node (a node that moved), the live
one wins, then the later expiry.

Contract: event loop only. Redis being down never stops serving: the replica keeps what it knows,
logs once, and rewrites all its claims when Redis answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import cast

from waypost.log import get_logger
from waypost.xds.registry import Claim, EndpointRegistry

__all__ = ["GEN_FIELD", "REDIS_KEY", "RedisRegistrySync"]

log = get_logger("waypost.registry")

REDIS_KEY = "wp:registry"
GEN_FIELD = "~gen"
"""A counter in the hash itself, bumped by each write (no claim field has this form)."""
RESCAN_S = 5.0
"""A full read at least this often, whatever the counter says (a counter lost with Redis' data)."""


@dataclass(frozen=True, slots=True)
class _Written:
    claim: Claim
    live: bool
    expires: float


class RedisRegistrySync:
    """Writes this replica's claims to Redis when they change or near expiry; reads the others'."""

    def __init__(self, url: str, registry: EndpointRegistry, *, interval: float = 0.2) -> None:
        import redis.asyncio as aioredis

        self._redis = aioredis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self._registry = registry
        self._interval = interval
        self._floor = 5 * interval
        """The shortest lifetime of a live claim: renewals a few ticks late never let it lapse."""
        self.replica = uuid.uuid4().hex[:12]
        self._written: dict[str, _Written] = {}
        """Field -> what this replica last wrote there (Redis holds it unless its data was lost)."""
        self._seen_gen: int | None = None
        self._next_scan = 0.0
        self._task: asyncio.Task[None] | None = None
        self._down = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._redis.aclose()

    async def _run(self) -> None:
        while True:
            try:
                await self.sync_once()
                if self._down:
                    self._down = False
                    log.info("endpoint registry shared through redis again")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis down: keep serving what we know, retry
                self._written.clear()  # whatever Redis kept or lost, write everything again
                self._seen_gen = None
                if not self._down:
                    self._down = True
                    log.warning("endpoint registry cannot reach redis; local claims only", error=str(exc))
            await asyncio.sleep(self._interval)

    async def sync_once(self) -> None:
        """One tick: write what changed or nears expiry, then read the others' if anything moved."""
        now = time.time()
        writes, gone = self._due(now)
        # In order, without MULTI: a reader who sees the counter move reads the writes before it.
        pipe = self._redis.pipeline(transaction=False)
        if writes:
            pipe.hset(REDIS_KEY, mapping={field: text for field, (text, _) in writes.items()})
        if gone:
            pipe.hdel(REDIS_KEY, *gone)
        if writes or gone:
            pipe.hincrby(REDIS_KEY, GEN_FIELD, 1)
        pipe.hget(REDIS_KEY, GEN_FIELD)
        results = await pipe.execute()
        for field, (_, written) in writes.items():
            self._written[field] = written
        for field in gone:
            del self._written[field]
        gen = int(results[-1]) if results[-1] is not None else None
        if gen is None or (self._seen_gen is not None and gen < self._seen_gen):
            # Redis lost its data (a restart without persistence): our claims with it.
            self._written.clear()
        if gen == self._seen_gen and gen is not None and now < self._next_scan:
            return
        await self._read(now, gen)

    def _due(self, now: float) -> tuple[dict[str, tuple[str, _Written]], list[str]]:
        claims = self._registry.local_claims()
        # When one live claim nears its expiry, all are renewed together: the counter then moves
        # once per half-grace per replica, not at every tick of a large fleet's spread renewals.
        # A claim Redis lacks as it is (a join, a new address) is written on its own.
        renew = any(self._expiring(claim, now) for claim in claims if claim.expires is None)
        writes: dict[str, tuple[str, _Written]] = {}
        current: set[str] = set()
        for claim in claims:
            field = self._field(claim)
            current.add(field)
            if claim.expires is None:
                if not renew and self._written_as(claim, live=True):
                    continue
                expires = now + self._lifetime(claim)
            else:
                if self._written_as(claim, live=False):
                    continue
                expires = claim.expires
            live = claim.expires is None
            writes[field] = (claim.to_json(expires, live=live), _Written(claim, live, expires))
        return writes, [field for field in self._written if field not in current]

    def _field(self, claim: Claim) -> str:
        return f"{claim.service}|{claim.node_id}|{self.replica}"

    def _lifetime(self, claim: Claim) -> float:
        return max(self._floor, self._registry.grace_for(claim.service))

    def _written_as(self, claim: Claim, *, live: bool) -> bool:
        """Whether Redis holds ``claim`` as it is now (a departing one: with its expiry too)."""
        before = self._written.get(self._field(claim))
        if before is None or before.live != live:
            return False
        return before.claim.same_endpoint(claim) if live else before.claim == claim

    def _expiring(self, live: Claim, now: float) -> bool:
        """Whether a live claim Redis holds has less than half its lifetime left there."""
        before = self._written.get(self._field(live))
        return before is not None and before.live and before.expires - now <= self._lifetime(live) / 2

    async def _read(self, now: float, gen: int | None) -> None:
        # redis-py types HGETALL for both clients (a value or an awaitable): ours awaits.
        raw = await cast("Awaitable[dict[bytes, bytes]]", self._redis.hgetall(REDIS_KEY))
        self._seen_gen = gen
        remote: dict[tuple[str, str], tuple[bool, Claim]] = {}
        stale: list[bytes] = []
        suffix = f"|{self.replica}"
        for field_name, value in raw.items():
            name = field_name.decode(errors="replace")
            if name == GEN_FIELD or name.endswith(suffix):
                continue
            try:
                live, claim = Claim.from_json(value)
            except (ValueError, KeyError, TypeError):
                stale.append(field_name)
                continue
            assert claim.expires is not None
            if claim.expires <= now:
                stale.append(field_name)
                continue
            key = (claim.service, claim.node_id)
            held = remote.get(key)
            if held is None or (live, claim.expires) > (held[0], cast("float", held[1].expires)):
                remote[key] = (live, claim)
        if stale:
            await self._redis.hdel(REDIS_KEY, *stale)
        self._next_scan = min(
            [now + RESCAN_S, *(cast("float", claim.expires) for _, claim in remote.values())]
        )
        self._registry.set_remote(_claims(remote))


def _claims(remote: Mapping[tuple[str, str], tuple[bool, Claim]]) -> dict[tuple[str, str], Claim]:
    return {key: claim for key, (_, claim) in remote.items()}
