"""The snapshot cache: compiled policy versions in, one snapshot per node group out.

With ``withhold_private_keys`` (plaintext xDS without ``--allow-plaintext-secrets``), SDS secrets
carrying a private key are left out of every snapshot: a listener that needs one waits for it
instead of being served, and :attr:`SnapshotCache.withheld_secrets` says which (for /status).

Contract: lives on one asyncio event loop and is not thread-safe; ``publish`` and
``snapshot_for`` are called from that loop only. A published version is all or nothing: every
snapshot is built and checked for consistency before the swap, so a failure leaves the last good
version serving.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from google.protobuf import message

from waypost.xds.compiler import CompiledPolicy
from waypost.xds.snapshot import ResourceEncoder, Snapshot
from waypost.xds.types import TypeUrl

__all__ = ["NodeInfo", "PreparedVersion", "SnapshotCache"]

GroupKey = tuple[str, ...]


MAX_LABELS = 64
"""Labels kept per node (in key order); a node announcing more is shown with ``labels_dropped``."""
MAX_LABEL_KEY = 128
MAX_LABEL_VALUE = 256
"""Longer labels are dropped, not cut: a cut value could match another selector."""


@dataclass(frozen=True)
class NodeInfo:
    """The identity an Envoy node announces: its id, ``node.cluster`` and metadata labels.

    A node's metadata is self-declared and is stored, logged and shown on /status: labels are
    capped (:data:`MAX_LABELS`, :data:`MAX_LABEL_KEY`, :data:`MAX_LABEL_VALUE`) before anything
    keeps them.
    """

    id: str
    cluster: str
    labels: Mapping[str, str] = field(default_factory=dict)
    labels_dropped: int = 0
    proxyless: bool = False
    """A gRPC library's own xDS client (``user_agent_name`` "gRPC ..."), not an Envoy."""

    @classmethod
    def from_proto(cls, node: base_pb2.Node) -> NodeInfo:
        labels: dict[str, str] = {}
        dropped = 0
        if "labels" in node.metadata.fields:
            fields = node.metadata.fields["labels"].struct_value.fields
            for key in sorted(fields):
                value = fields[key]
                if not value.HasField("string_value"):
                    continue
                if (
                    len(labels) >= MAX_LABELS
                    or len(key) > MAX_LABEL_KEY
                    or len(value.string_value) > MAX_LABEL_VALUE
                ):
                    dropped += 1
                    continue
                labels[key] = value.string_value
        proxyless = node.user_agent_name.lower().startswith("grpc")
        return cls(
            id=node.id, cluster=node.cluster, labels=labels, labels_dropped=dropped, proxyless=proxyless
        )

    def group(self, compiled: CompiledPolicy) -> GroupKey:
        """The node group this node belongs to under ``compiled``."""
        return compiled.select_gateways(self.cluster, self.labels, proxyless=self.proxyless)


@dataclass(frozen=True)
class PreparedVersion:
    """A compiled version with its snapshots built and checked, ready to be committed."""

    compiled: CompiledPolicy
    encoder: ResourceEncoder
    snapshots: Mapping[GroupKey, Snapshot]


class SnapshotCache:
    """Holds the current compiled policy and the snapshots cut from it, one per node group."""

    def __init__(self, *, withhold_private_keys: bool = False) -> None:
        self.withhold_private_keys = withhold_private_keys
        self._compiled: CompiledPolicy | None = None
        self._encoder = ResourceEncoder()
        self._snapshots: dict[GroupKey, Snapshot] = {}
        self._watched: dict[int, NodeInfo] = {}
        self._generation = 0
        self._changed = asyncio.Event()

    @property
    def compiled(self) -> CompiledPolicy | None:
        return self._compiled

    @property
    def generation(self) -> int:
        return self._generation

    def prepare(self, compiled: CompiledPolicy) -> PreparedVersion:
        """Encode and check every snapshot ``compiled`` needs now. Pure and thread-safe: run it
        off the event loop; raises :class:`~waypost.xds.snapshot.InconsistentSnapshot`."""
        encoder = ResourceEncoder()
        groups = {node.group(compiled) for node in list(self._watched.values())}
        # The group of every Gateway proves all of them cut cleanly, even ones no node has yet.
        groups.add(tuple(sorted(compiled.gateways)))
        snapshots = {group: self._build(compiled, group, encoder) for group in groups}
        return PreparedVersion(compiled=compiled, encoder=encoder, snapshots=snapshots)

    def commit(self, prepared: PreparedVersion) -> None:
        """Make a prepared version current and wake every stream. Event loop only."""
        self._compiled, self._encoder = prepared.compiled, prepared.encoder
        self._snapshots = dict(prepared.snapshots)
        self._generation += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def publish(self, compiled: CompiledPolicy) -> None:
        """Prepare and commit in one step; on error nothing changes."""
        self.commit(self.prepare(compiled))

    def snapshot_for(self, node: NodeInfo) -> Snapshot | None:
        """The snapshot a node should hold now, or None before the first policy is published."""
        if self._compiled is None:
            return None
        group = node.group(self._compiled)
        snapshot = self._snapshots.get(group)
        if snapshot is None:
            snapshot = self._snapshots[group] = self._build(self._compiled, group, self._encoder)
        return snapshot

    def group_for(self, node: NodeInfo) -> GroupKey:
        return () if self._compiled is None else node.group(self._compiled)

    async def wait_for_change(self, generation: int) -> None:
        """Return once the generation has moved past ``generation``."""
        while self._generation <= generation:
            await self._changed.wait()

    def watch(self, stream_id: int, node: NodeInfo) -> None:
        """Tell the cache a node is connected, so publish prepares its group ahead of time."""
        self._watched[stream_id] = node

    def unwatch(self, stream_id: int) -> None:
        self._watched.pop(stream_id, None)

    @property
    def withheld_secrets(self) -> list[str]:
        """Names of the SDS secrets (with private keys) the current version does not send."""
        if not self.withhold_private_keys or self._compiled is None:
            return []
        return sorted(
            _private_key_secrets(self._compiled.resources_for(tuple(sorted(self._compiled.gateways))))
        )

    def _build(self, compiled: CompiledPolicy, group: GroupKey, encoder: ResourceEncoder) -> Snapshot:
        resources = compiled.resources_for(group)
        snapshot = Snapshot.build(
            policy_version=compiled.version, group=group, resources=resources, encoder=encoder
        )
        if self.withhold_private_keys:
            snapshot = snapshot.withholding(_private_key_secrets(resources))
        return snapshot


def _private_key_secrets(resources: Mapping[TypeUrl, Mapping[str, message.Message]]) -> frozenset[str]:
    return frozenset(
        name
        for name, secret in resources.get(TypeUrl.SECRET, {}).items()
        if isinstance(secret, secret_pb2.Secret) and secret.HasField("tls_certificate")
    )
