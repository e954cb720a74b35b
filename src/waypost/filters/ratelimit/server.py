"""Run the rate-limit service: inside ``waypost serve --ratelimit-port`` or alone (``waypost ratelimit``).

Both read the policy through the same :class:`~waypost.server.runtime.PolicyRuntime`, so a changed
limit applies as soon as the watcher reloads the directory (well within 2 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from waypost.filters.ratelimit.limiter import Limiter
from waypost.filters.ratelimit.metrics import RATELIMIT_STORE_UP
from waypost.filters.ratelimit.service import RateLimitService
from waypost.filters.ratelimit.store import Algorithm, CounterStore, MemoryStore, RedisStore
from waypost.h2grpc import GrpcioServer, GrpcServer, Limits, start_grpc_server, start_grpcio_server
from waypost.log import get_logger
from waypost.policies.model import PolicySet

__all__ = ["RateLimitOptions", "RunningRateLimit", "StandaloneOptions", "serve_ratelimit", "start_ratelimit"]

log = get_logger("waypost.ratelimit")


@dataclass(frozen=True, kw_only=True)
class RateLimitOptions:
    port: int
    host: str = "0.0.0.0"
    redis: str | None = None
    """``redis://host:port/db``: counters shared by every replica; None keeps them in process."""
    fail_closed: bool = False
    algorithm: Algorithm = "fixed"
    grpcio: bool = False
    """Serve with grpcio's aio server instead of the lean one (see :mod:`waypost.h2grpc`)."""
    limits: Limits = field(default_factory=Limits)
    """Connections, streams and sizes the lean server allows (issue 12: bounded per client)."""


@dataclass
class RunningRateLimit:
    server: GrpcServer | GrpcioServer
    port: int
    limiter: Limiter

    async def stop(self) -> None:
        await self.server.stop()
        await self.limiter.store.close()


def make_store(options: RateLimitOptions) -> CounterStore:
    if options.redis:
        return RedisStore(options.redis, options.algorithm)
    return MemoryStore(options.algorithm)


async def start_ratelimit(
    options: RateLimitOptions, policy_source: Callable[[], PolicySet | None]
) -> RunningRateLimit:
    store = make_store(options)
    if isinstance(store, RedisStore):
        await store.prepare()
    limiter = Limiter(policy_source, store, fail_closed=options.fail_closed)
    RATELIMIT_STORE_UP.set(1)
    registration = RateLimitService(limiter).service(ready=lambda: policy_source() is not None)
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
    from waypost.xds.cache import SnapshotCache

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    runtime = PolicyRuntime(options.policies, SnapshotCache())
    await runtime.reload()
    running = await start_ratelimit(
        options.ratelimit, lambda: runtime.current.policy if runtime.current is not None else None
    )
    admin = AdminServer(
        ready=lambda: runtime.current is not None,
        status=lambda: {"policy": runtime.current.version if runtime.current else None, "port": running.port},
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
