"""Serving the decision core: inside `waypost serve` (``--authz-port``) or alone (`waypost authz`).

Standalone, one process per worker: ``--workers N`` starts N copies of itself, each with its own
policy runtime and watcher, all bound to one port with SO_REUSEPORT, so the kernel spreads
Envoy's connections across them (a Python process decides on one core).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc

from waypost.filters.authz.core import AuthzCore
from waypost.filters.authz.grpc_service import AuthzGrpcService
from waypost.log import get_logger
from waypost.peers import PeerFilter
from waypost.server.exposure import AdminAuth
from waypost.server.runtime import PolicyRuntime

__all__ = ["AuthzOptions", "attach_authz", "run_authz", "start_authz_grpc"]

log = get_logger("waypost.authz.server")

_GRPC_OPTIONS = [
    ("grpc.so_reuseport", 1),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_concurrent_streams", 1024),
]


def attach_authz(runtime: PolicyRuntime) -> AuthzCore:
    """A decision core that follows ``runtime``: each applied version swaps its plans."""
    core = AuthzCore()

    def apply(compiled: object) -> None:
        core.apply(compiled.policy)  # type: ignore[attr-defined]

    runtime.add_listener(apply)
    return core


async def start_authz_grpc(
    core: AuthzCore, host: str, port: int, *, peers: PeerFilter | None = None
) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(options=_GRPC_OPTIONS, interceptors=[peers.interceptor()] if peers else None)
    AuthzGrpcService(core).add_to(server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port} for ext_authz")
    await server.start()
    return server, bound


@dataclass(frozen=True, kw_only=True)
class AuthzOptions:
    policies: Path
    host: str = "127.0.0.1"
    port: int = 9191
    http_port: int | None = None
    admin_port: int | None = None
    watch: bool = True
    workers: int = 1
    working_tree: bool = False
    """In a git checkout, read the working files instead of the commit HEAD names."""
    peers: PeerFilter | None = None
    """Client networks allowed on the decision ports (``--decision-allow``); None: anyone."""
    admin_host: str | None = None
    """Where the admin port listens (default: ``host``)."""
    admin_auth: AdminAuth | None = None


def run_authz(options: AuthzOptions, argv: list[str]) -> int:
    """`waypost authz`: one worker in this process, or a supervisor of ``workers`` children."""
    if options.workers <= 1:
        _run_loop(_serve_one(options))
        return 0
    if options.port == 0 or options.http_port == 0:
        print("waypost authz: --workers needs fixed ports", file=sys.stderr)
        return 2
    children = []
    child_argv = [a for a in argv]
    for index in range(options.workers):
        args = [sys.executable, "-m", "waypost", *child_argv, "--workers", "1"]
        if options.admin_port is not None and index > 0:
            args += ["--admin-port", "0"]  # only the first worker owns the fixed admin port
        children.append(subprocess.Popen(args))
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)

    def reload(*_: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGHUP)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, reload)
    codes = [child.wait() for child in children]
    return 0 if stopping else max(codes)


def _run_loop(coro: object) -> None:
    try:
        import uvloop

        uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:
        asyncio.run(coro)  # type: ignore[arg-type]


async def _serve_one(options: AuthzOptions) -> None:
    from waypost.server.admin import AdminServer
    from waypost.server.watch import PolicyWatcher, reload_on_sighup
    from waypost.xds.cache import SnapshotCache

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    runtime = PolicyRuntime(options.policies, SnapshotCache(), working_tree=options.working_tree)
    reload_on_sighup(loop, runtime.reload)
    await runtime.reload()
    core = attach_authz(runtime)
    server, port = await start_authz_grpc(core, options.host, options.port, peers=options.peers)
    http_server = None
    if options.http_port is not None:
        from waypost.filters.authz.http_service import start_authz_http

        http_server, _ = await start_authz_http(core, options.host, options.http_port, peers=options.peers)
    admin = None
    if options.admin_port is not None:
        admin = AdminServer(
            ready=lambda: core.version is not None,
            status=lambda: {"version": core.version},
            auth=options.admin_auth,
        )
        admin_port = await admin.start(options.admin_host or options.host, options.admin_port)
    watcher = None
    if options.watch:
        watcher = PolicyWatcher.for_runtime(runtime, loop=loop)
        watcher.start()
    log.info(
        "waypost authz serving",
        port=port,
        http_port=options.http_port,
        pid=os.getpid(),
        admin_port=admin_port if admin is not None else None,
        version=core.version,
    )
    try:
        await stop.wait()
    finally:
        if watcher is not None:
            watcher.stop()
        if admin is not None:
            await admin.close()
        if http_server is not None:
            http_server.close()
        await server.stop(grace=0.5)
