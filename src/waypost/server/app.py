"""`waypost serve`: wires the policy runtime, its appliers (snapshot cache, in-process decision
services, call analytics), the ADS server, the admin page and the watcher."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from waypost.analytics import Analytics, AnalyticsOptions
from waypost.h2grpc import GrpcioServer, GrpcServer, Service, add_to_grpcio, start_grpc_server
from waypost.log import get_logger
from waypost.policies.model import PolicySet
from waypost.policies.types import Endpoint
from waypost.server.admin import AdminServer
from waypost.server.analytics_pages import install_analytics
from waypost.server.dashboard import Dashboard
from waypost.server.decisions import DecisionOptions, DecisionPlane
from waypost.server.exposure import AdminAuth
from waypost.server.gitpull import GitPuller
from waypost.server.runtime import PolicyRuntime
from waypost.server.watch import PolicyWatcher, reload_on_sighup
from waypost.xds.ads import ADS_SERVICE, PER_TYPE_SERVICES, XDS_LIMITS, AdsServer
from waypost.xds.cache import PreparedVersion, SnapshotCache
from waypost.xds.compiler import CompileMemo, compile_policy
from waypost.xds.compiler.decisions import decision_needs, needed_clusters
from waypost.xds.compiler.registered import allowed
from waypost.xds.registry_redis import RedisRegistrySync
from waypost.xds.security import XdsTls, authorize_node

if TYPE_CHECKING:
    from waypost.portal.options import PortalOptions

__all__ = ["ServeOptions", "XdsApplier", "serve"]

log = get_logger("waypost.serve")


@dataclass(frozen=True, kw_only=True)
class ServeOptions:
    policies: Path
    host: str = "127.0.0.1"
    """Where every port listens unless said otherwise (loopback: see server/exposure.py)."""
    admin_host: str | None = None
    """Where the admin port listens (default: ``host``)."""
    xds_port: int = 18000
    admin_port: int = 9902
    watch: bool = True
    debounce: float = 0.25
    git_pull: float | None = None
    """Seconds between ``git pull --ff-only`` of the policy checkout; None: never pull."""
    xds_tls: XdsTls | None = None
    """TLS on the xDS port; with a client CA, mTLS and node ids checked against certificates."""
    decisions: DecisionOptions = field(default_factory=DecisionOptions)
    """Where the decision services are: run here when needed (default) or named elsewhere."""
    working_tree: bool = False
    """In a git checkout, serve the working files instead of the commit HEAD names."""
    state_dir: Path | None = None
    """Where each team's last good folders are kept across restarts (None: in memory only)."""
    admin_auth: AdminAuth | None = None
    """Token and/or TLS for the admin port (required off loopback)."""
    allow_plaintext_secrets: bool = False
    """Send SDS secrets with private keys over plaintext xDS (otherwise they are withheld)."""
    registry_redis: str | None = None
    """``redis://...``: share self-registered endpoints with the other replicas through it."""
    portal: PortalOptions | None = None
    """Also serve the developer portal (``--portal-port``); it reads this process's counters."""
    analytics: AnalyticsOptions | None = None
    """Collect Envoy's access logs (``--analytics-port``): call analytics."""


class XdsApplier:
    """The snapshot cache as a policy applier: compile with the decision services' endpoints
    (starting the in-process ones a version needs first), encode every snapshot, then swap."""

    name = "xds"

    def __init__(
        self, cache: SnapshotCache, plane: DecisionPlane, *, collector: Endpoint | None = None
    ) -> None:
        self.cache = cache
        self.plane = plane
        self.collector = collector
        """The analytics collector at the advertised address, when this serve runs one."""
        # Incremental reload: unchanged resources are not compiled (nor, in the cache, encoded)
        # again; the result is that of a full compile (see xds/compiler/memo.py).
        self.memo = CompileMemo()

    async def prepare(self, policy: PolicySet) -> PreparedVersion:
        needs = await asyncio.to_thread(decision_needs, policy)
        await self.plane.ensure(needed_clusters(needs, needs))
        options: dict[str, Any] = {"decisions": self.plane.endpoints(), "memo": self.memo}
        if self.collector is not None:  # only then: compile_policy's callers without one stay valid
            options["collector"] = self.collector
        compiled = await asyncio.to_thread(functools.partial(compile_policy, policy, **options))
        return await asyncio.to_thread(self.cache.prepare, compiled)

    def commit(self, prepared: PreparedVersion) -> None:
        self.cache.commit(prepared)
        self.plane.applied(prepared.compiled.decision_needs)


def build_status(
    runtime: PolicyRuntime, cache: SnapshotCache, ads: AdsServer, plane: DecisionPlane
) -> dict[str, Any]:
    failure = runtime.last_failure
    return {
        "policy": {
            "directory": str(runtime.directory),
            "version": runtime.version,
            "applied_at": runtime.applied_at,
            "git": runtime.git_status(),
            "teams": runtime.lanes.status(runtime.current.teams if runtime.current is not None else {}),
            "teams_last_good": runtime.lanes.persistence(),
            "last_error": None
            if failure is None
            else {
                "at": failure.at,
                "errors": list(failure.errors),
                "git": failure.git.as_dict() if failure.git else None,
            },
        },
        "decision_services": plane.status(),
        "nodes": [stream.status() for stream in ads.registry.streams()],
        "registered": registered_status(runtime, cache),
        "xds": {
            # Private keys are not sent over plaintext xDS (serve --allow-plaintext-secrets).
            "secrets_withheld": cache.withheld_secrets,
        },
        "time": time.time(),
    }


def _warn_withheld(cache: SnapshotCache) -> None:
    withheld = cache.withheld_secrets
    if withheld:
        log.warning(
            "private keys not sent over plaintext xDS; the listeners that need them wait "
            "(serve xDS over TLS with --xds-cert/--xds-key/--xds-ca, or pass --allow-plaintext-secrets)",
            secrets=withheld,
        )


def readiness_problems(runtime: PolicyRuntime, plane: DecisionPlane) -> list[str]:
    """Why /readyz is not ready: no valid policy yet, or a route whose decision service nothing
    serves (its requests would fail: 503, or a rate limit silently off)."""
    if runtime.current is None:
        return ["no valid policy loaded"]
    return [
        f"route {p['route']} needs {p['service']} ({p['cluster']}), which nothing serves: {p['fix']}"
        for p in plane.unserved()
    ]


def registered_status(runtime: PolicyRuntime, cache: SnapshotCache) -> list[dict[str, Any]]:
    """Self-registered endpoints in force, and whether the policy lets each count."""
    services = runtime.current.services if runtime.current is not None else {}
    return [
        {
            "service": claim.service,
            "node": claim.node_id,
            "address": str(claim.endpoint),
            "live": claim.expires is None,
            "allowed": allowed(services, claim),
        }
        for claim in cache.registry.claims()
    ]


async def _start_xds(
    ads: AdsServer, options: ServeOptions, ready: Callable[[], bool]
) -> GrpcServer | GrpcioServer:
    """The xDS port. Plaintext: waypost's lean HTTP/2 server, whose per-message cost keeps a
    fleet of thousands of streams in sync (bench/README.md, xDS fan-out). TLS and mTLS: grpcio's
    server, whose TLS stack the node authorizer reads client certificates from."""
    if options.xds_tls is None:
        return await start_grpc_server(ads.services(ready), options.host, options.xds_port, limits=XDS_LIMITS)
    server = grpc.aio.server(
        options=[
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.max_receive_message_length", XDS_LIMITS.max_message),
        ]
    )
    ads.add_to(server)
    health = add_to_grpcio(
        server, [Service(name, {}, ready=ready) for name in (ADS_SERVICE, *PER_TYPE_SERVICES)]
    )
    port = server.add_secure_port(f"{options.host}:{options.xds_port}", options.xds_tls.server_credentials())
    await server.start()
    return GrpcioServer(server, port, health)


async def serve(options: ServeOptions, *, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
            loop.add_signal_handler(sig, stop.set)

    plane = DecisionPlane(options.decisions)
    await plane.open()
    withhold = options.xds_tls is None and not options.allow_plaintext_secrets
    cache = SnapshotCache(withhold_private_keys=withhold)
    registry_sync = None
    if options.registry_redis:
        registry_sync = RedisRegistrySync(options.registry_redis, cache.registry)
        registry_sync.start()
    analytics = Analytics(options.analytics) if options.analytics is not None else None
    collector = None
    if analytics is not None:
        # Like the decision services: at the advertised address, delivered to Envoy over CDS.
        collector = Endpoint(plane.advertise_address, await analytics.start(options.host))
    # Decision services first: they hold a version before Envoy can receive routes that call them.
    runtime = PolicyRuntime(
        options.policies,
        [
            *plane.appliers(),
            *([analytics] if analytics else []),
            XdsApplier(cache, plane, collector=collector),
        ],
        working_tree=options.working_tree,
        settle=options.debounce,
        state_dir=options.state_dir,
    )
    runtime.on_applied(lambda _: _warn_withheld(cache))
    reload_on_sighup(loop, runtime.reload)  # before the first load: SIGHUP never ends the process

    mtls = options.xds_tls is not None and options.xds_tls.client_ca is not None
    ads = AdsServer(cache, authorizer=authorize_node if mtls else None)

    # Health (NOT_SERVING until a valid version is applied) and reflection beside the xDS services.
    def ready() -> bool:
        return runtime.current is not None

    xds_server = await _start_xds(ads, options, ready)
    runtime.on_applied(lambda _: xds_server.health.notify())
    await runtime.reload()  # an invalid first load still serves: not ready until a valid one
    gateways = runtime.current.gateways.values() if runtime.current is not None else ()
    if analytics is None and any(g.analytics.enabled for g in gateways):
        log.info("call analytics off: serve with --analytics-port to collect the Gateways' access logs")

    def status() -> dict[str, Any]:
        return build_status(runtime, cache, ads, plane) | {
            "analytics": analytics.status() if analytics else None
        }

    # Before the admin port answers: /readyz 200 means the portal is up too (or said why not).
    portal = None
    if options.portal is not None:
        from waypost.portal.server import start_portal

        try:
            portal = await start_portal(options.portal, limiter=plane.limiter)
        except Exception as exc:  # the fleet keeps being served; the log says why there is no portal
            log.error("portal not started", error=str(exc))
    admin = AdminServer(
        ready=lambda: not readiness_problems(runtime, plane),
        status=status,
        problems=lambda: readiness_problems(runtime, plane),
        auth=options.admin_auth,
    )
    dashboard = Dashboard(status, policy=lambda: runtime.current)
    dashboard.install(admin)
    if analytics is not None:
        install_analytics(admin, analytics)
    dashboard.start()
    admin_port = await admin.start(options.admin_host or options.host, options.admin_port)
    puller = GitPuller(runtime, options.git_pull) if options.git_pull else None
    if puller is not None:
        puller.start()

    watcher = None
    if options.watch:
        watcher = PolicyWatcher.for_runtime(runtime, loop=loop, debounce=options.debounce)
        watcher.start()
    log.info(
        "waypost serving",
        policies=str(options.policies),
        xds_port=xds_server.port,
        xds_security="mtls" if mtls else "tls" if options.xds_tls else "plaintext",
        private_keys="sent" if not withhold else "withheld",
        admin_port=admin_port,
        advertise_address=plane.advertise_address,
        version=runtime.version,
        git=runtime.git.describe if runtime.git else None,
    )
    try:
        await stop.wait()
    finally:
        log.info("waypost stopping")
        if portal is not None:
            await portal.stop()
        if puller is not None:
            await puller.stop()
        await dashboard.stop()
        if watcher is not None:
            watcher.stop()
        await admin.close()
        await plane.close()
        await xds_server.stop()
        ads.close()
        if registry_sync is not None:
            await registry_sync.stop()
        if analytics is not None:
            await analytics.stop()
