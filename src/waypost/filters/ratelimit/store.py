"""Counter stores: fixed (or sliding) windows, in process or in Redis, one round trip per decision.

A decision hits every counter its descriptors name in one call (:meth:`CounterStore.hit`). The
in-process store is a dict; the Redis store runs one Lua script (EVALSHA) that increments every
counter atomically and lets windows expire by themselves (PEXPIRE). Redis keys are
``wp:{<counter>}:<window start ms>``: the hash tag keeps a counter's windows in one Cluster slot
(the sliding window reads the previous one) while distinct counters spread across slots.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = [
    "Algorithm",
    "Count",
    "CounterStore",
    "MemoryStore",
    "RedisStore",
    "StoreUnavailable",
]

Algorithm = Literal["fixed", "sliding"]


class StoreUnavailable(Exception):
    """The counter store cannot answer (Redis down): the caller fails open or closed."""


@dataclass(frozen=True, slots=True)
class Count:
    used: float
    """Requests counted against the limit in the current window, this one included."""
    reset: float
    """Seconds until the current window ends."""


class CounterStore(Protocol):
    algorithm: Algorithm

    async def hit(self, counters: Sequence[tuple[str, int]], hits: int) -> list[Count]:
        """Add ``hits`` to each (counter, window seconds); return each count, in order."""
        ...

    async def close(self) -> None: ...


def _sliding(current: int, previous: int, elapsed: float, window: float) -> float:
    # The sliding-window counter (Cloudflare's): the previous window weighted by its overlap.
    return current + previous * (1.0 - elapsed / window)


class MemoryStore:
    """Counters in this process: for one waypost serving the whole fleet."""

    def __init__(self, algorithm: Algorithm = "fixed") -> None:
        self.algorithm = algorithm
        # counter -> [window start, count, previous window's count]
        self._counters: dict[str, list[float]] = {}
        self._ops = 0
        self._time = time.time

    async def hit(self, counters: Sequence[tuple[str, int]], hits: int) -> list[Count]:
        return self.hit_now(counters, hits, self._time())

    def hit_sync(self, counters: Sequence[tuple[str, int]], hits: int) -> list[Count]:
        """:meth:`hit` without a coroutine: the RLS answers in-process decisions inline."""
        return self.hit_now(counters, hits, self._time())

    def hit_now(self, counters: Sequence[tuple[str, int]], hits: int, now: float) -> list[Count]:
        self._ops += 1
        if self._ops >= 50_000:
            self._sweep(now)
        out = []
        table = self._counters
        sliding = self.algorithm == "sliding"
        for key, window in counters:
            start = math.floor(now / window) * window
            entry = table.get(key)
            if entry is None:
                entry = table[key] = [start, 0, 0]
            elif entry[0] != start:
                entry[2] = entry[1] if entry[0] == start - window else 0
                entry[0] = start
                entry[1] = 0
            entry[1] += hits
            used = _sliding(entry[1], entry[2], now - start, window) if sliding else entry[1]
            out.append(Count(used, start + window - now))
        return out

    def _sweep(self, now: float) -> None:
        # Windows expire by themselves: drop counters idle for two windows (the longest is a day).
        self._ops = 0
        stale = [k for k, e in self._counters.items() if e[0] < now - 2 * 86400 or (e[1] == 0 and e[2] == 0)]
        for key in stale:
            del self._counters[key]

    def __len__(self) -> int:
        return len(self._counters)

    async def close(self) -> None:
        return None


# KEYS: counter bases (hash-tagged). ARGV: hits, sliding flag, then one window (seconds) per key.
# Time comes from Redis itself, so replicas with skewed clocks still share windows.
_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local hits = tonumber(ARGV[1])
local sliding = ARGV[2] == '1'
local out = {now}
for i, base in ipairs(KEYS) do
  local w = tonumber(ARGV[2 + i]) * 1000
  local start = now - (now % w)
  local key = base .. ':' .. start
  local c = redis.call('INCRBY', key, hits)
  if c == hits then redis.call('PEXPIRE', key, 2 * w) end
  local prev = 0
  if sliding then prev = tonumber(redis.call('GET', base .. ':' .. (start - w)) or '0') end
  out[#out + 1] = c
  out[#out + 1] = prev
end
return out
"""


class RedisStore:
    """Counters in Redis, shared by every waypost replica pointing at it."""

    def __init__(self, url: str, algorithm: Algorithm = "fixed", *, timeout: float = 0.5) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError

        self.algorithm = algorithm
        self.url = url
        self._redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # One immediate retry on a broken connection: after a Redis restart the pooled
            # connections are dead, and the first use of each should reconnect, not fail a decision.
            # A dead Redis refuses the reconnect at once; a timeout is not retried (fail fast).
            retry=Retry(NoBackoff(), 1),
            retry_on_error=[RedisConnectionError],
            retry_on_timeout=False,
            health_check_interval=0,
        )
        self._script = self._redis.register_script(_SCRIPT)

    @staticmethod
    def redis_key(counter: str) -> str:
        # '{' and '}' inside a counter would move the hash tag; they are replaced, never ambiguous.
        return "wp:{" + counter.replace("{", "(").replace("}", ")") + "}"

    async def hit(self, counters: Sequence[tuple[str, int]], hits: int) -> list[Count]:
        from redis.exceptions import RedisError

        keys = [self.redis_key(c) for c, _ in counters]
        args = [hits, 1 if self.algorithm == "sliding" else 0, *(w for _, w in counters)]
        try:
            # EVALSHA; redis-py falls back to EVAL (loading the script) once after a NOSCRIPT.
            raw = await self._script(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        now = int(raw[0]) / 1000.0
        out = []
        sliding = self.algorithm == "sliding"
        for i, (_, window) in enumerate(counters):
            current, previous = int(raw[1 + 2 * i]), int(raw[2 + 2 * i])
            start = math.floor(now / window) * window
            used = _sliding(current, previous, now - start, window) if sliding else current
            out.append(Count(used, start + window - now))
        return out

    async def prepare(self) -> None:
        """Load the script up front, so even the first decisions are one EVALSHA each."""
        try:
            await self._redis.script_load(_SCRIPT)
        except Exception:  # Redis down at start: the first decision reports it (fail open/closed)
            return

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except Exception:
            return False

    async def close(self) -> None:
        await self._redis.aclose()
