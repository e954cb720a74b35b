"""One xDS stream, either protocol: the rules of :mod:`waypost.xds.ads` live in :class:`XdsStream`.

:class:`~waypost.xds.sotw.SotwStream` and :class:`~waypost.xds.delta.DeltaStream` only say how a
request changes what the node holds and how a response is assembled. :class:`StreamRegistry`
holds every connected stream for /status and metrics. Single event loop; not thread-safe.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any, ClassVar

from google.protobuf import message

from waypost.h2grpc import GrpcError, Status
from waypost.h2grpc.api import Send
from waypost.log import get_logger
from waypost.metrics import XDS_NACKS, XDS_STREAMS
from waypost.xds.cache import NodeInfo
from waypost.xds.snapshot import EncodedResource, Snapshot, version_of
from waypost.xds.stream_state import (
    GATE_TIMEOUT_S,
    MAX_NACK_DETAIL,
    MAX_NODE_NAME,
    ConfigWatcher,
    NackRecord,
    NodeAuthorizer,
    TypeState,
    cap_text,
    push_counter,
)
from waypost.xds.types import PUSH_ORDER, TypeUrl

__all__ = ["StreamRegistry", "XdsStream"]

log = get_logger("waypost.xds")


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
            push_counter(type_url, snapshot.group).inc()
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
