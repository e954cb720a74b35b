"""The decision services as `waypost serve` sees them: where each one is, and who needs it.

For each decision cluster (ext_authz gRPC, ext_authz HTTP, rate limits) serve either names
addresses a fleet runs elsewhere (``--authz-address``, ``--authz-http-address``,
``--ratelimit-address``, each repeatable) or runs the service itself, in process, the first time a
policy version needs it (default ports; ``--no-authz`` / ``--no-ratelimit`` switch that off).
Envoys learn the result over CDS/EDS (:mod:`waypost.xds.compiler.decisions`): this replica's own
services at its advertised address (``--advertise-address``; default the ``--host`` address, or
the address of the host's outbound interface when listening on all of them).

A route whose decision service nothing serves (switched off, nothing named, or its port could
not be bound) is reported before any request: logged when the version is applied, listed by
/readyz (not ready) and /status, shown on the dashboard.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from waypost.contract import AUTHZ_CLUSTER, AUTHZ_HTTP_CLUSTER, DECISION_CLUSTERS, RATELIMIT_CLUSTER
from waypost.filters.authz.core import AuthzCore
from waypost.filters.authz.quota import ConsumerQuota
from waypost.filters.protect.service import BodyChecks
from waypost.filters.ratelimit.limiter import Limiter
from waypost.h2grpc import Limits
from waypost.h2grpc.health import Health
from waypost.log import get_logger
from waypost.policies.types import Endpoint
from waypost.server.authz import (
    DEFAULT_HTTP_PORT,
    DEFAULT_PORT,
    AuthzApplier,
    BodyChecksApplier,
    start_authz_grpc,
)
from waypost.server.ratelimit import (
    CounterOptions,
    LimiterApplier,
    RateLimitOptions,
    make_limiter,
    open_limiter,
    start_ratelimit,
)
from waypost.server.runtime import PolicyApplier
from waypost.xds.compiler import DecisionEndpoints

__all__ = ["DecisionOptions", "DecisionPlane", "default_advertise_address"]

log = get_logger("waypost.decisions")

SERVICE_NAMES = {
    AUTHZ_CLUSTER: "the ext_authz decision service (gRPC)",
    AUTHZ_HTTP_CLUSTER: "the ext_authz decision service (HTTP, auth_service: http)",
    RATELIMIT_CLUSTER: "the rate-limit service",
}
_ADDRESS_FLAG = {
    AUTHZ_CLUSTER: "--authz-address",
    AUTHZ_HTTP_CLUSTER: "--authz-http-address",
    RATELIMIT_CLUSTER: "--ratelimit-address",
}
_OFF_FLAG = {
    AUTHZ_CLUSTER: "--no-authz",
    AUTHZ_HTTP_CLUSTER: "--no-authz",
    RATELIMIT_CLUSTER: "--no-ratelimit",
}


@dataclass(frozen=True, kw_only=True)
class DecisionOptions:
    host: str = "0.0.0.0"
    advertise_address: str | None = None
    authz: bool = True
    """Run ext_authz in process when a version needs it and no address is named for it."""
    authz_port: int = DEFAULT_PORT
    authz_http_port: int = DEFAULT_HTTP_PORT
    authz_grpcio: bool = False
    """Serve Check with grpcio's server instead of waypost's own (:mod:`waypost.h2grpc`)."""
    limits: Limits = field(default_factory=Limits)
    """Connections, streams and sizes allowed per client on the ext_authz ports (issue 12)."""
    ratelimit: RateLimitOptions | None = None
    """The in-process rate-limit service's settings; None: never run it here."""
    authz_addresses: tuple[Endpoint, ...] = ()
    authz_http_addresses: tuple[Endpoint, ...] = ()
    ratelimit_addresses: tuple[Endpoint, ...] = ()
    counters: CounterOptions = field(default_factory=CounterOptions)
    """Where the in-process ext_authz counts consumer quotas when no rate-limit service runs here
    (with one, its counters are shared)."""


def default_advertise_address(host: str) -> str:
    """The address Envoys reach this process at, when not told: the listen address if it is one
    address, else the address of the interface the default route leaves by."""
    if host not in ("", "0.0.0.0", "::"):
        return host
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent, only a route looked up
        address: str = probe.getsockname()[0]
        return address
    return "127.0.0.1"


@dataclass
class _Local:
    port: int
    stop: Callable[[], Awaitable[None]]
    health: Health | None = None


class DecisionPlane:
    """Serve's decision services: the in-process ones it starts, the addresses it names."""

    def __init__(self, options: DecisionOptions) -> None:
        self.options = options
        self.advertise_address = options.advertise_address or default_advertise_address(options.host)
        self.external: dict[str, tuple[Endpoint, ...]] = {
            AUTHZ_CLUSTER: options.authz_addresses,
            AUTHZ_HTTP_CLUSTER: options.authz_http_addresses,
            RATELIMIT_CLUSTER: options.ratelimit_addresses,
        }
        self.local_enabled = {
            AUTHZ_CLUSTER: options.authz and not options.authz_addresses,
            AUTHZ_HTTP_CLUSTER: options.authz and not options.authz_http_addresses,
            RATELIMIT_CLUSTER: options.ratelimit is not None and not options.ratelimit_addresses,
        }
        local_authz = self.local_enabled[AUTHZ_CLUSTER] or self.local_enabled[AUTHZ_HTTP_CLUSTER]
        self.core = AuthzCore() if local_authz else None
        # Route body checks (validation, body screening) ride on the gRPC Check port.
        self.body_checks = BodyChecks() if self.local_enabled[AUTHZ_CLUSTER] else None
        self.limiter: Limiter | None = None
        self.quota_limiter: Limiter | None = None
        """ext_authz's own limiter for consumer quotas, when no rate-limit service runs here."""
        self._running: dict[str, _Local] = {}
        self._errors: dict[str, str] = {}
        self._needs: Mapping[str, frozenset[str]] = {}
        self._reported: set[tuple[str, str]] = set()

    async def open(self) -> None:
        if self.local_enabled[RATELIMIT_CLUSTER] and self.options.ratelimit is not None:
            self.limiter = await make_limiter(self.options.ratelimit)
        if self.core is not None:
            # One hop: the decision counts consumer quotas (filters/authz/quota.py), with the
            # RLS's counters when it runs here, else with a limiter of its own.
            limiter = self.limiter
            if limiter is None:
                limiter = self.quota_limiter = await open_limiter(self.options.counters)
            self.core.quota = ConsumerQuota(limiter)

    def appliers(self) -> list[PolicyApplier[Any]]:
        """The in-process decision services' appliers, to commit with the xDS snapshot."""
        appliers: list[PolicyApplier[Any]] = []
        if self.core is not None:
            appliers.append(AuthzApplier(self.core))
        if self.body_checks is not None:
            appliers.append(BodyChecksApplier(self.body_checks))
        if self.limiter is not None:
            appliers.append(LimiterApplier(self.limiter))
        if self.quota_limiter is not None:
            appliers.append(LimiterApplier(self.quota_limiter))
        return appliers

    async def ensure(self, needed: frozenset[str]) -> None:
        """Start the in-process services ``needed`` that are not running yet. A port that cannot
        be bound leaves the cluster unserved (reported), never the version refused."""
        for cluster in DECISION_CLUSTERS:
            if cluster not in needed or not self.local_enabled[cluster] or cluster in self._running:
                continue
            try:
                self._running[cluster] = await self._start(cluster)
            except OSError as exc:
                self._errors[cluster] = str(exc)
                log.error("decision service cannot start", service=SERVICE_NAMES[cluster], error=str(exc))
                continue
            self._errors.pop(cluster, None)
            log.info(
                "decision service serving",
                service=SERVICE_NAMES[cluster],
                cluster=cluster,
                port=self._running[cluster].port,
                advertised=f"{self.advertise_address}:{self._running[cluster].port}",
            )

    async def _start(self, cluster: str) -> _Local:
        host = self.options.host
        if cluster == RATELIMIT_CLUSTER:
            assert self.limiter is not None and self.options.ratelimit is not None
            running = await start_ratelimit(self.options.ratelimit, self.limiter)
            return _Local(running.port, running.stop, running.health)
        assert self.core is not None
        if cluster == AUTHZ_CLUSTER:
            server = await start_authz_grpc(
                self.core,
                host,
                self.options.authz_port,
                body_checks=self.body_checks,
                grpcio=self.options.authz_grpcio,
                limits=self.options.limits,
            )
            return _Local(server.port, server.stop, server.health)
        from waypost.filters.authz.http_service import start_authz_http

        http, port = await start_authz_http(
            self.core, host, self.options.authz_http_port, limits=self.options.limits
        )

        async def stop_http() -> None:
            http.close()

        return _Local(port, stop_http)

    def endpoints(self) -> DecisionEndpoints:
        endpoints: dict[str, tuple[Endpoint, ...]] = {}
        for cluster in DECISION_CLUSTERS:
            if self.external[cluster]:
                endpoints[cluster] = self.external[cluster]
            elif cluster in self._running:
                endpoints[cluster] = (Endpoint(self.advertise_address, self._running[cluster].port),)
        # Named addresses may be several processes or hosts: Envoy checks each one's health.
        checked = frozenset(cluster for cluster, named in self.external.items() if named)
        return DecisionEndpoints(endpoints=endpoints, health_checked=checked)

    def applied(self, needs: Mapping[str, frozenset[str]]) -> None:
        """A version went live: follow its needs, mark health, log each newly unserved route."""
        self._needs = needs
        for local in self._running.values():
            if local.health is not None:
                local.health.notify()  # readiness is read per call; Watch streams hear it now
        for problem in self.unserved():
            key = (problem["route"], problem["cluster"])
            if key not in self._reported:
                self._reported.add(key)
                log.error("route needs a decision service nothing serves", **problem)
        self._reported &= {(p["route"], p["cluster"]) for p in self.unserved()}

    def unserved(self) -> list[dict[str, str]]:
        """Each (route, decision cluster) the current version needs and nothing serves."""
        served = self.endpoints().endpoints
        problems = []
        for route, clusters in sorted(self._needs.items()):
            for cluster in sorted(clusters):
                if cluster not in served:
                    problems.append(
                        {
                            "route": route,
                            "cluster": cluster,
                            "service": SERVICE_NAMES[cluster],
                            "fix": self._fix(cluster),
                        }
                    )
        return problems

    def _fix(self, cluster: str) -> str:
        if cluster in self._errors:
            return f"its port could not be bound ({self._errors[cluster]})"
        return f"name it with {_ADDRESS_FLAG[cluster]} HOST:PORT, or drop {_OFF_FLAG[cluster]}"

    def status(self) -> dict[str, Any]:
        """``decision_services`` of /status: per cluster, where it is and which routes need it."""
        served = self.endpoints()
        result: dict[str, Any] = {}
        for cluster in DECISION_CLUSTERS:
            needed_by = sorted(route for route, clusters in self._needs.items() if cluster in clusters)
            local = self._running.get(cluster)
            result[cluster] = {
                "service": SERVICE_NAMES[cluster],
                "needed_by": needed_by,
                "endpoints": [str(e) for e in served.endpoints.get(cluster, ())],
                "served_by": "external"
                if self.external[cluster]
                else "this process"
                if local is not None
                else None,
                "local_port": local.port if local is not None else None,
                "health_checked": cluster in served.health_checked,
                "error": self._errors.get(cluster),
            }
        return {"advertise_address": self.advertise_address, "clusters": result, "unserved": self.unserved()}

    async def close(self) -> None:
        store_closed = RATELIMIT_CLUSTER in self._running  # the running service closes its store
        for local in self._running.values():
            await local.stop()
        self._running.clear()
        if self.limiter is not None and not store_closed:
            await self.limiter.store.close()
        if self.quota_limiter is not None:
            await self.quota_limiter.store.close()
