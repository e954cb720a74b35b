"""The ADS server: state-of-the-world xDS over one gRPC stream per Envoy node.

Protocol rules this module keeps (xDS protocol doc, "ACK/NACK and resource type instance version"):

* Every response carries a fresh nonce. A request echoing the latest nonce of its type is an ACK
  (no ``error_detail``) or a NACK (``error_detail`` set); a request echoing an older nonce is
  stale and ignored.
* A NACKed version is never sent again to that node; the node stays on its last acked version
  until the policy changes.
* Push order (:data:`~waypost.xds.types.PUSH_ORDER`): listeners and routes of a new version wait
  until the node has acked the clusters they need and has been sent their endpoints. A cluster
  that new routes no longer use stays on the node until it has acked those routes: no request
  ever meets a route naming a cluster its Envoy does not have.
* Responses are assembled from bytes encoded once per policy version (:mod:`.snapshot`), never
  re-serialized per stream.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from envoy.service.discovery.v3 import discovery_pb2

from waypost.log import get_logger
from waypost.metrics import XDS_NACKS, XDS_PUSHES, XDS_STREAMS
from waypost.xds.cache import NodeInfo
from waypost.xds.snapshot import EncodedResource, Snapshot, encode_field, version_of
from waypost.xds.types import PUSH_ORDER, WILDCARD_TYPES, TypeUrl

__all__ = ["AdsServer", "ConfigWatcher", "NackRecord", "SotwStream", "StreamRegistry"]

log = get_logger("waypost.xds")

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
CONTROL_PLANE = encode_field(6, encode_field(1, b"waypost"))
GATE_TIMEOUT_S = 5.0
"""How long listeners and routes wait for cluster warming before going out anyway."""

_CHANGED = object()
_TICK = object()
_CLOSED = object()


class ConfigWatcher(Protocol):
    """The narrow view of the snapshot cache a stream needs."""

    @property
    def generation(self) -> int: ...

    def snapshot_for(self, node: NodeInfo) -> Snapshot | None: ...

    async def wait_for_change(self, generation: int) -> None: ...

    def watch(self, stream_id: int, node: NodeInfo) -> None: ...

    def unwatch(self, stream_id: int) -> None: ...


@dataclass(frozen=True)
class NackRecord:
    version: str
    message: str
    at: float


@dataclass
class TypeState:
    """What one stream knows about one resource type."""

    subscription: frozenset[str] | None = None
    """Resource names subscribed; None means wildcard (everything the node should have)."""
    sent_version: str | None = None
    sent_nonce: str | None = None
    sent_subscription: frozenset[str] | None = None
    sent_names: frozenset[str] = frozenset()
    acked_version: str | None = None
    acked_snapshot: Snapshot | None = None
    inflight: list[tuple[str, Snapshot]] = field(default_factory=list)
    """Snapshots sent since the last ACK, oldest first, with their nonces."""
    nacked_version: str | None = None
    last_nack: NackRecord | None = None


class StreamRegistry:
    """Every connected stream, for /status and metrics. Single event loop; not thread-safe."""

    def __init__(self) -> None:
        self._streams: dict[int, SotwStream] = {}

    def add(self, stream: SotwStream) -> None:
        self._streams[stream.stream_id] = stream

    def remove(self, stream: SotwStream) -> None:
        self._streams.pop(stream.stream_id, None)

    def streams(self) -> list[SotwStream]:
        return list(self._streams.values())


_stream_ids = itertools.count(1)


class SotwStream:
    """One state-of-the-world ADS stream: reads requests, decides and assembles responses."""

    protocol = "sotw"

    def __init__(self, watcher: ConfigWatcher, registry: StreamRegistry) -> None:
        self.stream_id = next(_stream_ids)
        self.node: NodeInfo | None = None
        self.connected_at = time.time()
        self.types: dict[TypeUrl, TypeState] = {}
        self._watcher = watcher
        self._registry = registry
        self._nonces = itertools.count(1)
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._gate_blocked_since: float | None = None
        self._gate_warned = False

    async def run(self, requests: AsyncIterator[discovery_pb2.DiscoveryRequest]) -> AsyncIterator[bytes]:
        reader = asyncio.create_task(self._read(requests))
        changes: asyncio.Task[None] | None = None
        XDS_STREAMS.labels(self.protocol).inc()
        try:
            while True:
                item = await self._queue.get()
                if item is _CLOSED:
                    return
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, discovery_pb2.DiscoveryRequest):
                    if self.node is None:
                        if not item.HasField("node") or not item.node.id:
                            raise _StreamError(
                                grpc.StatusCode.INVALID_ARGUMENT, "first request must carry node.id"
                            )
                        self._start(NodeInfo.from_proto(item.node))
                        changes = asyncio.create_task(self._follow_changes())
                    self._on_request(item)
                for response in self._due_responses():
                    yield response
        finally:
            reader.cancel()
            if changes is not None:
                changes.cancel()
            XDS_STREAMS.labels(self.protocol).dec()
            self._watcher.unwatch(self.stream_id)
            self._registry.remove(self)
            if self.node is not None:
                log.info("xds stream closed", node=self.node.id, stream=self.stream_id)

    def _start(self, node: NodeInfo) -> None:
        self.node = node
        self._watcher.watch(self.stream_id, node)
        self._registry.add(self)
        log.info(
            "xds stream opened",
            node=node.id,
            cluster=node.cluster,
            labels=dict(node.labels),
            protocol=self.protocol,
            stream=self.stream_id,
        )

    async def _read(self, requests: AsyncIterator[discovery_pb2.DiscoveryRequest]) -> None:
        try:
            async for request in requests:
                self._queue.put_nowait(request)
        except Exception as exc:  # the peer went away mid-message; end the stream quietly
            log.debug("xds stream read ended", error=str(exc), stream=self.stream_id)
        self._queue.put_nowait(_CLOSED)

    async def _follow_changes(self) -> None:
        generation = self._watcher.generation
        while True:
            await self._watcher.wait_for_change(generation)
            generation = self._watcher.generation
            self._queue.put_nowait(_CHANGED)

    # --- requests --------------------------------------------------------------------------------

    def _on_request(self, request: discovery_pb2.DiscoveryRequest) -> None:
        try:
            type_url = TypeUrl(request.type_url)
        except ValueError:
            log.debug("xds request for a type waypost does not serve", type_url=request.type_url)
            return
        state = self.types.setdefault(type_url, TypeState())
        if request.response_nonce:
            if request.response_nonce != state.sent_nonce:
                return  # stale: Envoy has not seen our latest response yet, its next request will
            if request.HasField("error_detail"):
                self._on_nack(type_url, state, request)
            else:
                self._on_ack(state, request)
        elif request.version_info and state.sent_version is None:
            # A reconnecting Envoy tells us what it holds; if that is still current, resending it
            # would be churn. Treat it as sent and acked; the normal rules take over from here.
            state.sent_version = state.acked_version = request.version_info
            state.sent_subscription = _subscription(type_url, request)
            state.sent_names = frozenset(request.resource_names)
        state.subscription = _subscription(type_url, request)

    def _on_ack(self, state: TypeState, request: discovery_pb2.DiscoveryRequest) -> None:
        state.acked_version = request.version_info
        for nonce, snapshot in state.inflight:
            if nonce == request.response_nonce:
                state.acked_snapshot = snapshot
        state.inflight.clear()

    def _on_nack(self, type_url: TypeUrl, state: TypeState, request: discovery_pb2.DiscoveryRequest) -> None:
        assert state.sent_version is not None and self.node is not None
        state.inflight.clear()
        if state.nacked_version == state.sent_version:
            return
        state.nacked_version = state.sent_version
        state.last_nack = NackRecord(
            version=state.sent_version, message=request.error_detail.message, at=time.time()
        )
        XDS_NACKS.labels(type_url.short).inc()
        log.warning(
            "envoy rejected config",
            node=self.node.id,
            type=type_url.short,
            rejected_version=state.sent_version,
            kept_version=request.version_info or None,
            error=request.error_detail.message,
        )

    # --- responses -------------------------------------------------------------------------------

    def _due_responses(self) -> list[bytes]:
        assert self.node is not None or not self.types
        if self.node is None:
            return []
        snapshot = self._watcher.snapshot_for(self.node)
        if snapshot is None:
            return []
        responses = []
        for type_url in PUSH_ORDER:
            state = self.types.get(type_url)
            if state is None:
                continue  # Envoy has not asked for this type yet
            if type_url in (TypeUrl.LISTENER, TypeUrl.ROUTE) and not self._clusters_settled(snapshot):
                continue
            resources = self._desired(type_url, snapshot)
            version = version_of(resources)
            if state.sent_subscription == state.subscription and version in (
                state.sent_version,
                state.nacked_version,
            ):
                continue
            nonce = str(next(self._nonces))
            responses.append(_encode_response(version, resources, type_url, nonce))
            state.sent_version, state.sent_nonce = version, nonce
            state.sent_subscription = state.subscription
            state.sent_names = frozenset(r.name for r in resources)
            state.inflight.append((nonce, snapshot))
            XDS_PUSHES.labels(type_url.short, ",".join(snapshot.group)).inc()
            log.debug(
                "xds push",
                node=self.node.id,
                type=type_url.short,
                version=version,
                resources=len(resources),
                nonce=nonce,
            )
        return responses

    def _desired(self, type_url: TypeUrl, snapshot: Snapshot) -> list[EncodedResource]:
        by_name: dict[str, EncodedResource] = dict(snapshot.resources[type_url])
        if type_url in (TypeUrl.CLUSTER, TypeUrl.ENDPOINT):
            for name, resource in self._retained(type_url, snapshot).items():
                by_name.setdefault(name, resource)
        subscription = self.types[type_url].subscription
        if subscription is not None:
            by_name = {name: r for name, r in by_name.items() if name in subscription}
        return list(by_name.values())

    def _retained(self, type_url: TypeUrl, snapshot: Snapshot) -> dict[str, EncodedResource]:
        """Clusters (or their endpoints) the node's current routes still use but ``snapshot`` dropped."""
        kept: dict[str, EncodedResource] = {}
        current = snapshot.resources[TypeUrl.CLUSTER]
        for ref_type in (TypeUrl.LISTENER, TypeUrl.ROUTE):
            state = self.types.get(ref_type)
            if state is None:
                continue
            held = [state.acked_snapshot, *(s for _, s in state.inflight)]
            for old in held:
                if old is None or old is snapshot:
                    continue
                for name in old.cluster_refs[ref_type] - current.keys():
                    resource = old.resources[type_url].get(name)
                    if resource is not None:
                        kept.setdefault(name, resource)
        return kept

    def _clusters_settled(self, snapshot: Snapshot) -> bool:
        """Whether the node holds (acked) every cluster, with endpoints sent, that ``snapshot`` needs."""
        cds = self.types.get(TypeUrl.CLUSTER)
        if cds is None:
            return True  # this node takes clusters from elsewhere
        settled = cds.acked_version == version_of(self._desired(TypeUrl.CLUSTER, snapshot))
        if settled:
            eds = self.types.get(TypeUrl.ENDPOINT)
            needed = snapshot.eds_clusters & snapshot.resources[TypeUrl.CLUSTER].keys()
            settled = not needed or (eds is not None and needed <= eds.sent_names)
        if settled:
            self._gate_blocked_since = None
            self._gate_warned = False
            return True
        if cds.nacked_version is not None and cds.nacked_version == cds.sent_version:
            return False  # the clusters were rejected: routes that need them must not go out
        now = time.monotonic()
        if self._gate_blocked_since is None:
            self._gate_blocked_since = now
            asyncio.get_running_loop().call_later(GATE_TIMEOUT_S, self._queue.put_nowait, _TICK)
            return False
        if now - self._gate_blocked_since < GATE_TIMEOUT_S:
            return False
        if not self._gate_warned and self.node is not None:
            self._gate_warned = True
            log.warning("clusters not warmed in time; pushing listeners and routes anyway", node=self.node.id)
        return True

    def status(self) -> dict[str, Any]:
        """What /status shows of this stream: identity, and per type what is acked and in sync."""
        node = self.node
        snapshot = self._watcher.snapshot_for(node) if node is not None else None
        types: dict[str, Any] = {}
        for type_url, state in self.types.items():
            nack = state.last_nack
            types[type_url.short] = {
                "acked_version": state.acked_version,
                "sent_version": state.sent_version,
                "in_sync": snapshot is not None
                and state.acked_version == version_of(self._desired(type_url, snapshot)),
                "last_nack": None
                if nack is None
                else {"version": nack.version, "error": nack.message, "at": nack.at},
            }
        return {
            "id": node.id if node else None,
            "cluster": node.cluster if node else None,
            "labels": dict(node.labels) if node else {},
            "gateways": list(snapshot.group) if snapshot else [],
            "policy_version": snapshot.policy_version if snapshot else None,
            "protocol": self.protocol,
            "stream": self.stream_id,
            "connected_since": self.connected_at,
            "types": types,
        }


def _subscription(type_url: TypeUrl, request: discovery_pb2.DiscoveryRequest) -> frozenset[str] | None:
    names = frozenset(request.resource_names)
    if type_url in WILDCARD_TYPES and (not names or "*" in names):
        return None
    return names


def _encode_response(version: str, resources: list[EncodedResource], type_url: TypeUrl, nonce: str) -> bytes:
    return b"".join(
        (
            encode_field(1, version.encode()),
            *(r.sotw_entry for r in sorted(resources, key=lambda r: r.name)),
            encode_field(4, type_url.encode()),
            encode_field(5, nonce.encode()),
            CONTROL_PLANE,
        )
    )


class _StreamError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class AdsServer:
    """Registers the ADS gRPC service on a ``grpc.aio.Server``."""

    def __init__(self, watcher: ConfigWatcher, registry: StreamRegistry | None = None) -> None:
        self.watcher = watcher
        self.registry = registry or StreamRegistry()

    def add_to(self, server: grpc.aio.Server) -> None:
        handlers: Mapping[str, grpc.RpcMethodHandler] = {
            "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                self._stream_sotw,
                request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                response_serializer=_identity,
            ),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(ADS_SERVICE, handlers),))

    async def _stream_sotw(
        self, requests: AsyncIterator[discovery_pb2.DiscoveryRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        stream = SotwStream(self.watcher, self.registry)
        try:
            async for response in stream.run(requests):
                yield response
        except _StreamError as exc:
            await context.abort(exc.code, str(exc))


def _identity(payload: bytes) -> bytes:
    return payload
