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
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from google.protobuf import message

from waypost.log import get_logger
from waypost.xds.compiler import CompiledPolicy
from waypost.xds.compiler.registered import allowed, registrable_clusters, with_registered
from waypost.xds.registry import EndpointRegistry, parse_claim
from waypost.xds.snapshot import ResourceEncoder, Snapshot
from waypost.xds.types import TypeUrl

__all__ = ["NodeInfo", "PreparedVersion", "SnapshotCache"]

log = get_logger("waypost.xds")

GroupKey = tuple[str, ...]
DEFAULT_GRACE_S = 10.0
"""A claim's grace when its Service is gone or takes no registrations (the policy changed)."""


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
    register: tuple[str, str] | None = None
    """(service, address) from ``metadata.register``: the node claims to be that endpoint."""

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
        register = None
        if "register" in node.metadata.fields:
            claim = node.metadata.fields["register"].struct_value.fields
            service, address = claim.get("service"), claim.get("address")
            if service is not None and address is not None:
                register = (service.string_value, address.string_value)
        return cls(
            id=node.id,
            cluster=node.cluster,
            labels=labels,
            labels_dropped=dropped,
            proxyless=proxyless,
            register=register,
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
    served: CompiledPolicy
    """``compiled`` with the registered endpoints in force when it was prepared."""


class SnapshotCache:
    """Holds the current compiled policy and the snapshots cut from it, one per node group."""

    def __init__(self, *, withhold_private_keys: bool = False) -> None:
        self.withhold_private_keys = withhold_private_keys
        self._compiled: CompiledPolicy | None = None
        self._served: CompiledPolicy | None = None
        self.registry = EndpointRegistry(grace_for=self._grace_for, on_change=self._refresh_registered)
        self._encoder = ResourceEncoder()
        self._snapshots: dict[GroupKey, Snapshot] = {}
        self._cluster_names: dict[GroupKey, Any] = {}  # see CompiledPolicy.resources_for
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
        # Resources unchanged since the current version (the same message objects, from the
        # compiler's memo) keep their bytes: only what changed is encoded again.
        encoder = ResourceEncoder(previous=self._encoder)
        prepared = self._prepare(compiled, with_registered(compiled, self.registry.claims()), encoder)
        encoder.forget_previous()
        return prepared

    def _prepare(
        self, compiled: CompiledPolicy, served: CompiledPolicy, encoder: ResourceEncoder
    ) -> PreparedVersion:
        groups = {node.group(compiled) for node in list(self._watched.values())}
        # The group of every Gateway proves all of them cut cleanly, even ones no node has yet.
        groups.add(tuple(sorted(compiled.gateways)))
        before = dict(self._snapshots)  # each group's current snapshot: unchanged types carry over
        snapshots = {group: self._build(served, group, encoder, before.get(group)) for group in groups}
        return PreparedVersion(compiled=compiled, encoder=encoder, snapshots=snapshots, served=served)

    def commit(self, prepared: PreparedVersion) -> None:
        """Make a prepared version current and wake every stream. Event loop only."""
        self._compiled, self._served, self._encoder = prepared.compiled, prepared.served, prepared.encoder
        self._snapshots = dict(prepared.snapshots)
        names = self._cluster_names  # only the groups in use: gateways come and go
        self._cluster_names = {group: names[group] for group in self._snapshots if group in names}
        self._generation += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def publish(self, compiled: CompiledPolicy) -> None:
        """Prepare and commit in one step; on error nothing changes."""
        self.commit(self.prepare(compiled))

    def snapshot_for(self, node: NodeInfo) -> Snapshot | None:
        """The snapshot a node should hold now, or None before the first policy is published."""
        if self._compiled is None or self._served is None:
            return None
        group = node.group(self._compiled)
        snapshot = self._snapshots.get(group)
        if snapshot is None:
            snapshot = self._snapshots[group] = self._build(self._served, group, self._encoder)
        return snapshot

    def group_for(self, node: NodeInfo) -> GroupKey:
        return () if self._compiled is None else node.group(self._compiled)

    async def wait_for_change(self, generation: int) -> None:
        """Return once the generation has moved past ``generation``."""
        while self._generation <= generation:
            await self._changed.wait()

    def watch(self, stream_id: int, node: NodeInfo) -> None:
        """Tell the cache a node is connected, so publish prepares its group ahead of time; a node
        that announces ``register`` becomes an endpoint while it stays (see :mod:`.registry`)."""
        self._watched[stream_id] = node
        if node.register is not None:
            try:
                claim = parse_claim(node.register, node.id, node.cluster, node.labels)
            except ValueError as exc:
                log.warning("endpoint registration refused", node=node.id, error=str(exc))
                return
            services = self._compiled.policy.services if self._compiled else {}
            if self._compiled is not None and not allowed(services, claim):
                # Kept all the same: a later policy may allow it, and then it counts at once.
                log.warning(
                    "endpoint registration not allowed by policy",
                    node=node.id,
                    service=claim.service,
                    reason="no Service's registration takes this name from this node",
                )
            self.registry.join(stream_id, claim)

    def unwatch(self, stream_id: int) -> None:
        self._watched.pop(stream_id, None)
        self.registry.leave(stream_id)

    def _grace_for(self, service: str) -> float:
        found = self._compiled.policy.services.get(service) if self._compiled else None
        registration = found.registration if found is not None else None
        return registration.grace / 1000 if registration is not None else DEFAULT_GRACE_S

    def _refresh_registered(self) -> None:
        """The claims changed: rebuild the snapshots with them, re-encoding only endpoints."""
        if self._compiled is None or self._served is None:
            return
        served = with_registered(self._compiled, self.registry.claims())
        before, after = self._served.load_assignments, served.load_assignments
        changed = {name for name in registrable_clusters(served) if before.get(name) != after.get(name)}
        if not changed:
            return
        encoder = self._encoder.without({(TypeUrl.ENDPOINT, name) for name in changed})
        self.commit(self._prepare(self._compiled, served, encoder))

    @property
    def withheld_secrets(self) -> list[str]:
        """Names of the SDS secrets (with private keys) the current version does not send."""
        if not self.withhold_private_keys or self._compiled is None:
            return []
        return sorted(
            _private_key_secrets(self._compiled.resources_for(tuple(sorted(self._compiled.gateways))))
        )

    def _build(
        self,
        compiled: CompiledPolicy,
        group: GroupKey,
        encoder: ResourceEncoder,
        previous: Snapshot | None = None,
    ) -> Snapshot:
        resources = compiled.resources_for(group, self._cluster_names)
        snapshot = Snapshot.build(
            policy_version=compiled.version,
            group=group,
            resources=resources,
            encoder=encoder,
            previous=previous,
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
