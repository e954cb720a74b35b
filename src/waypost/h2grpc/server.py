"""Start and stop the lean gRPC server on one port, with health and reflection beside the services.

``await start_grpc_server([Service(...)], host, port)`` binds (``reuse_port`` for several worker
processes on one port), registers each service's methods under ``/<service>/<method>``, plus
``grpc.health.v1.Health`` (readiness per service, from each :class:`Service`'s ``ready``) and
server reflection. ``await server.stop()`` sends GOAWAY on every connection and closes the port.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from waypost.h2grpc.api import Limits, Service, StreamMethod, UnaryMethod
from waypost.h2grpc.connection import H2Connection
from waypost.h2grpc.conns import ConnectionSlots
from waypost.h2grpc.health import Health
from waypost.h2grpc.reflection import Reflection

__all__ = ["GrpcServer", "start_grpc_server", "with_health_and_reflection"]


class GrpcServer:
    def __init__(self, server: asyncio.Server, slots: ConnectionSlots, health: Health) -> None:
        self._server = server
        self.slots = slots
        self.health = health

    @property
    def port(self) -> int:
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        self._server.close()
        # Envoy keeps its connections open; close them, or wait_closed() waits for Envoy.
        self.slots.close_all()
        await self._server.wait_closed()


def with_health_and_reflection(services: Sequence[Service]) -> tuple[list[Service], Health]:
    """``services`` plus ``grpc.health.v1.Health`` (readiness of each) and server reflection."""
    health = Health({service.name: service.ready for service in services})
    everything: list[Service] = [*services, health.service()]
    reflection = Reflection(lambda: [service.name for service in everything])
    everything += reflection.services()  # listed too: the lambda reads the finished list
    return everything, health


def routes(services: Sequence[Service]) -> dict[bytes, UnaryMethod | StreamMethod]:
    table: dict[bytes, UnaryMethod | StreamMethod] = {}
    for service in services:
        for name, method in service.methods.items():
            table[f"/{service.name}/{name}".encode()] = method
    return table


async def start_grpc_server(
    services: Sequence[Service],
    host: str,
    port: int,
    *,
    limits: Limits | None = None,
    reuse_port: bool = False,
) -> GrpcServer:
    limits = limits or Limits()
    everything, health = with_health_and_reflection(services)
    table = routes(everything)
    slots = ConnectionSlots(
        max_connections=limits.max_connections,
        idle_timeout=limits.idle_timeout,
        handshake_timeout=limits.handshake_timeout,
    )
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: H2Connection(table, limits, slots), host, port, reuse_port=reuse_port or None, backlog=1024
    )
    return GrpcServer(server, slots, health)
