"""`waypost serve`: wires the policy runtime, snapshot cache, ADS server, admin page and watcher."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from waypost.filters.ratelimit.server import RateLimitOptions, RunningRateLimit, start_ratelimit
from waypost.log import get_logger
from waypost.server.admin import AdminServer
from waypost.server.runtime import PolicyRuntime
from waypost.server.watch import PolicyWatcher
from waypost.xds.ads import AdsServer
from waypost.xds.cache import SnapshotCache

__all__ = ["ServeOptions", "serve"]

log = get_logger("waypost.serve")


@dataclass(frozen=True, kw_only=True)
class ServeOptions:
    policies: Path
    host: str = "0.0.0.0"
    xds_port: int = 18000
    admin_port: int = 9902
    watch: bool = True
    debounce: float = 0.25
    ratelimit: RateLimitOptions | None = None
    """Also answer Envoy's RateLimitService (``--ratelimit-port``)."""


def build_status(runtime: PolicyRuntime, ads: AdsServer) -> dict[str, Any]:
    compiled = runtime.current
    current_version = compiled.version if compiled else None
    nodes = []
    nodes = [stream.status() for stream in ads.registry.streams()]
    failure = runtime.last_failure
    return {
        "policy": {
            "directory": str(runtime.directory),
            "version": current_version,
            "applied_at": runtime.applied_at,
            "last_error": None if failure is None else {"at": failure.at, "errors": list(failure.errors)},
        },
        "nodes": nodes,
        "time": time.time(),
    }


async def serve(options: ServeOptions, *, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
            loop.add_signal_handler(sig, stop.set)

    cache = SnapshotCache()
    runtime = PolicyRuntime(options.policies, cache)
    await runtime.reload()  # an invalid first load still serves: not ready until a valid one

    ads = AdsServer(cache)
    grpc_server = grpc.aio.server(
        options=[
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
        ]
    )
    ads.add_to(grpc_server)
    xds_port = grpc_server.add_insecure_port(f"{options.host}:{options.xds_port}")
    await grpc_server.start()

    ratelimit: RunningRateLimit | None = None
    if options.ratelimit is not None:
        ratelimit = await start_ratelimit(
            options.ratelimit, lambda: runtime.current.policy if runtime.current is not None else None
        )

    admin = AdminServer(ready=lambda: runtime.current is not None, status=lambda: build_status(runtime, ads))
    admin_port = await admin.start(options.host, options.admin_port)

    watcher = None
    if options.watch:
        watcher = PolicyWatcher(options.policies, runtime.reload, loop=loop, debounce=options.debounce)
        watcher.start()
    log.info(
        "waypost serving",
        policies=str(options.policies),
        xds_port=xds_port,
        admin_port=admin_port,
        version=runtime.current.version if runtime.current else None,
    )
    try:
        await stop.wait()
    finally:
        log.info("waypost stopping")
        if watcher is not None:
            watcher.stop()
        await admin.close()
        await grpc_server.stop(grace=1)
        if ratelimit is not None:
            await ratelimit.stop()
