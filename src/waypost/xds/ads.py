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

The rules above live in :class:`XdsStream`; :class:`SotwStream` and :class:`DeltaStream` only
differ in how a request changes what the node holds and how a response is assembled. A delta
resource's version is its content digest and a response's ``system_version_info`` is the same
type version a SotW stream would send, so /status reads the same for both protocols.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from resource import RLIMIT_NOFILE, getrlimit
from typing import Any, ClassVar, Protocol

import grpc
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import message
from prometheus_client import Counter

from waypost.h2grpc import GrpcError, Limits, Service, Status, StreamMethod
from waypost.h2grpc.api import Send
from waypost.h2grpc.grpcio_backend import grpc_status
from waypost.log import get_logger
from waypost.metrics import XDS_NACKS, XDS_PUSHES, XDS_STREAMS
from waypost.xds.cache import NodeInfo
from waypost.xds.snapshot import EncodedResource, Snapshot, encode_field, version_of
from waypost.xds.types import PUSH_ORDER, WILDCARD_TYPES, TypeUrl

__all__ = [
    "XDS_LIMITS",
    "AdsServer",
    "ConfigWatcher",
    "DeltaStream",
    "DeltaTypeState",
    "NackRecord",
    "NodeAuthorizer",
    "SotwStream",
    "StreamRegistry",
    "TypeState",
    "XdsStream",
]

log = get_logger("waypost.xds")

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
CONTROL_PLANE = encode_field(6, encode_field(1, b"waypost"))
DELTA_CONTROL_PLANE = encode_field(7, encode_field(1, b"waypost"))
GATE_TIMEOUT_S = 5.0
MAX_NACK_DETAIL = 4096
"""Characters of a NACK's ``error_detail`` kept (stored, logged, shown); Envoy's are a line or two."""
MAX_NODE_NAME = 256
"""Longest ``node.id`` / ``node.cluster`` accepted; a longer one is refused (INVALID_ARGUMENT)."""


def cap_text(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


"""How long listeners and routes wait for cluster warming before going out anyway."""

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


NodeAuthorizer = Callable[[NodeInfo], str | None]
"""Decides whether a stream may serve a node: None to allow, or the reason it may not."""


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


@dataclass(slots=True)  # a few per stream, thousands of streams: no per-instance __dict__
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
    inflight: list[tuple[str, str, Snapshot]] = field(default_factory=list)
    """(nonce, version, snapshot) of responses sent since the last ACK, oldest first."""
    nacked_version: str | None = None
    last_nack: NackRecord | None = None


@dataclass(slots=True)
class DeltaTypeState(TypeState):
    """A delta stream's view of one type: which resources, at which version, the node holds."""

    known: dict[str, str] = field(default_factory=dict)
    """Resource name -> version (digest) the node holds, as far as this stream has told it."""
    wildcard: bool = False
    explicit: set[str] = field(default_factory=set)
    """Names subscribed by name (kept apart from the wildcard, which may be dropped later)."""
    told_absent: set[str] = field(default_factory=set)
    """Subscribed names already reported as not existing, so they are reported once."""
    resumed: bool = False
    """The node started this type with ``initial_resource_versions`` (a reconnect)."""


class StreamRegistry:
    """Every connected stream, for /status and metrics. Single event loop; not thread-safe."""

    def __init__(self) -> None:
        self._streams: dict[int, XdsStream] = {}

    def notify_all(self) -> None:
        """Tell every stream the watcher moved on (one watcher task for all, not one each)."""
        for stream in self._streams.values():
            stream.notify()

    def add(self, stream: XdsStream) -> None:
        self._streams[stream.stream_id] = stream

    def remove(self, stream: XdsStream) -> None:
        self._streams.pop(stream.stream_id, None)

    def streams(self) -> list[XdsStream]:
        return list(self._streams.values())


_stream_ids = itertools.count(1)


@functools.cache
def _pushes(type_url: TypeUrl, group: tuple[str, ...]) -> Counter:
    """The push counter of a type and group: looked up once, not on every push."""
    return XDS_PUSHES.labels(type_url.short, ",".join(group))


_NAME_SETS: weakref.WeakValueDictionary[frozenset[str], frozenset[str]] = weakref.WeakValueDictionary()


def _shared(names: frozenset[str]) -> frozenset[str]:
    """One frozenset object per distinct set of names: a fleet's streams mostly subscribe to and
    hold the same names, and a 50-name set costs kilobytes per stream otherwise."""
    if not names:
        return frozenset()
    shared = _NAME_SETS.get(names)
    if shared is None:
        _NAME_SETS[names] = shared = names
    return shared


class XdsStream:
    """One xDS stream, either protocol: the node handshake, change following, push-order gating,
    cluster retention, ACK/NACK bookkeeping and /status. Subclasses say how a request updates a
    type's state (:meth:`_on_request`) and how a response is assembled (:meth:`_respond`)."""

    protocol: ClassVar[str]
    request_type: ClassVar[type[message.Message]]

    def __init__(
        self,
        watcher: ConfigWatcher,
        registry: StreamRegistry,
        *,
        only: TypeUrl | None = None,
        authorize: NodeAuthorizer | None = None,
    ) -> None:
        self.stream_id = next(_stream_ids)
        self.node: NodeInfo | None = None
        self.connected_at = time.time()
        self.types: dict[TypeUrl, TypeState] = {}
        self.only = only
        """The one type a per-type (non-ADS) stream serves; None on ADS."""
        self._watcher = watcher
        self._registry = registry
        self._authorize = authorize
        self._nonces = itertools.count(1)
        self._send: Send | None = None
        self._write_lock = asyncio.Lock()
        self._closed = False
        self._push: asyncio.Task[None] | None = None
        """A pending push of a policy change; None when none is scheduled."""
        self._gate_blocked_since: float | None = None
        self._gate_warned = False
        self._current: Snapshot | None = None
        self._snapshot_generation = -1

    async def serve(self, requests: AsyncIterator[bytes], send: Send) -> None:
        """Answer the stream's (serialized) requests on this coroutine, writing responses with
        ``send``; a refusal raises :class:`~waypost.h2grpc.GrpcError` (the transport answers it).

        No reader task and no response generator per stream: at thousands of streams each costs
        kilobytes. Policy changes arrive through :meth:`notify`, which pushes from a short-lived
        task; one lock keeps every stream's writes in the order their state was decided.
        """
        self._send = send
        XDS_STREAMS.labels(self.protocol).inc()
        incoming = aiter(requests)
        try:
            while True:
                try:
                    raw = await anext(incoming)
                except StopAsyncIteration:
                    return
                except Exception as exc:  # the peer went away mid-message; end the stream quietly
                    log.debug("xds stream read ended", error=str(exc), stream=self.stream_id)
                    return
                try:
                    request = self.request_type.FromString(raw)
                except message.DecodeError:
                    raise GrpcError(
                        Status.INVALID_ARGUMENT, f"not a {self.request_type.DESCRIPTOR.full_name}"
                    ) from None
                if self.node is None:
                    self._start(self._identify(request))
                self._on_request(request)
                await self._flush()
        finally:
            self._closed = True
            if self._push is not None:
                self._push.cancel()
            XDS_STREAMS.labels(self.protocol).dec()
            self._watcher.unwatch(self.stream_id)
            self._registry.remove(self)
            if self.node is not None:
                log.info("xds stream closed", node=self.node.id, stream=self.stream_id)

    async def _flush(self) -> None:
        """Write whatever is due now. Deciding and writing happen under one lock, so responses
        leave in the order their nonces were handed out."""
        async with self._write_lock:
            if self._closed or self._send is None:
                return
            for response in self._due_responses():
                await self._send(response)

    def _identify(self, request: Any) -> NodeInfo:
        if not request.HasField("node") or not request.node.id:
            raise GrpcError(Status.INVALID_ARGUMENT, "first request must carry node.id")
        if len(request.node.id) > MAX_NODE_NAME or len(request.node.cluster) > MAX_NODE_NAME:
            raise GrpcError(
                Status.INVALID_ARGUMENT,
                f"node.id and node.cluster are at most {MAX_NODE_NAME} characters",
            )
        node = NodeInfo.from_proto(request.node)
        if self._authorize is not None:
            refusal = self._authorize(node)
            if refusal is not None:
                log.warning("xds stream refused", node=node.id, reason=refusal)
                raise GrpcError(Status.PERMISSION_DENIED, refusal)
        return node

    def _start(self, node: NodeInfo) -> None:
        self.node = node
        self._watcher.watch(self.stream_id, node)
        self._registry.add(self)
        log.info(
            "xds stream opened",
            node=node.id,
            cluster=node.cluster,
            labels=dict(node.labels),
            labels_dropped=node.labels_dropped or None,
            protocol=self.protocol,
            stream=self.stream_id,
        )

    def notify(self) -> None:
        """The watcher moved on (or a gate timer fired): push what is due, once, soon."""
        if self._closed or self._send is None or self.node is None:
            return
        if (self._push is None or self._push.done()) and not self._in_sync():
            self._push = asyncio.get_running_loop().create_task(self._push_changes())

    def _in_sync(self) -> bool:
        """Whether the node was sent all of its snapshot of every type it takes, as subscribed:
        then nothing is due (a change that left its node group alone costs it no task)."""
        snapshot = self._snapshot()
        for type_url, state in self.types.items():
            if snapshot is None or state.sent_subscription != state.subscription:
                return False
            whole = self._whole_type(type_url, snapshot)
            if whole is None or whole[0] != state.sent_version:
                return False
        return True

    async def _push_changes(self) -> None:
        try:
            await self._flush()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the stream ended between the change and the write
            log.debug("xds push after a change failed", error=str(exc), stream=self.stream_id)

    # --- requests --------------------------------------------------------------------------------

    def _on_request(self, request: Any) -> None:
        raise NotImplementedError

    def _type_of(self, raw: str) -> TypeUrl | None:
        """The type a request is about, or None when this stream does not serve it."""
        if not raw and self.only is not None:
            return self.only  # per-type services may leave the type implicit
        try:
            type_url = TypeUrl(raw)
        except ValueError:
            log.debug("xds request for a type waypost does not serve", type_url=raw)
            return None
        if self.only is not None and type_url != self.only:
            log.debug("xds request for another type on a per-type stream", type_url=raw)
            return None
        return type_url

    def _record_nack(
        self, type_url: TypeUrl, state: TypeState, version: str, error: str, kept: str | None
    ) -> None:
        assert self.node is not None
        if state.nacked_version == version:
            return  # logged and counted already
        error = cap_text(error, MAX_NACK_DETAIL)
        state.nacked_version = version
        state.last_nack = NackRecord(version=version, message=error, at=time.time())
        XDS_NACKS.labels(type_url.short).inc()
        log.warning(
            "envoy rejected config",
            node=self.node.id,
            type=type_url.short,
            protocol=self.protocol,
            rejected_version=version,
            kept_version=kept or None,
            error=error,
        )

    # --- responses -------------------------------------------------------------------------------

    def _due_responses(self) -> list[bytes]:
        if self.node is None:
            return []
        snapshot = self._snapshot()
        if snapshot is None:
            return []
        responses = []
        for type_url in PUSH_ORDER:
            state = self.types.get(type_url)
            if state is None:
                continue  # Envoy has not asked for this type yet
            if type_url in (TypeUrl.LISTENER, TypeUrl.ROUTE) and not self._clusters_settled(snapshot):
                continue
            sent = self._respond(type_url, state, snapshot)
            if sent is None:
                continue
            payload, count = sent
            responses.append(payload)
            _pushes(type_url, snapshot.group).inc()
            log.debug(
                "xds push",
                node=self.node.id,
                type=type_url.short,
                protocol=self.protocol,
                version=state.sent_version,
                resources=count,
                nonce=state.sent_nonce,
            )
        return responses

    def _snapshot(self) -> Snapshot | None:
        """The node's snapshot, looked up (its group selected) once per watcher generation."""
        generation = self._watcher.generation
        if self._snapshot_generation != generation and self.node is not None:
            self._current = self._watcher.snapshot_for(self.node)
            self._snapshot_generation = generation
        return self._current

    def _respond(self, type_url: TypeUrl, state: TypeState, snapshot: Snapshot) -> tuple[bytes, int] | None:
        """The response (and its resource count) ``type_url`` needs now, with ``state`` updated
        as sent; None when the node is up to date."""
        raise NotImplementedError

    def _next_nonce(self) -> str:
        return str(next(self._nonces))

    def _whole_type(self, type_url: TypeUrl, snapshot: Snapshot) -> tuple[str, bytes, frozenset[str]] | None:
        """(version, encoded resources, names) of all of ``snapshot``'s resources of the type,
        when that is exactly what this stream should get (nothing retained, nothing filtered):
        the common case, every stream of a group alike, computed once per snapshot."""
        names = snapshot.names(type_url)
        subscription = self.types[type_url].subscription
        if subscription is not None and not names <= subscription:
            return None
        if type_url in (TypeUrl.CLUSTER, TypeUrl.ENDPOINT) and self._retained(type_url, snapshot):
            return None
        return snapshot.version(type_url), snapshot.sotw_body(type_url), names

    def _desired_set(self, type_url: TypeUrl, snapshot: Snapshot) -> tuple[str, frozenset[str]]:
        """(version, names) of what the node should hold of the type."""
        whole = self._whole_type(type_url, snapshot)
        if whole is not None:
            return whole[0], whole[2]
        resources = self._desired(type_url, snapshot)
        return version_of(resources), frozenset(r.name for r in resources)

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
            held = [state.acked_snapshot, *(s for _, _, s in state.inflight)]
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
        version, names = self._desired_set(TypeUrl.CLUSTER, snapshot)
        settled = cds.acked_version == version
        if settled:
            eds = self.types.get(TypeUrl.ENDPOINT)
            # Only the clusters the node takes: a gRPC client subscribes to clusters by name, and
            # only once routes naming them have reached it.
            needed = snapshot.eds_clusters & names
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
            asyncio.get_running_loop().call_later(GATE_TIMEOUT_S, self.notify)
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
                and state.acked_version == self._desired_set(type_url, snapshot)[0],
                "last_nack": None
                if nack is None
                else {"version": nack.version, "error": nack.message, "at": nack.at},
            }
        return {
            "id": node.id if node else None,
            "cluster": node.cluster if node else None,
            "labels": dict(node.labels) if node else {},
            "labels_dropped": node.labels_dropped if node else 0,
            "client": ("grpc" if node.proxyless else "envoy") if node else None,
            "gateways": list(snapshot.group) if snapshot else [],
            "policy_version": snapshot.policy_version if snapshot else None,
            "protocol": self.protocol,
            "service": "ads" if self.only is None else self.only.short,
            "stream": self.stream_id,
            "connected_since": self.connected_at,
            "types": types,
        }


class SotwStream(XdsStream):
    """One state-of-the-world stream: every response carries the whole set for its type."""

    protocol = "sotw"
    request_type = discovery_pb2.DiscoveryRequest

    def _on_request(self, request: discovery_pb2.DiscoveryRequest) -> None:
        type_url = self._type_of(request.type_url)
        if type_url is None:
            return
        state = self.types.setdefault(type_url, TypeState())
        if request.response_nonce:
            if request.response_nonce != state.sent_nonce:
                return  # stale: Envoy has not seen our latest response yet, its next request will
            if request.HasField("error_detail"):
                state.inflight.clear()
                assert state.sent_version is not None
                self._record_nack(
                    type_url, state, state.sent_version, request.error_detail.message, request.version_info
                )
            else:
                self._on_ack(state, request)
        elif request.version_info and state.sent_version is None:
            # A reconnecting Envoy tells us what it holds; if that is still current, resending it
            # would be churn. Treat it as sent and acked; the normal rules take over from here.
            state.sent_version = state.acked_version = request.version_info
            state.sent_subscription = _subscription(type_url, request)
            state.sent_names = _shared(frozenset(request.resource_names))
        state.subscription = _subscription(type_url, request)

    def _on_ack(self, state: TypeState, request: discovery_pb2.DiscoveryRequest) -> None:
        state.acked_version = request.version_info
        for nonce, _, snapshot in state.inflight:
            if nonce == request.response_nonce:
                state.acked_snapshot = snapshot
        state.inflight.clear()

    def _respond(self, type_url: TypeUrl, state: TypeState, snapshot: Snapshot) -> tuple[bytes, int] | None:
        whole = self._whole_type(type_url, snapshot)
        if whole is not None:  # not sorted and hashed again per stream
            version, body, names = whole
        else:
            resources = self._desired(type_url, snapshot)
            version = version_of(resources)
            body = b"".join(r.sotw_entry for r in sorted(resources, key=lambda r: r.name))
            names = _shared(frozenset(r.name for r in resources))
        if state.sent_subscription == state.subscription and version in (
            state.sent_version,
            state.nacked_version,
        ):
            return None
        nonce = self._next_nonce()
        payload = _encode_response(version, body, type_url, nonce)
        state.sent_version, state.sent_nonce = version, nonce
        state.sent_subscription = state.subscription
        state.sent_names = names
        state.inflight.append((nonce, version, snapshot))
        return payload, len(names)


class DeltaStream(XdsStream):
    """One delta (incremental) stream: responses carry only resources the node lacks or holds at
    another version, and the names it should drop.

    A resource's version is its digest, so a reconnecting node's ``initial_resource_versions``
    are compared byte-exactly with what it should hold: equal means nothing is sent.
    """

    protocol = "delta"
    request_type = discovery_pb2.DeltaDiscoveryRequest

    def _on_request(self, request: discovery_pb2.DeltaDiscoveryRequest) -> None:
        type_url = self._type_of(request.type_url)
        if type_url is None:
            return
        state = self.types.get(type_url)
        subscribe = set(request.resource_names_subscribe)
        unsubscribe = set(request.resource_names_unsubscribe)
        if not isinstance(state, DeltaTypeState):
            state = DeltaTypeState()
            self.types[type_url] = state
            state.known = dict(request.initial_resource_versions)
            state.resumed = bool(state.known)
            state.sent_names = _shared(frozenset(state.known))
            # The first request of a wildcard type naming nothing subscribes to everything.
            state.wildcard = type_url in WILDCARD_TYPES and not subscribe
        if "*" in subscribe:
            state.wildcard = True
        if "*" in unsubscribe:
            state.wildcard = False
        state.explicit |= subscribe - {"*"}
        state.explicit -= unsubscribe
        state.told_absent -= subscribe  # a fresh subscription asks again
        if not state.wildcard:
            # The node drops what it unsubscribes from on its own; no removal is due for it.
            for name in unsubscribe - state.explicit:
                state.known.pop(name, None)
            state.sent_names = _shared(frozenset(state.known))
        state.subscription = None if state.wildcard else _shared(frozenset(state.explicit))

        if request.response_nonce:
            position = next(
                (i for i, (nonce, _, _) in enumerate(state.inflight) if nonce == request.response_nonce),
                None,
            )
            if position is None:
                return  # stale or unknown nonce: nothing to acknowledge
            _, version, snapshot = state.inflight[position]
            del state.inflight[: position + 1]
            if request.HasField("error_detail"):
                self._record_nack(type_url, state, version, request.error_detail.message, state.acked_version)
            else:
                state.acked_version, state.acked_snapshot = version, snapshot

    def _respond(self, type_url: TypeUrl, state: TypeState, snapshot: Snapshot) -> tuple[bytes, int] | None:
        assert isinstance(state, DeltaTypeState)
        desired = {r.name: r for r in self._desired(type_url, snapshot)}
        version = version_of(desired.values())
        known = state.known
        changed = [r for name, r in sorted(desired.items()) if known.get(name) != r.digest]
        removed = sorted(name for name in known if name not in desired)
        absent = sorted(
            name
            for name in state.explicit
            if name not in desired and name not in known and name not in state.told_absent
        )
        if not changed and not removed and not absent:
            if state.sent_version is not None:
                return None
            if state.resumed:
                # A reconnect whose node already holds exactly this: nothing to send, all acked.
                state.sent_version = state.acked_version = version
                return None
            # A fresh subscription to an empty set still needs an answer, or Envoy waits for its
            # initial fetch timeout before it goes live.
        nonce = self._next_nonce()
        payload = _encode_delta_response(version, changed, [*removed, *absent], type_url, nonce)
        for resource in changed:
            known[resource.name] = resource.digest
        for name in removed:
            del known[name]
        state.told_absent.update(absent)
        # A name still subscribed but gone has now been reported; do not report it again.
        state.told_absent.update(name for name in removed if name in state.explicit)
        state.sent_version, state.sent_nonce = version, nonce
        state.sent_names = _shared(frozenset(known))
        state.inflight.append((nonce, version, snapshot))
        return payload, len(changed)

    def status(self) -> dict[str, Any]:
        result = super().status()
        for type_url, state in self.types.items():
            if isinstance(state, DeltaTypeState):
                result["types"][type_url.short]["wildcard"] = state.wildcard
                result["types"][type_url.short]["resources"] = len(state.known)
        return result


def _subscription(type_url: TypeUrl, request: discovery_pb2.DiscoveryRequest) -> frozenset[str] | None:
    names = frozenset(request.resource_names)
    if type_url in WILDCARD_TYPES and (not names or "*" in names):
        return None
    return _shared(names)


def _encode_response(version: str, body: bytes, type_url: TypeUrl, nonce: str) -> bytes:
    """A DiscoveryResponse; ``body`` is the resources' ``sotw_entry`` bytes in name order."""
    return b"".join(
        (
            encode_field(1, version.encode()),
            body,
            encode_field(4, type_url.encode()),
            encode_field(5, nonce.encode()),
            CONTROL_PLANE,
        )
    )


def _encode_delta_response(
    version: str, resources: list[EncodedResource], removed: list[str], type_url: TypeUrl, nonce: str
) -> bytes:
    return b"".join(
        (
            encode_field(1, version.encode()),
            *(r.delta_entry for r in resources),
            encode_field(4, type_url.encode()),
            encode_field(5, nonce.encode()),
            *(encode_field(6, name.encode()) for name in removed),
            DELTA_CONTROL_PLANE,
        )
    )


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
