"""Running the ext_authz decision core: inside `waypost serve` or alone (`waypost authz`).

The core follows the policy through a :class:`~waypost.server.runtime.PolicyRuntime` whose
applier is the core itself (:class:`AuthzApplier`): no Envoy snapshot is compiled to get the
policy. A version the core cannot take (a ``custom`` plugin that does not import) is refused there
with file:line, and the previous version keeps deciding.

Standalone, one process per worker: ``--workers N`` starts N copies of itself, each with its own
policy runtime and watcher, all bound to one port with SO_REUSEPORT, so the kernel spreads
Envoy's connections across them (a Python process decides on one core). Consumer quotas counted
in the decision (filters/authz/quota.py) live in ``--redis`` when given, shared with the RLS and
every replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from waypost.filters.authz.core import AuthzCore, PreparedAuthz
from waypost.filters.authz.grpc_service import AuthzGrpcService
from waypost.filters.authz.quota import ConsumerQuota
from waypost.filters.protect.service import BodyChecks, PreparedChecks
from waypost.h2grpc import GrpcioServer, GrpcServer, Limits, start_grpc_server, start_grpcio_server
from waypost.log import get_logger
from waypost.policies.model import PolicySet
from waypost.server.ratelimit import CounterOptions, LimiterApplier, open_limiter

__all__ = [
    "DEFAULT_HTTP_PORT",
    "DEFAULT_PORT",
    "AuthzApplier",
    "AuthzOptions",
    "BodyChecksApplier",
    "run_authz",
    "start_authz_grpc",
]

log = get_logger("waypost.authz.server")

DEFAULT_PORT = 9191
DEFAULT_HTTP_PORT = 9192


class AuthzApplier:
    """The decision core as a policy applier: plans (and plugins) prepared off the loop."""

    name = "ext_authz"

    def __init__(self, core: AuthzCore) -> None:
        self.core = core

    async def prepare(self, policy: PolicySet) -> PreparedAuthz:
        return await asyncio.to_thread(self.core.prepare, policy)

    def commit(self, prepared: PreparedAuthz) -> None:
        self.core.commit(prepared)


class BodyChecksApplier:
    """Route body checks (validation, body screening) as a policy applier: schemas compiled off
    the loop; a version whose checks do not compile is refused like any other bad version."""

    name = "body_checks"

    def __init__(self, checks: BodyChecks) -> None:
        self.checks = checks

    async def prepare(self, policy: PolicySet) -> PreparedChecks:
        return await asyncio.to_thread(self.checks.prepare, policy)

    def commit(self, prepared: PreparedChecks) -> None:
        self.checks.commit(prepared)


async def start_authz_grpc(
    core: AuthzCore,
    host: str,
    port: int,
    *,
    body_checks: BodyChecks | None = None,
    grpcio: bool = False,
    limits: Limits | None = None,
) -> GrpcServer | GrpcioServer:
    """The gRPC Check service on ``host:port`` (SO_REUSEPORT: workers share it), with Health
    (SERVING once the core has a version) and reflection; with ``body_checks``, it also answers the
    body-checks filter's Checks. Waypost's own gRPC server unless ``grpcio``. OSError when the port
    is taken."""
    registration = AuthzGrpcService(core, body_checks=body_checks).service()
    if grpcio:
        return await start_grpcio_server([registration], host, port, reuse_port=True)
    return await start_grpc_server([registration], host, port, reuse_port=True, limits=limits)


@dataclass(frozen=True, kw_only=True)
class AuthzOptions:
    policies: Path
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    http_port: int | None = None
    admin_port: int | None = None
    watch: bool = True
    workers: int = 1
    grpcio: bool = False
    """Serve Check with grpcio's server instead of waypost's lean one (:mod:`waypost.h2grpc`)."""
    limits: Limits = field(default_factory=Limits)
    counters: CounterOptions = field(default_factory=CounterOptions)
    """Where consumer quotas are counted (``--redis``: shared with the RLS and every replica)."""


def run_authz(options: AuthzOptions, argv: list[str]) -> int:
    """`waypost authz`: one worker in this process, or a supervisor of ``workers`` children."""
    if options.workers <= 1:
        _run_loop(_serve_one(options))
        return 0
    if options.port == 0 or options.http_port == 0:
        print("waypost authz: --workers needs fixed ports", file=sys.stderr)
        return 2
    if options.counters.redis is None:
        log.warning(
            "consumer quotas are counted per worker process: give --redis to share them",
            workers=options.workers,
        )
    children = []
    child_argv = list(argv)
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

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    codes = [child.wait() for child in children]
    return 0 if stopping else max(codes)


def _run_loop(coro: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:
        asyncio.run(coro)


async def _serve_one(options: AuthzOptions) -> None:
    from waypost.server.admin import AdminServer
    from waypost.server.runtime import PolicyRuntime
    from waypost.server.watch import PolicyWatcher

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    # Consumer quotas are counted in the decision (filters/authz/quota.py), in --redis if given.
    limiter = await open_limiter(options.counters)
    core = AuthzCore(quota=ConsumerQuota(limiter))
    body_checks = BodyChecks()
    runtime = PolicyRuntime(
        options.policies, [AuthzApplier(core), BodyChecksApplier(body_checks), LimiterApplier(limiter)]
    )
    await runtime.reload()
    server = await start_authz_grpc(
        core,
        options.host,
        options.port,
        body_checks=body_checks,
        grpcio=options.grpcio,
        limits=options.limits,
    )
    port = server.port
    runtime.on_applied(lambda _: server.health.notify())
    http_server = None
    if options.http_port is not None:
        from waypost.filters.authz.http_service import start_authz_http

        http_server, _ = await start_authz_http(core, options.host, options.http_port, limits=options.limits)
    admin = None
    if options.admin_port is not None:
        admin = AdminServer(ready=lambda: core.version is not None, status=lambda: {"version": core.version})
        admin_port = await admin.start(options.host, options.admin_port)
    watcher = None
    if options.watch:
        watcher = PolicyWatcher(options.policies, runtime.reload, loop=loop)
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
        await server.stop()
        await limiter.store.close()
