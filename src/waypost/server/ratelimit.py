"""Running the rate-limit service: inside `waypost serve` or alone (`waypost ratelimit`).

Both follow the policy through a :class:`~waypost.server.runtime.PolicyRuntime` whose applier is
the :class:`~waypost.filters.ratelimit.limiter.Limiter` (no Envoy snapshot is compiled for it),
so a changed limit applies as soon as the watcher reloads the directory (well within 2 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from dataclasses import dataclass
from pathlib import Path

import grpc

from waypost.contract import RATELIMIT_GRPC_SERVICE
from waypost.filters.ratelimit.h2server import H2RateLimitServer, start_h2_server
from waypost.filters.ratelimit.limiter import Limiter
from waypost.filters.ratelimit.metrics import RATELIMIT_STORE_UP
from waypost.filters.ratelimit.service import RateLimitService
from waypost.filters.ratelimit.store import Algorithm, CounterStore, MemoryStore, RedisStore
from waypost.filters.ratelimit.table import RateLimitTable
from waypost.log import get_logger
from waypost.policies.model import PolicySet
from waypost.server.grpc_health import GrpcHealth

__all__ = [
    "DEFAULT_PORT",
    "LimiterApplier",
    "RateLimitOptions",
    "RunningRateLimit",
    "StandaloneOptions",
    "make_limiter",
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
    """Serve with grpcio's aio server instead of the lean HTTP/2 server (see :mod:`h2server`)."""


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
    server: grpc.aio.Server | H2RateLimitServer
    port: int
    limiter: Limiter
    health: GrpcHealth | None = None
    """Health and reflection, on the grpcio server only (the lean server answers its own)."""

    async def stop(self) -> None:
        if isinstance(self.server, H2RateLimitServer):
            await self.server.stop()
        else:
            await self.server.stop(grace=1)
        await self.limiter.store.close()


def make_store(options: RateLimitOptions) -> CounterStore:
    if options.redis:
        return RedisStore(options.redis, options.algorithm)
    return MemoryStore(options.algorithm)


async def make_limiter(options: RateLimitOptions) -> Limiter:
    store = make_store(options)
    if isinstance(store, RedisStore):
        await store.prepare()
    return Limiter(store, fail_closed=options.fail_closed)


async def start_ratelimit(options: RateLimitOptions, limiter: Limiter) -> RunningRateLimit:
    """Serve ``limiter`` (fed by a policy runtime) on ``options.port``; OSError if it is taken."""
    RATELIMIT_STORE_UP.set(1)
    service = RateLimitService(limiter)
    running: RunningRateLimit
    if not options.grpcio:
        h2 = await start_h2_server(service.answer, options.host, options.port)
        running = RunningRateLimit(server=h2, port=h2.port, limiter=limiter)
    else:
        running = await _start_grpcio(service, options, limiter)
    log.info(
        "rate-limit service listening",
        port=running.port,
        server="grpcio" if options.grpcio else "h2",
        store="redis" if options.redis else "memory",
        algorithm=options.algorithm,
        fail_closed=options.fail_closed,
    )
    return running


async def _start_grpcio(
    service: RateLimitService, options: RateLimitOptions, limiter: Limiter
) -> RunningRateLimit:
    server = grpc.aio.server(
        options=[
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.keepalive_permit_without_calls", 1),
        ]
    )
    service.add_to(server)
    health = GrpcHealth(server, [RATELIMIT_GRPC_SERVICE])
    port = server.add_insecure_port(f"{options.host}:{options.port}")
    if port == 0:
        raise OSError(f"cannot listen on {options.host}:{options.port} for the rate-limit service")
    await server.start()
    await health.start()
    health.set_serving(limiter.table is not None)
    return RunningRateLimit(server=server, port=port, limiter=limiter, health=health)


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
    if running.health is not None:
        health = running.health
        health.set_serving(runtime.current is not None)
        runtime.on_applied(lambda _: health.set_serving(True))
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
