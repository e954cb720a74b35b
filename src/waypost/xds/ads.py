"""The xDS server: state-of-the-world and delta (incremental) xDS, over ADS and per type.

Protocol rules this module keeps (xDS protocol doc, "ACK/NACK and resource type instance version"):

* Every response carries a fresh nonce. A request echoing the latest nonce of its type is an ACK
  (no ``error_detail``) or a NACK (``error_detail`` set); a request echoing an older nonce is
  stale and ignored (delta streams still apply its subscription changes: they are deltas).
* A NACKed version is never sent again to that node; the node stays on its last acked version
  until the policy changes.
* Push order (:data:`~waypost.xds.types.PUSH_ORDER`): listeners and routes of a new version wait
  until the node has acked the clusters they need and has been sent their endpoints. A cluster
  that new routes no longer use stays on the node until it has acked those routes: no request
  ever meets a route naming a cluster its Envoy does not have.
* Responses are assembled from bytes encoded once per policy version (:mod:`.snapshot`), never
  re-serialized per stream.

The rules above live in :class:`~waypost.xds.stream.XdsStream`; :mod:`.sotw` and :mod:`.delta` only
differ in how a request changes what the node holds and how a response is assembled. A delta
resource's version is its content digest and a response's ``system_version_info`` is the same
type version a SotW stream would send, so /status reads the same for both protocols.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from resource import RLIMIT_NOFILE, getrlimit

import grpc

from waypost.h2grpc import GrpcError, Limits, Service, StreamMethod
from waypost.h2grpc.api import Send
from waypost.h2grpc.grpcio_backend import grpc_status
from waypost.xds.cache import NodeInfo
from waypost.xds.delta import DeltaStream
from waypost.xds.sotw import SotwStream
from waypost.xds.stream import StreamRegistry, XdsStream
from waypost.xds.stream_state import ConfigWatcher, NodeAuthorizer
from waypost.xds.types import TypeUrl

__all__ = ["ADS_SERVICE", "PER_TYPE_SERVICES", "XDS_LIMITS", "AdsServer", "Authorizer"]

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"

# The per-type services, for Envoys (or other xDS clients) that do not use ADS: service name ->
# (resource type, SotW method, delta method).
PER_TYPE_SERVICES: dict[str, tuple[TypeUrl, str, str]] = {
    "envoy.service.cluster.v3.ClusterDiscoveryService": (TypeUrl.CLUSTER, "StreamClusters", "DeltaClusters"),
    "envoy.service.endpoint.v3.EndpointDiscoveryService": (
        TypeUrl.ENDPOINT,
        "StreamEndpoints",
        "DeltaEndpoints",
    ),
    "envoy.service.listener.v3.ListenerDiscoveryService": (
        TypeUrl.LISTENER,
        "StreamListeners",
        "DeltaListeners",
    ),
    "envoy.service.route.v3.RouteDiscoveryService": (TypeUrl.ROUTE, "StreamRoutes", "DeltaRoutes"),
    "envoy.service.secret.v3.SecretDiscoveryService": (TypeUrl.SECRET, "StreamSecrets", "DeltaSecrets"),
}


Authorizer = Callable[[grpc.aio.ServicerContext, NodeInfo], str | None]
"""Per RPC: given the call's context (its TLS peer) and the node it claims, None or a refusal."""

XDS_LIMITS = Limits(
    # Every Envoy holds one connection for as long as it runs: as many as the process may open,
    # less some for everything else (at the cap the longest-idle connection makes room).
    max_connections=max(1_000, getrlimit(RLIMIT_NOFILE)[0] - 256),
    max_message=16 * 1024 * 1024,  # a delta request's initial_resource_versions names everything
    connection_window=17 * 1024 * 1024,  # at least one largest request
    max_write_backlog=64 * 1024 * 1024,  # one large response waiting for a slow Envoy to read it
)
"""The lean server's limits on the xDS port (the decision ports' defaults suit many small calls)."""

_Handler = Callable[[AsyncIterator[bytes], Send, NodeAuthorizer | None], Awaitable[None]]


class AdsServer:
    """ADS (SotW and delta) and the per-type xDS services, on either gRPC server.

    :meth:`services` registers them with waypost's lean HTTP/2 server (:mod:`waypost.h2grpc`,
    plaintext xDS): per message it costs a fraction of grpcio's aio server, which is what a fleet
    of thousands of streams is bound by. :meth:`add_to` registers them on a ``grpc.aio.Server``
    (TLS and mTLS xDS). ``authorizer``, when given, is asked on every stream's first request
    whether the peer may receive config for the node it names (see :mod:`waypost.xds.security`);
    it needs the TLS peer, so only :meth:`add_to` takes it.
    """

    def __init__(
        self,
        watcher: ConfigWatcher,
        registry: StreamRegistry | None = None,
        *,
        authorizer: Authorizer | None = None,
    ) -> None:
        self.watcher = watcher
        self.registry = registry or StreamRegistry()
        self.authorizer = authorizer
        self._follower: asyncio.Task[None] | None = None

    def close(self) -> None:
        """Stop following the watcher (the gRPC server is stopping)."""
        if self._follower is not None:
            self._follower.cancel()

    async def _follow_changes(self) -> None:
        generation = self.watcher.generation
        while True:
            await self.watcher.wait_for_change(generation)
            generation = self.watcher.generation
            self.registry.notify_all()

    def _methods(self) -> dict[str, dict[str, _Handler]]:
        """gRPC service name -> method name -> handler, for ADS and every per-type service."""
        services = {ADS_SERVICE: (None, "StreamAggregatedResources", "DeltaAggregatedResources")}
        services.update(PER_TYPE_SERVICES)  # type: ignore[arg-type]
        return {
            service: {sotw: self._handler(SotwStream, only), delta: self._handler(DeltaStream, only)}
            for service, (only, sotw, delta) in services.items()
        }

    def services(self, ready: Callable[[], bool] = lambda: True) -> list[Service]:
        """The xDS services for :func:`waypost.h2grpc.start_grpc_server` (health from ``ready``)."""
        if self.authorizer is not None:
            raise ValueError("the node authorizer needs the TLS peer: serve mTLS xDS with add_to()")

        def method(handler: _Handler) -> StreamMethod:
            return StreamMethod(lambda requests, send: handler(requests, send, None))

        return [
            Service(name, {m: method(handler) for m, handler in methods.items()}, ready=ready)
            for name, methods in self._methods().items()
        ]

    def add_to(self, server: grpc.aio.Server) -> None:
        """Register the xDS services on a grpcio server (requests and responses stay bytes)."""
        generic = []
        for service, methods in self._methods().items():
            handlers = {
                name: grpc.stream_stream_rpc_method_handler(self._grpcio(h)) for name, h in methods.items()
            }
            generic.append(grpc.method_handlers_generic_handler(service, handlers))
        server.add_generic_rpc_handlers(tuple(generic))

    def _grpcio(
        self, handler: _Handler
    ) -> Callable[[AsyncIterator[bytes], grpc.aio.ServicerContext], Awaitable[None]]:
        async def handle(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
            authorize: NodeAuthorizer | None = None
            if self.authorizer is not None:
                authorizer = self.authorizer

                def authorize(node: NodeInfo) -> str | None:
                    return authorizer(context, node)

            try:
                await handler(requests, context.write, authorize)
            except GrpcError as error:
                await context.abort(grpc_status(error), error.message)

        return handle

    def _handler(self, kind: type[XdsStream], only: TypeUrl | None) -> _Handler:
        async def handle(
            requests: AsyncIterator[bytes], send: Send, authorize: NodeAuthorizer | None
        ) -> None:
            if self._follower is None or self._follower.done():
                # Started with the first stream: the server's event loop is running by then.
                self._follower = asyncio.get_running_loop().create_task(self._follow_changes())
            stream = kind(self.watcher, self.registry, only=only, authorize=authorize)
            await stream.serve(requests, send)

        return handle
