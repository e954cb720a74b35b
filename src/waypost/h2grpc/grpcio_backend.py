"""The same :class:`~waypost.h2grpc.api.Service` registrations served by grpcio's aio server.

For ``--authz-grpcio`` / ``--ratelimit-grpcio`` (grpcio's complete stack, at about four times the
CPU per call), and for ports that are grpcio servers anyway (xDS): :func:`add_to_grpcio` adds the
services, health and reflection to a ``grpc.aio.Server``, with the same handlers, statuses and
readiness as the lean server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

from waypost.h2grpc.api import GrpcError, Service, StreamMethod, UnaryMethod
from waypost.h2grpc.health import Health
from waypost.h2grpc.server import with_health_and_reflection
from waypost.log import get_logger
from waypost.peers import PeerFilter

__all__ = ["GrpcioServer", "add_to_grpcio", "grpc_status", "start_grpcio_server"]

log = get_logger("waypost.h2grpc")

_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_concurrent_streams", 1024),
]


def grpc_status(error: GrpcError) -> grpc.StatusCode:
    return next(code for code in grpc.StatusCode if code.value[0] == error.status)


def _unary(method: UnaryMethod) -> grpc.RpcMethodHandler:
    async def handle(body: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        try:
            answer = method.handler(body)
            return answer if isinstance(answer, bytes) else await answer
        except GrpcError as error:
            await context.abort(grpc_status(error), error.message)
            raise  # unreachable: abort raises
        except Exception:
            log.exception("gRPC handler failed")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
            raise

    return grpc.unary_unary_rpc_method_handler(handle)


def _stream(method: StreamMethod) -> grpc.RpcMethodHandler:
    async def handle(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]) -> None:
        async def send(message: bytes) -> None:
            await context.write(message)

        try:
            await method.handler(requests, send)
        except GrpcError as error:
            await context.abort(grpc_status(error), error.message)
        except Exception:
            log.exception("gRPC handler failed")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")

    return grpc.stream_stream_rpc_method_handler(handle)


def add_to_grpcio(server: grpc.aio.Server, services: Sequence[Service]) -> Health:
    """Register ``services``, health and reflection on ``server`` (before it starts). A service
    without methods here (registered on the server by other means) gets health and reflection."""
    everything, health = with_health_and_reflection(services)
    for service in everything:
        if not service.methods:
            continue
        handlers = {
            name: _unary(method) if isinstance(method, UnaryMethod) else _stream(method)
            for name, method in service.methods.items()
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.name, handlers),))
    return health


class GrpcioServer:
    def __init__(self, server: grpc.aio.Server, port: int, health: Health) -> None:
        self._server = server
        self.port = port
        self.health = health

    async def stop(self) -> None:
        await self._server.stop(grace=0.5)


async def start_grpcio_server(
    services: Sequence[Service],
    host: str,
    port: int,
    *,
    reuse_port: bool = False,
    peers: PeerFilter | None = None,
) -> GrpcioServer:
    server = grpc.aio.server(
        options=[*_OPTIONS, ("grpc.so_reuseport", int(reuse_port))],
        interceptors=[peers.interceptor()] if peers is not None else None,
    )
    health = add_to_grpcio(server, services)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    await server.start()
    return GrpcioServer(server, bound, health)
