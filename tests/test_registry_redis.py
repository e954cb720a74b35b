"""Endpoint claims shared by replicas through a real Redis: seen, renewed sparingly, lapsing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest

from support.redis import RedisProcess
from waypost.policies.types import Endpoint
from waypost.xds.registry import Claim, EndpointRegistry
from waypost.xds.registry_redis import REDIS_KEY, RedisRegistrySync

INTERVAL = 0.05


class Replica:
    def __init__(self, url: str, grace: float) -> None:
        self.changes = 0
        self.registry = EndpointRegistry(grace_for=lambda service: grace, on_change=self._changed)
        self.sync = RedisRegistrySync(url, self.registry, interval=INTERVAL)

    def _changed(self) -> None:
        self.changes += 1

    def nodes(self) -> list[tuple[str, float | None]]:
        return [(c.node_id, c.expires) for c in self.registry.claims()]


Replicas = Callable[[int, float], list[Replica]]


@pytest.fixture
def redis(start_redis: Callable[[], RedisProcess]) -> RedisProcess:
    return start_redis()


@pytest.fixture
async def replicas(redis: RedisProcess) -> AsyncIterator[Replicas]:
    """Makes replicas (count, grace) sharing the one Redis; stops them all after the test."""
    made: list[Replica] = []

    def make(count: int, grace: float) -> list[Replica]:
        made.extend(Replica(redis.url, grace) for _ in range(count))
        return made[-count:]

    yield make
    for replica in made:
        await replica.sync.stop()


def _claim(node: str, host: str = "10.0.0.2") -> Claim:
    return Claim("orders", Endpoint(host, 80), node, "orders", {"zone": "a"})


async def _ticks(*replicas: Replica, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for replica in replicas:
            await replica.sync.sync_once()
        await asyncio.sleep(INTERVAL)


def _hset_calls(redis: RedisProcess) -> int:
    with redis.client() as client:
        stats = client.info("commandstats")
    return int(stats.get("cmdstat_hset", {}).get("calls", 0))


async def test_a_live_claim_is_written_once_and_seen_by_the_other_replica(
    redis: RedisProcess, replicas: Replicas
) -> None:
    a, b = replicas(2, 10.0)
    a.registry.join(1, _claim("n1"))
    await _ticks(a, b, seconds=0.1)
    assert [node for node, _ in b.nodes()] == ["n1"]
    await asyncio.sleep(0.05)  # the join's batched change notice
    changes_at_b = b.changes
    # A steady fleet: no rewrite before half the grace, and no snapshot rebuild at the reader.
    await _ticks(a, b, seconds=1.0)
    assert _hset_calls(redis) == 1
    assert b.changes == changes_at_b


async def test_a_live_claim_is_renewed_before_it_lapses(redis: RedisProcess, replicas: Replicas) -> None:
    a, b = replicas(2, 0.1)
    a.registry.join(1, _claim("n1"))
    a.registry.join(2, _claim("n2", "10.0.0.3"))
    await _ticks(a, b, seconds=1.0)  # four lifetimes of the 0.25 s floor
    assert [node for node, _ in b.nodes()] == ["n1", "n2"]
    # Renewed at half-life, both claims in one write: about 8, never one per tick (20).
    assert 4 <= _hset_calls(redis) <= 10


async def test_a_departed_claim_lapses_after_its_grace_everywhere(
    redis: RedisProcess, replicas: Replicas
) -> None:
    a, b = replicas(2, 0.3)
    a.registry.join(1, _claim("n1"))
    await _ticks(a, b, seconds=0.1)
    a.registry.leave(1)
    await _ticks(a, b, seconds=0.1)
    ((node, expires),) = b.nodes()
    assert node == "n1" and expires is not None  # still an endpoint, within its grace
    await _ticks(a, b, seconds=0.5)
    assert b.nodes() == []
    with redis.client() as client:
        assert client.hkeys(REDIS_KEY) == [b"~gen"]  # its owner removed it once it expired


async def test_the_claims_of_a_replica_that_died_lapse(replicas: Replicas) -> None:
    a, b = replicas(2, 0.1)
    a.registry.join(1, _claim("n1"))
    await _ticks(a, b, seconds=0.1)
    assert [node for node, _ in b.nodes()] == ["n1"]
    # A stops renewing (it died with the stream up): its live claim lapses after its lifetime.
    await _ticks(b, seconds=5 * INTERVAL + 0.3)
    assert b.nodes() == []


async def test_a_node_that_moved_is_live_at_its_new_replica(replicas: Replicas) -> None:
    a, b, c = replicas(3, 2.0)
    a.registry.join(1, _claim("n1", "10.0.0.2"))
    await _ticks(a, b, c, seconds=0.1)
    b.registry.join(7, _claim("n1", "10.0.0.3"))  # reconnected to b, with a new address
    a.registry.leave(1)  # a notices the old stream's end only now
    await _ticks(a, b, c, seconds=0.2)
    (claim,) = c.registry.claims()
    assert claim.endpoint == Endpoint("10.0.0.3", 80)


async def test_claims_are_written_again_after_redis_lost_its_data(
    redis: RedisProcess, replicas: Replicas
) -> None:
    a, b = replicas(2, 10.0)
    a.registry.join(1, _claim("n1"))
    await _ticks(a, b, seconds=0.1)
    with redis.client() as client:
        client.flushall()
    await _ticks(a, b, seconds=0.2)
    assert [node for node, _ in b.nodes()] == ["n1"]


async def test_a_join_writes_only_the_new_claim(redis: RedisProcess, replicas: Replicas) -> None:
    (a,) = replicas(1, 10.0)
    a.registry.join(1, _claim("n1"))
    await _ticks(a, seconds=0.1)
    with redis.client() as client:
        first = client.hgetall(REDIS_KEY)
    a.registry.join(2, _claim("n2", "10.0.0.3"))
    await _ticks(a, seconds=0.1)
    with redis.client() as client:
        now = client.hgetall(REDIS_KEY)
    (n1,) = [field for field in first if field.startswith(b"orders|n1|")]
    assert now[n1] == first[n1]  # n1 was not rewritten for n2's sake
    assert len(now) == len(first) + 1
