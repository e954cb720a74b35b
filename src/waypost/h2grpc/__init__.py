"""A small, complete gRPC server on HTTP/2 cleartext for waypost's decision ports.

Serves unary and streaming methods registered by the decision services (ext_authz ``Check``,
``ShouldRateLimit``), plus ``grpc.health.v1.Health`` and server reflection, with limits on every
resource a client can make it hold (see :class:`Limits`). It sits below both decision services and
imports neither. Start one with :func:`start_grpc_server`; ``await server.stop()`` ends it.
:func:`start_grpcio_server` serves the same registrations with grpcio's server instead, and
:func:`add_to_grpcio` adds them (with health and reflection) to an existing ``grpc.aio.Server``.
"""

from waypost.h2grpc.api import GrpcError, Limits, Service, Status, StreamMethod, UnaryMethod
from waypost.h2grpc.grpcio_backend import GrpcioServer, add_to_grpcio, start_grpcio_server
from waypost.h2grpc.server import GrpcServer, start_grpc_server

__all__ = [
    "GrpcError",
    "GrpcServer",
    "GrpcioServer",
    "Limits",
    "Service",
    "Status",
    "StreamMethod",
    "UnaryMethod",
    "add_to_grpcio",
    "start_grpc_server",
    "start_grpcio_server",
]
