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

from waypost.analytics import Analytics, AnalyticsOptions
from waypost.filters.ratelimit.server import RateLimitOptions, RunningRateLimit, start_ratelimit
from waypost.log import get_logger
from waypost.policies.types import Endpoint
from waypost.server.admin import AdminServer
from waypost.server.analytics_pages import install_analytics
from waypost.server.dashboard import Dashboard
from waypost.server.gitpull import GitPuller
from waypost.server.runtime import PolicyRuntime
from waypost.server.watch import PolicyWatcher
from waypost.xds.ads import AdsServer
from waypost.xds.cache import SnapshotCache
from waypost.xds.compiler.registered import allowed
from waypost.xds.registry import RedisRegistrySync
from waypost.xds.security import XdsTls, authorize_node

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
    git_pull: float | None = None
    """Seconds between ``git pull --ff-only`` of the policy checkout; None: never pull."""
    authz_port: int | None = None
    """Serve the ext_authz Check service on this port (None: not at all)."""
    authz_http_port: int | None = None
    """Serve the decision core's HTTP endpoint (Gateways with ``auth_service: http``) here."""
    xds_tls: XdsTls | None = None
    """TLS on the xDS port; with a client CA, mTLS and node ids checked against certificates."""
    ratelimit: RateLimitOptions | None = None
    """Also answer Envoy's RateLimitService (``--ratelimit-port``)."""
    registry_redis: str | None = None
    """``redis://...``: share self-registered endpoints with the other replicas through it."""
    analytics: AnalyticsOptions | None = None
    """Collect Envoy's access logs (``--analytics-port``): call analytics."""
    advertise_address: str | None = None
    """The address Envoys reach this waypost at, for clusters compiled into CDS (the analytics
    collector). Default: ``host``, or 127.0.0.1 when listening on every address."""

    def advertised(self) -> str:
        if self.advertise_address:
            return self.advertise_address
        return "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host


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
            "git": runtime.git_status(),
            "last_error": None
            if failure is None
            else {
                "at": failure.at,
                "errors": list(failure.errors),
                "git": failure.git.as_dict() if failure.git else None,
            },
        },
        "nodes": nodes,
        "registered": registered_status(runtime.cache),
        "time": time.time(),
    }


def registered_status(cache: SnapshotCache) -> list[dict[str, Any]]:
    """Self-registered endpoints in force, and whether the policy lets each count."""
    services = cache.compiled.policy.services if cache.compiled is not None else {}
    return [
        {
            "service": claim.service,
            "node": claim.node_id,
            "address": str(claim.endpoint),
            "live": claim.expires is None,
            "allowed": allowed(services.get(claim.service), claim),
        }
        for claim in cache.registry.claims()
    ]


async def serve(options: ServeOptions, *, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
            loop.add_signal_handler(sig, stop.set)

    cache = SnapshotCache()
    registry_sync = None
    if options.registry_redis:
        registry_sync = RedisRegistrySync(options.registry_redis, cache.registry)
        registry_sync.start()
    analytics = Analytics(options.analytics) if options.analytics is not None else None
    collector = None
    if analytics is not None:
        collector = Endpoint(options.advertised(), await analytics.start(options.host))
    runtime = PolicyRuntime(options.policies, cache, collector=collector)
    if analytics is not None:
        runtime.add_listener(lambda compiled: analytics.set_policy(compiled.policy))
    await runtime.reload()  # an invalid first load still serves: not ready until a valid one
    gateways = runtime.current.policy.gateways.values() if runtime.current is not None else ()
    if analytics is None and any(g.analytics.enabled for g in gateways):
        log.info("call analytics off: serve with --analytics-port to collect the Gateways' access logs")

    mtls = options.xds_tls is not None and options.xds_tls.client_ca is not None
    ads = AdsServer(cache, authorizer=authorize_node if mtls else None)
    grpc_server = grpc.aio.server(
        options=[
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
        ]
    )
    ads.add_to(grpc_server)
    if options.xds_tls is not None:
        xds_port = grpc_server.add_secure_port(
            f"{options.host}:{options.xds_port}", options.xds_tls.server_credentials()
        )
    else:
        xds_port = grpc_server.add_insecure_port(f"{options.host}:{options.xds_port}")
    await grpc_server.start()

    authz_server = authz_http = None
    if options.authz_port is not None or options.authz_http_port is not None:
        from waypost.filters.authz.http_service import start_authz_http
        from waypost.filters.authz.server import attach_authz, start_authz_grpc

        core = attach_authz(runtime)
        if options.authz_port is not None:
            authz_server, authz_port = await start_authz_grpc(core, options.host, options.authz_port)
            log.info("ext_authz serving", authz_port=authz_port)
        if options.authz_http_port is not None:
            authz_http, http_port = await start_authz_http(core, options.host, options.authz_http_port)
            log.info("ext_authz http serving", authz_http_port=http_port)
    ratelimit: RunningRateLimit | None = None
    if options.ratelimit is not None:
        ratelimit = await start_ratelimit(
            options.ratelimit, lambda: runtime.current.policy if runtime.current is not None else None
        )

    def status() -> dict[str, Any]:
        return build_status(runtime, ads) | {"analytics": analytics.status() if analytics else None}

    admin = AdminServer(ready=lambda: runtime.current is not None, status=status)
    dashboard = Dashboard(status)
    dashboard.install(admin)
    if analytics is not None:
        install_analytics(admin, analytics)
    dashboard.start()
    admin_port = await admin.start(options.host, options.admin_port)
    puller = GitPuller(runtime, options.git_pull) if options.git_pull else None
    if puller is not None:
        puller.start()

    watcher = None
    if options.watch:
        watcher = PolicyWatcher(options.policies, runtime.reload, loop=loop, debounce=options.debounce)
        watcher.start()
    log.info(
        "waypost serving",
        policies=str(options.policies),
        xds_port=xds_port,
        xds_security="mtls" if mtls else "tls" if options.xds_tls else "plaintext",
        admin_port=admin_port,
        version=runtime.current.version if runtime.current else None,
        git=runtime.git.describe if runtime.git else None,
    )
    try:
        await stop.wait()
    finally:
        log.info("waypost stopping")
        if puller is not None:
            await puller.stop()
        await dashboard.stop()
        if watcher is not None:
            watcher.stop()
        await admin.close()
        if authz_http is not None:
            authz_http.close()
        if authz_server is not None:
            await authz_server.stop(grace=0.5)
        await grpc_server.stop(grace=1)
        ads.close()
        if registry_sync is not None:
            await registry_sync.stop()
        if ratelimit is not None:
            await ratelimit.stop()
        if analytics is not None:
            await analytics.stop()
