"""Versioned snapshots: one node group's resources at one policy version, each encoded once.

A resource is serialized deterministically exactly once per policy version; its bytes, its
sha256 digest and its pre-encoded ``DiscoveryResponse.resources`` entry are shared by every node
group and every stream. Versions are hashes of (name, digest) pairs, so two waypost replicas on
the same files hand Envoy identical versions and a failover causes no churn.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf import any_pb2, message, symbol_database

from waypost.xds.types import TypeUrl

__all__ = [
    "EncodedResource",
    "InconsistentSnapshot",
    "ResourceEncoder",
    "Snapshot",
    "encode_field",
    "encode_varint",
    "version_of",
]


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def encode_field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return encode_varint(number << 3 | 2) + encode_varint(len(payload)) + payload


@dataclass(frozen=True, slots=True)
class EncodedResource:
    name: str
    type_url: TypeUrl
    digest: str
    body: bytes
    any_bytes: bytes
    """The resource as a serialized ``google.protobuf.Any``."""
    sotw_entry: bytes
    """``DiscoveryResponse.resources`` (field 2) holding this resource: appended as is."""
    delta_entry: bytes
    """``DeltaDiscoveryResponse.resources`` (field 2): a ``Resource`` with name, version (the
    digest) and the resource, appended as is by every delta stream."""

    @classmethod
    def encode(cls, type_url: TypeUrl, name: str, msg: message.Message) -> EncodedResource:
        body = msg.SerializeToString(deterministic=True)
        any_bytes = encode_field(1, type_url.encode()) + encode_field(2, body)
        digest = hashlib.sha256(body).hexdigest()
        # Resource: version = 1, resource = 2, name = 3 (ascending, as deterministic output has it).
        delta_resource = (
            encode_field(1, digest.encode()) + encode_field(2, any_bytes) + encode_field(3, name.encode())
        )
        return cls(
            name=name,
            type_url=type_url,
            digest=digest,
            body=body,
            any_bytes=any_bytes,
            sotw_entry=encode_field(2, any_bytes),
            delta_entry=encode_field(2, delta_resource),
        )


def version_of(resources: Iterable[EncodedResource]) -> str:
    """The version of a set of resources: equal sets give equal versions on every replica."""
    digest = hashlib.sha256()
    for resource in sorted(resources, key=lambda r: r.name):
        digest.update(resource.name.encode())
        digest.update(b"\0")
        digest.update(resource.digest.encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


class ResourceEncoder:
    """Encodes each (type, name) once; shared by every group snapshot of one policy version.

    Given the ``previous`` version's encoder, a resource whose message is the very object that
    version had (the compiler's memo reuses unchanged resources) reuses its bytes and the names
    it refers to: a reload re-encodes only what changed. :meth:`forget_previous` drops the link
    once the version is prepared, so versions do not chain up in memory.
    """

    def __init__(self, previous: ResourceEncoder | None = None) -> None:
        self._done: dict[tuple[TypeUrl, str], EncodedResource] = {}
        self._messages: dict[tuple[TypeUrl, str], message.Message] = {}
        self._references: dict[tuple[TypeUrl, str], tuple[message.Message, _References]] = {}
        self._previous = previous

    def without(self, keys: set[tuple[TypeUrl, str]]) -> ResourceEncoder:
        """A copy that re-encodes ``keys`` and reuses every other resource's bytes: for a change of
        the same policy version that touches only those resources (registered endpoints)."""
        derived = ResourceEncoder()
        derived._done = {key: encoded for key, encoded in self._done.items() if key not in keys}
        derived._messages = {key: msg for key, msg in self._messages.items() if key not in keys}
        derived._references = {key: refs for key, refs in self._references.items() if key not in keys}
        return derived

    def encode(self, type_url: TypeUrl, name: str, msg: message.Message) -> EncodedResource:
        key = (type_url, name)
        encoded = self._done.get(key)
        if encoded is None:
            previous = self._previous
            if previous is not None and previous._messages.get(key) is msg:
                encoded = previous._done[key]
            else:
                encoded = EncodedResource.encode(type_url, name, msg)
            self._done[key] = encoded
            self._messages[key] = msg
        return encoded

    def references(self, type_url: TypeUrl, name: str, msg: message.Message) -> _References:
        """The names ``msg`` refers to (walked once per message object)."""
        key = (type_url, name)
        found = self._references.get(key)
        if found is None or found[0] is not msg:
            previous = self._previous._references.get(key) if self._previous is not None else None
            if previous is not None and previous[0] is msg:
                found = previous
            else:
                refs = _References()
                if isinstance(msg, route_pb2.RouteConfiguration):
                    refs.walk_route_configuration(msg)
                else:
                    refs.walk(msg)
                found = (msg, refs)
            self._references[key] = found
        return found[1]

    def forget_previous(self) -> None:
        self._previous = None


class InconsistentSnapshot(ValueError):
    """A snapshot names a resource it does not carry; publishing it would break Envoy."""


@dataclass(frozen=True)
class Snapshot:
    """One node group's resources at one policy version.

    Immutable, so it is safe to share across streams and threads. ``cluster_refs`` are the
    clusters its listeners and routes send traffic to: the ADS server keeps those clusters on a
    node until it has acked routes that no longer name them. ``cluster_refs`` holds them by
    the type that names them (listeners or route configurations), since each type is acked
    separately.
    """

    policy_version: str
    group: tuple[str, ...]
    resources: Mapping[TypeUrl, Mapping[str, EncodedResource]]
    cluster_refs: Mapping[TypeUrl, frozenset[str]]
    eds_clusters: frozenset[str]
    _versions: dict[TypeUrl, str] = dataclasses.field(default_factory=dict, compare=False, repr=False)
    """Computed once: every stream of the group asks for them (a sort and a hash each)."""
    _names: dict[TypeUrl, frozenset[str]] = dataclasses.field(default_factory=dict, compare=False, repr=False)
    _bodies: dict[TypeUrl, bytes] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def version(self, type_url: TypeUrl) -> str:
        version = self._versions.get(type_url)
        if version is None:
            version = self._versions[type_url] = version_of(self.resources[type_url].values())
        return version

    def names(self, type_url: TypeUrl) -> frozenset[str]:
        names = self._names.get(type_url)
        if names is None:
            names = self._names[type_url] = frozenset(self.resources[type_url])
        return names

    def sotw_body(self, type_url: TypeUrl) -> bytes:
        """Every resource of the type as ``DiscoveryResponse.resources`` entries, in name order:
        what a state-of-the-world response carries, joined once for all the group's streams."""
        body = self._bodies.get(type_url)
        if body is None:
            resources = self.resources[type_url]
            body = self._bodies[type_url] = b"".join(resources[name].sotw_entry for name in sorted(resources))
        return body

    @classmethod
    def build(
        cls,
        *,
        policy_version: str,
        group: tuple[str, ...],
        resources: Mapping[TypeUrl, Mapping[str, message.Message]],
        encoder: ResourceEncoder,
    ) -> Snapshot:
        encoded = {
            type_url: {name: encoder.encode(type_url, name, msg) for name, msg in sorted(by_name.items())}
            for type_url, by_name in resources.items()
        }
        for type_url in TypeUrl:
            encoded.setdefault(type_url, {})
        refs = _References()
        for name, msg in resources.get(TypeUrl.CLUSTER, {}).items():
            assert isinstance(msg, cluster_pb2.Cluster)
            if msg.type == cluster_pb2.Cluster.EDS:
                refs.eds_clusters.add(msg.eds_cluster_config.service_name or name)
        for name, msg in resources.get(TypeUrl.LISTENER, {}).items():
            refs.merge(encoder.references(TypeUrl.LISTENER, name, msg))
        listener_clusters = frozenset(refs.clusters)
        route_refs = _References()
        for name, msg in resources.get(TypeUrl.ROUTE, {}).items():
            assert isinstance(msg, route_pb2.RouteConfiguration)
            route_refs.merge(encoder.references(TypeUrl.ROUTE, name, msg))
        refs.merge(route_refs)
        snapshot = cls(
            policy_version=policy_version,
            group=group,
            resources=encoded,
            cluster_refs={
                TypeUrl.LISTENER: listener_clusters,
                TypeUrl.ROUTE: frozenset(route_refs.clusters),
            },
            eds_clusters=frozenset(refs.eds_clusters),
        )
        snapshot._check_consistent(refs)
        return snapshot

    def _check_consistent(self, refs: _References) -> None:
        """Like go-control-plane's Snapshot.Consistent: every name referenced is carried."""
        problems = []
        for type_url, wanted in (
            (TypeUrl.CLUSTER, refs.clusters),
            (TypeUrl.ROUTE, refs.route_configs),
            (TypeUrl.SECRET, refs.secrets),
        ):
            carried = set(self.resources[type_url])
            missing = sorted(set(wanted) - carried)
            if missing:
                problems.append(f"{type_url.short}: {', '.join(missing)} referenced but not present")
        eds_missing = sorted(refs.eds_clusters - set(self.resources[TypeUrl.ENDPOINT]))
        if eds_missing:
            problems.append(f"eds: no endpoints for {', '.join(eds_missing)}")
        if problems:
            raise InconsistentSnapshot(f"group {','.join(self.group) or '(none)'}: " + "; ".join(problems))


_SYMBOLS = symbol_database.Default()


class _References:
    """Collects the names a set of resources refers to, by walking their protobuf trees."""

    def __init__(self) -> None:
        self.clusters: set[str] = set()
        self.route_configs: set[str] = set()
        self.secrets: set[str] = set()
        self.eds_clusters: set[str] = set()

    def merge(self, other: _References) -> None:
        self.clusters |= other.clusters
        self.route_configs |= other.route_configs
        self.secrets |= other.secrets

    def walk_route_configuration(self, config: route_pb2.RouteConfiguration) -> None:
        # Specialised for speed: route tables are by far the largest resources.
        for vhost in config.virtual_hosts:
            for route in vhost.routes:
                if route.HasField("route"):
                    action = route.route
                    if action.cluster:
                        self.clusters.add(action.cluster)
                    for weighted in action.weighted_clusters.clusters:
                        self.clusters.add(weighted.name)
                    for mirror in action.request_mirror_policies:
                        self.clusters.add(mirror.cluster)
                for packed in route.typed_per_filter_config.values():
                    self.walk(packed)

    def walk(self, msg: message.Message) -> None:
        if isinstance(msg, any_pb2.Any):
            inner = _unpack(msg)
            if inner is not None:
                self.walk(inner)
            return
        name = msg.DESCRIPTOR.full_name
        if name == "envoy.extensions.filters.network.http_connection_manager.v3.Rds":
            self.route_configs.add(msg.route_config_name)
        elif name == "envoy.extensions.transport_sockets.tls.v3.SdsSecretConfig":
            if msg.HasField("sds_config"):  # an SDS secret from a file path is not ours to serve
                self.secrets.add(msg.name)
            return
        elif name == "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz":
            # The filter-level service is a default no route uses: every route disables the filter
            # or names its own service per route (walked with the route table), and the listener
            # must not change with auth (issue 12), so its cluster is carried only when a route
            # needs it. Envoy accepts the listener without it (tests/test_e2e_auth_rollout.py).
            return
        elif name == "envoy.config.core.v3.GrpcService.EnvoyGrpc":
            self.clusters.add(msg.cluster_name)
        elif name == "envoy.config.core.v3.HttpUri":
            self.clusters.add(msg.cluster)
        elif name == "envoy.config.route.v3.RouteConfiguration":
            assert isinstance(msg, route_pb2.RouteConfiguration)
            self.walk_route_configuration(msg)
            return
        for field, value in msg.ListFields():
            if field.message_type is None:
                continue
            if field.is_repeated:
                if field.message_type.GetOptions().map_entry:
                    for item in value.values():
                        if isinstance(item, message.Message):
                            self.walk(item)
                else:
                    for item in value:
                        self.walk(item)
            else:
                self.walk(value)


def _unpack(packed: any_pb2.Any) -> message.Message | None:
    try:
        cls = _SYMBOLS.GetSymbol(packed.TypeName())
    except KeyError:
        return None
    inner = cls()
    packed.Unpack(inner)
    return inner
