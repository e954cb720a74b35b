"""Running the rate-limit service: inside `waypost serve` or alone (`waypost ratelimit`).

Both follow the policy through a :class:`~waypost.server.runtime.PolicyRuntime` whose applier is
the :class:`~waypost.filters.ratelimit.limiter.Limiter` (no Envoy snapshot is compiled for it),
so a changed limit applies as soon as the watcher reloads the directory (well within 2 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from dataclasses import dataclass, field
from pathlib import Path

from waypost.filters.ratelimit.limiter import Limiter
from waypost.filters.ratelimit.metrics import RATELIMIT_STORE_UP
from waypost.filters.ratelimit.service import RateLimitService
from waypost.filters.ratelimit.store import Algorithm, CounterStore, MemoryStore, RedisStore
from waypost.filters.ratelimit.table import RateLimitTable
from waypost.h2grpc import GrpcioServer, GrpcServer, Limits, start_grpc_server, start_grpcio_server
from waypost.h2grpc.health import Health
from waypost.log import get_logger
from waypost.policies.model import PolicySet

__all__ = [
    "DEFAULT_PORT",
    "CounterOptions",
    "LimiterApplier",
    "RateLimitOptions",
    "RunningRateLimit",
    "StandaloneOptions",
    "make_limiter",
    "open_limiter",
    "serve_ratelimit",
    "start_ratelimit",
]

log = get_logger("waypost.ratelimit")

DEFAULT_PORT = 18001


@dataclass(frozen=True, kw_only=True)
class RateLimitOptions:
    port: int = DEFAULT_PORT
    host: str = "0.0.0.0"
    redis: str | None = None
    """``redis://host:port/db``: counters shared by every replica; None keeps them in process."""
    fail_closed: bool = False
    algorithm: Algorithm = "fixed"
    grpcio: bool = False
    """Serve with grpcio's aio server instead of the lean one (see :mod:`waypost.h2grpc`)."""
    limits: Limits = field(default_factory=Limits)
    """Connections, streams and sizes the lean server allows (issue 12: bounded per client)."""


class LimiterApplier:
    """The rate-limit table as a policy applier: the table is built off the loop, swapped on it."""

    name = "ratelimit"

    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter

    async def prepare(self, policy: PolicySet) -> RateLimitTable:
        return await asyncio.to_thread(self.limiter.prepare, policy)

    def commit(self, prepared: RateLimitTable) -> None:
        self.limiter.commit(prepared)


@dataclass
class RunningRateLimit:
    server: GrpcServer | GrpcioServer
    port: int
    limiter: Limiter

    @property
    def health(self) -> Health:
        """``grpc.health.v1.Health`` of the port: SERVING once the limiter has a table."""
        return self.server.health

    async def stop(self) -> None:
        await self.server.stop()
        await self.limiter.store.close()


@dataclass(frozen=True, kw_only=True)
class CounterOptions:
    """Where counters live, for the RLS and for consumer quotas counted by ext_authz."""

    redis: str | None = None
    """``redis://host:port/db``: counters shared by every replica; None keeps them in process."""
    algorithm: Algorithm = "fixed"
    fail_closed: bool = False


async def open_limiter(options: CounterOptions) -> Limiter:
    """A limiter on a ready store (Redis connected and its script loaded, when ``redis``): for the
    RLS, and for the ext_authz service counting consumer quotas itself (filters.authz.quota).
    A policy runtime feeds it through a :class:`LimiterApplier`."""
    store: CounterStore = (
        RedisStore(options.redis, options.algorithm) if options.redis else MemoryStore(options.algorithm)
    )
    if isinstance(store, RedisStore):
        await store.prepare()
    return Limiter(store, fail_closed=options.fail_closed)


async def make_limiter(options: RateLimitOptions) -> Limiter:
    return await open_limiter(
        CounterOptions(redis=options.redis, algorithm=options.algorithm, fail_closed=options.fail_closed)
    )


async def start_ratelimit(options: RateLimitOptions, limiter: Limiter) -> RunningRateLimit:
    """Serve ``limiter`` (fed by a policy runtime) on ``options.port``; OSError if it is taken."""
    RATELIMIT_STORE_UP.set(1)
    registration = RateLimitService(limiter).service(ready=lambda: limiter.table is not None)
    server: GrpcServer | GrpcioServer
    if options.grpcio:
        server = await start_grpcio_server([registration], options.host, options.port)
    else:
        server = await start_grpc_server([registration], options.host, options.port, limits=options.limits)
    running = RunningRateLimit(server=server, port=server.port, limiter=limiter)
    log.info(
        "rate-limit service listening",
        port=running.port,
        server="grpcio" if options.grpcio else "h2",
        store="redis" if options.redis else "memory",
        algorithm=options.algorithm,
        fail_closed=options.fail_closed,
    )
    return running


@dataclass(frozen=True, kw_only=True)
class StandaloneOptions:
    policies: Path
    ratelimit: RateLimitOptions
    admin_port: int = 9903
    watch: bool = True
    debounce: float = 0.25


async def serve_ratelimit(options: StandaloneOptions, *, stop: asyncio.Event | None = None) -> None:
    """``waypost ratelimit``: the RLS alone, with /metrics and hot reload, no xDS."""
    from waypost.server.admin import AdminServer
    from waypost.server.runtime import PolicyRuntime
    from waypost.server.watch import PolicyWatcher

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    limiter = await make_limiter(options.ratelimit)
    runtime = PolicyRuntime(options.policies, [LimiterApplier(limiter)])
    await runtime.reload()
    running = await start_ratelimit(options.ratelimit, limiter)
    runtime.on_applied(lambda _: running.health.notify())
    admin = AdminServer(
        ready=lambda: runtime.current is not None,
        status=lambda: {"policy": runtime.version, "port": running.port},
    )
    await admin.start(options.ratelimit.host, options.admin_port)
    watcher = None
    if options.watch:
        watcher = PolicyWatcher(options.policies, runtime.reload, loop=loop, debounce=options.debounce)
        watcher.start()
    try:
        await stop.wait()
    finally:
        if watcher is not None:
            watcher.stop()
        await admin.close()
        await running.stop()
