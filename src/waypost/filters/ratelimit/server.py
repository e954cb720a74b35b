"""Run the rate-limit service: inside ``waypost serve --ratelimit-port`` or alone (``waypost ratelimit``).

Both read the policy through the same :class:`~waypost.server.runtime.PolicyRuntime`, so a changed
limit applies as soon as the watcher reloads the directory (well within 2 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from waypost.filters.ratelimit.h2server import H2RateLimitServer, start_h2_server
from waypost.filters.ratelimit.limiter import Limiter
from waypost.filters.ratelimit.metrics import RATELIMIT_STORE_UP
from waypost.filters.ratelimit.service import RateLimitService
from waypost.filters.ratelimit.store import Algorithm, CounterStore, MemoryStore, RedisStore
from waypost.log import get_logger
from waypost.peers import PeerFilter
from waypost.policies.model import PolicySet

if TYPE_CHECKING:
    from waypost.server.exposure import AdminAuth

__all__ = ["RateLimitOptions", "RunningRateLimit", "StandaloneOptions", "serve_ratelimit", "start_ratelimit"]

log = get_logger("waypost.ratelimit")


@dataclass(frozen=True, kw_only=True)
class RateLimitOptions:
    port: int
    host: str = "127.0.0.1"
    redis: str | None = None
    """``redis://host:port/db``: counters shared by every replica; None keeps them in process."""
    fail_closed: bool = False
    algorithm: Algorithm = "fixed"
    grpcio: bool = False
    """Serve with grpcio's aio server instead of the lean HTTP/2 server (see :mod:`h2server`)."""
    peers: PeerFilter | None = None
    """Client networks allowed (``--decision-allow``); None: anyone who reaches the port."""


@dataclass
class RunningRateLimit:
    server: grpc.aio.Server | H2RateLimitServer
    port: int
    limiter: Limiter

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


async def start_ratelimit(
    options: RateLimitOptions, policy_source: Callable[[], PolicySet | None]
) -> RunningRateLimit:
    store = make_store(options)
    if isinstance(store, RedisStore):
        await store.prepare()
    limiter = Limiter(policy_source, store, fail_closed=options.fail_closed)
    RATELIMIT_STORE_UP.set(1)
    service = RateLimitService(limiter)
    running: RunningRateLimit
    if not options.grpcio:
        h2 = await start_h2_server(service.answer, options.host, options.port, peers=options.peers)
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
        ],
        interceptors=[options.peers.interceptor()] if options.peers is not None else None,
    )
    service.add_to(server)
    port = server.add_insecure_port(f"{options.host}:{options.port}")
    await server.start()
    return RunningRateLimit(server=server, port=port, limiter=limiter)


@dataclass(frozen=True, kw_only=True)
class StandaloneOptions:
    policies: Path
    ratelimit: RateLimitOptions
    admin_port: int = 9903
    watch: bool = True
    debounce: float = 0.25
    working_tree: bool = False
    """In a git checkout, read the working files instead of the commit HEAD names."""
    admin_host: str | None = None
    """Where the admin port listens (default: the service's host)."""
    admin_auth: AdminAuth | None = None


async def serve_ratelimit(options: StandaloneOptions, *, stop: asyncio.Event | None = None) -> None:
    """``waypost ratelimit``: the RLS alone, with /metrics and hot reload, no xDS."""
    from waypost.server.admin import AdminServer
    from waypost.server.runtime import PolicyRuntime
    from waypost.server.watch import PolicyWatcher, reload_on_sighup
    from waypost.xds.cache import SnapshotCache

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    runtime = PolicyRuntime(
        options.policies, SnapshotCache(), working_tree=options.working_tree, settle=options.debounce
    )
    reload_on_sighup(loop, runtime.reload)
    await runtime.reload()
    running = await start_ratelimit(
        options.ratelimit, lambda: runtime.current.policy if runtime.current is not None else None
    )
    admin = AdminServer(
        ready=lambda: runtime.current is not None,
        status=lambda: {"policy": runtime.current.version if runtime.current else None, "port": running.port},
        auth=options.admin_auth,
    )
    await admin.start(options.admin_host or options.ratelimit.host, options.admin_port)
    watcher = None
    if options.watch:
        watcher = PolicyWatcher.for_runtime(runtime, loop=loop, debounce=options.debounce)
        watcher.start()
    try:
        await stop.wait()
    finally:
        if watcher is not None:
            watcher.stop()
        await admin.close()
        await running.stop()
