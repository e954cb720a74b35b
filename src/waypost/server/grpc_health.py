"""``grpc.health.v1.Health`` and server reflection on waypost's grpcio ports.

Probes (grpc_health_probe, Kubernetes gRPC probes, Envoy's gRPC health checks) ask
``Health/Check`` per service; ``grpcurl list`` uses reflection. Each service named here reports
NOT_SERVING until its process has a valid policy version applied, then SERVING (and the empty
name, the whole server, the same); any other name is SERVICE_UNKNOWN (NOT_FOUND on Check).
Unknown methods get grpcio's UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

__all__ = ["GrpcHealth"]

HEALTH_SERVICE = "grpc.health.v1.Health"


class GrpcHealth:
    """Health (per service) and reflection for one grpc.aio server. Event loop only."""

    def __init__(self, server: grpc.aio.Server, services: Sequence[str]) -> None:
        self.services = tuple(services)
        self._servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._servicer, server)
        reflection.enable_server_reflection((*self.services, HEALTH_SERVICE, reflection.SERVICE_NAME), server)
        self._tasks: set[asyncio.Task[None]] = set()
        self.serving = False

    async def start(self) -> None:
        """Every service NOT_SERVING until :meth:`set_serving`."""
        await self._set(False)

    def set_serving(self, serving: bool) -> None:
        """Report the services (and the server, ``""``) as SERVING or NOT_SERVING."""
        if serving == self.serving:
            return
        task = asyncio.get_running_loop().create_task(self._set(serving))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _set(self, serving: bool) -> None:
        self.serving = serving
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", *self.services):
            await self._servicer.set(service, status)
