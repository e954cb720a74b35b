"""Counter stores: fixed (or sliding) windows, in process or in Redis, one round trip per decision.

A decision hits every counter its descriptors name in one call (:meth:`CounterStore.hit`). The
in-process store is a dict; the Redis store runs one Lua script (EVALSHA) that increments every
counter atomically and lets windows expire by themselves (PEXPIRE). Redis keys are
``wp:{<counter>}:<window start ms>``: the hash tag keeps a counter's windows in one Cluster slot
(the sliding window reads the previous one) while distinct counters spread across slots.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, cast
from urllib.parse import unquote, urlsplit

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


def _sliding(current: float, previous: float, elapsed: float, window: float) -> float:
    # The sliding-window counter (Cloudflare's): the previous window weighted by its overlap.
    return current + previous * (1.0 - elapsed / window)


class MemoryStore:
    """Counters in this process: for one waypost serving the whole fleet."""

    def __init__(self, algorithm: Algorithm = "fixed") -> None:
        self.algorithm = algorithm
        # counter -> [window start, count, previous window's count, window length]
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
                entry = table[key] = [start, 0, 0, window]
            elif entry[0] != start:
                entry[2] = entry[1] if entry[0] == start - window else 0
                entry[0] = start
                entry[1] = 0
            entry[1] += hits
            used = _sliding(entry[1], entry[2], now - start, window) if sliding else entry[1]
            out.append(Count(used, start + window - now))
        return out

    def _sweep(self, now: float) -> None:
        # Windows expire by themselves: a counter idle for two of its windows counts nothing more.
        self._ops = 0
        stale = [k for k, e in self._counters.items() if e[0] + 2 * e[3] <= now]
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


class _RespError(Exception):
    """An error reply from Redis (``-ERR ...``, ``-NOSCRIPT ...``)."""


class _ConnectionLost(Exception):
    pass


def _command(*args: bytes | str | int) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _parse(buf: bytearray, pos: int) -> tuple[object, int] | None:
    """One RESP2 reply at ``pos``: (value, next position), or None if it is not complete yet."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return None
    kind, line = buf[pos], bytes(buf[pos + 1 : end])
    pos = end + 2
    if kind == 0x3A:  # ':' integer
        return int(line), pos
    if kind == 0x2B:  # '+' simple string
        return line, pos
    if kind == 0x2D:  # '-' error
        return _RespError(line.decode(errors="replace")), pos
    if kind == 0x24:  # '$' bulk string
        size = int(line)
        if size < 0:
            return None, pos
        if len(buf) < pos + size + 2:
            return None
        return bytes(buf[pos : pos + size]), pos + size + 2
    if kind == 0x2A:  # '*' array
        items = []
        for _ in range(int(line)):
            parsed = _parse(buf, pos)
            if parsed is None:
                return None
            item, pos = parsed
            items.append(item)
        return items, pos
    raise _ConnectionLost(f"unexpected RESP reply type {chr(kind)!r}")


class _Resp(asyncio.Protocol):
    """One pipelined Redis connection: replies come back in request order (RESP2)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiters: collections.deque[asyncio.Future[object]] = collections.deque()
        self.buffer = bytearray()
        self.lost = False
        self.used = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def call(self, command: bytes) -> asyncio.Future[object]:
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        if self.lost or self.transport is None:
            future.set_exception(_ConnectionLost("connection closed"))
            return future
        self.waiters.append(future)
        self.transport.write(command)
        return future

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        pos = 0
        try:
            while self.waiters:
                parsed = _parse(buf, pos)
                if parsed is None:
                    break
                value, pos = parsed
                future = self.waiters.popleft()
                if not future.done():
                    future.set_result(value)
        except (_ConnectionLost, ValueError) as exc:
            self.abort(str(exc))
            return
        del buf[:pos]

    def abort(self, reason: str) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.abort()
        self._fail(reason)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail(f"connection lost: {exc}" if exc else "connection closed by Redis")

    def _fail(self, reason: str) -> None:
        while self.waiters:
            future = self.waiters.popleft()
            if not future.done():
                future.set_exception(_ConnectionLost(reason))


class RedisStore:
    """Counters in Redis, shared by every waypost replica pointing at it.

    One connection, pipelined (concurrent decisions share it; Redis answers in order), spoken in
    plain RESP: a decision is one EVALSHA write and one reply, no pool checkout, no per-call
    objects beyond a future. A lost connection is re-opened on the next decision; while Redis
    refuses connections, decisions fail fast for 100 ms between attempts.
    """

    def __init__(self, url: str, algorithm: Algorithm = "fixed", *, timeout: float = 0.5) -> None:
        parsed = urlsplit(url)
        if parsed.scheme != "redis":
            raise ValueError(f"{url}: only redis://HOST:PORT/DB URLs are supported")
        self.algorithm = algorithm
        self.url = url
        self._host = parsed.hostname or "127.0.0.1"
        self._port = parsed.port or 6379
        self._password = unquote(parsed.password) if parsed.password else None
        self._username = unquote(parsed.username) if parsed.username else None
        self._db = int(parsed.path.lstrip("/") or 0)
        self._timeout = timeout
        self._sha = hashlib.sha1(_SCRIPT.encode()).hexdigest()
        self._evalsha = (b"EVALSHA", self._sha.encode())
        self._conn: _Resp | None = None
        self._connecting: asyncio.Future[_Resp] | None = None
        self._retry_at = 0.0

    @staticmethod
    def redis_key(counter: str) -> str:
        # '{' and '}' inside a counter would move the hash tag; they are replaced, never ambiguous.
        return "wp:{" + counter.replace("{", "(").replace("}", ")") + "}"

    async def hit(self, counters: Sequence[tuple[str, int]], hits: int) -> list[Count]:
        keys = [self.redis_key(c) for c, _ in counters]
        args = [hits, 1 if self.algorithm == "sliding" else 0, *(w for _, w in counters)]
        command = _command(*self._evalsha, len(keys), *keys, *args)
        raw = await self._call(command)
        if isinstance(raw, _RespError) and str(raw).startswith("NOSCRIPT"):
            # Redis restarted or flushed its scripts: load it (EVAL) and carry on.
            raw = await self._call(_command(b"EVAL", _SCRIPT, len(keys), *keys, *args))
        if isinstance(raw, _RespError) or not isinstance(raw, list):
            raise StoreUnavailable(f"unexpected reply from Redis: {raw!r}")
        now = int(raw[0]) / 1000.0
        out = []
        sliding = self.algorithm == "sliding"
        for i, (_, window) in enumerate(counters):
            current, previous = int(raw[1 + 2 * i]), int(raw[2 + 2 * i])
            start = math.floor(now / window) * window
            used = _sliding(current, previous, now - start, window) if sliding else current
            out.append(Count(used, start + window - now))
        return out

    async def _call(self, command: bytes) -> object:
        for attempt in (0, 1):
            conn = await self._connection()
            reused = conn.used
            conn.used = True
            future = conn.call(command)
            loop = asyncio.get_running_loop()
            timer = loop.call_later(self._timeout, self._expire, conn, future)
            try:
                return await future
            except _ConnectionLost as exc:
                # A connection Redis closed while idle (a restart) gets one fresh retry.
                if attempt == 0 and reused:
                    continue
                raise StoreUnavailable(str(exc)) from exc
            finally:
                timer.cancel()
        raise AssertionError("unreachable")

    def _expire(self, conn: _Resp, future: asyncio.Future[object]) -> None:
        if not future.done():
            # Replies are matched by order: after a timeout the connection cannot be trusted.
            conn.abort(f"no reply from Redis within {self._timeout}s")

    async def _connection(self) -> _Resp:
        conn = self._conn
        if conn is not None and not conn.lost:
            return conn
        if self._connecting is not None:
            return await asyncio.shield(self._connecting)
        loop = asyncio.get_running_loop()
        if loop.time() < self._retry_at:
            raise StoreUnavailable(f"Redis at {self._host}:{self._port} unreachable (retrying shortly)")
        self._connecting = loop.create_future()
        try:
            conn = await self._open()
        except BaseException as exc:
            self._retry_at = loop.time() + 0.1
            error = StoreUnavailable(f"cannot connect to Redis at {self._host}:{self._port}: {exc}")
            self._connecting.set_exception(error)
            self._connecting.exception()  # retrieved: waiters get it, nobody else must
            self._connecting = None
            raise error from exc
        self._conn = conn
        self._connecting.set_result(conn)
        self._connecting = None
        return conn

    async def _open(self) -> _Resp:
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(
            loop.create_connection(_Resp, self._host, self._port), timeout=self._timeout
        )
        setup = []
        if self._password is not None:
            setup.append(
                _command(b"AUTH", self._username, self._password)
                if self._username
                else _command(b"AUTH", self._password)
            )
        if self._db:
            setup.append(_command(b"SELECT", self._db))
        setup.append(_command(b"SCRIPT", b"LOAD", _SCRIPT))
        for command in setup:
            reply = await asyncio.wait_for(conn.call(command), timeout=self._timeout)
            if isinstance(reply, _RespError):
                conn.abort(str(reply))
                raise StoreUnavailable(f"Redis refused the connection setup: {reply}")
        return conn

    async def prepare(self) -> None:
        """Connect and load the script up front, so even the first decisions are one EVALSHA each."""
        with contextlib.suppress(StoreUnavailable):  # Redis down at start: decisions report it
            await self._connection()

    async def close(self) -> None:
        if self._conn is not None and self._conn.transport is not None:
            self._conn.transport.close()
        self._conn = None
