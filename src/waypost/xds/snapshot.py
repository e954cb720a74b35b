"""Versioned snapshots: one node group's resources at one policy version, each encoded once.

Resources are encoded by :class:`~waypost.xds.encoding.ResourceEncoder` (once per version, shared
by every group). A snapshot built with the same group's ``previous`` snapshot takes over each type
whose messages are all the very objects it had (the compiler's memo reuses unchanged resources):
its encoded entries, version and response body come along, so a change that touches one type
(an endpoint: EDS) does not walk, sort or hash the others again; in a type where a few of the
same names hold new messages, only those are encoded. The result is the same as a build from
scratch.
"""

from __future__ import annotations

import dataclasses
import itertools
import operator
from collections.abc import Mapping
from dataclasses import dataclass

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf import message

from waypost.xds.encoding import EncodedResource, ResourceEncoder, encode_field, encode_varint, version_of
from waypost.xds.references import References
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
    withheld_secrets: frozenset[str] = frozenset()
    """SDS secrets the policy has but this snapshot does not send (see :meth:`withholding`)."""
    _versions: dict[TypeUrl, str] = dataclasses.field(default_factory=dict, compare=False, repr=False)
    """Computed once: every stream of the group asks for them (a sort and a hash each)."""
    _names: dict[TypeUrl, frozenset[str]] = dataclasses.field(default_factory=dict, compare=False, repr=False)
    _bodies: dict[TypeUrl, bytes] = dataclasses.field(default_factory=dict, compare=False, repr=False)
    _sources: Mapping[TypeUrl, Mapping[str, message.Message]] = dataclasses.field(
        default_factory=dict, compare=False, repr=False
    )
    """The messages ``resources`` were encoded from: a later build takes over unchanged types."""

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

    def withholding(self, secrets: frozenset[str]) -> Snapshot:
        """This snapshot without the SDS secrets named (checked for consistency with them: the
        listeners still name them, and Envoy keeps waiting for them rather than serving without)."""
        names = secrets & self.resources[TypeUrl.SECRET].keys()
        if not names:
            return self
        kept = {name: r for name, r in self.resources[TypeUrl.SECRET].items() if name not in names}
        # Fresh memo tables: the ones of ``self`` describe the full resources.
        return dataclasses.replace(
            self,
            resources={**self.resources, TypeUrl.SECRET: kept},
            withheld_secrets=frozenset(names),
            _versions={},
            _names={},
            _bodies={},
            # The other types are the full ones still: a later build may take them over.
            _sources={t: v for t, v in self._sources.items() if t is not TypeUrl.SECRET},
        )

    @classmethod
    def build(
        cls,
        *,
        policy_version: str,
        group: tuple[str, ...],
        resources: Mapping[TypeUrl, Mapping[str, message.Message]],
        encoder: ResourceEncoder,
        previous: Snapshot | None = None,
    ) -> Snapshot:
        """The group's snapshot; with ``previous`` (the group's snapshot before), the types whose
        messages are unchanged objects are taken over from it (module docstring)."""
        encoded: dict[TypeUrl, Mapping[str, EncodedResource]] = {}
        kept: set[TypeUrl] = set()
        for type_url in TypeUrl:
            by_name = resources.get(type_url, {})
            before = previous._sources.get(type_url) if previous is not None else None
            moved = _moved(before, by_name) if before is not None else None
            encode = encoder.encode
            if previous is None or before is None or moved is None:
                encoded[type_url] = {name: encode(type_url, name, by_name[name]) for name in sorted(by_name)}
            elif not moved:
                encoded[type_url] = previous.resources[type_url]
                encoder.adopt(type_url, before, encoded[type_url])
                kept.add(type_url)
            else:  # the same names, a few of them new objects: only those are encoded (or looked up)
                patched = dict(previous.resources[type_url])  # name order, as built
                encoder.adopt(type_url, before, patched, but=moved)
                for name in moved:
                    patched[name] = encode(type_url, name, by_name[name])
                encoded[type_url] = patched
        refs = References()
        if TypeUrl.CLUSTER in kept and previous is not None:
            refs.eds_clusters |= previous.eds_clusters
        else:
            for name, msg in resources.get(TypeUrl.CLUSTER, {}).items():
                assert isinstance(msg, cluster_pb2.Cluster)
                if msg.type == cluster_pb2.Cluster.EDS:
                    refs.eds_clusters.add(msg.eds_cluster_config.service_name or name)
        for name, msg in resources.get(TypeUrl.LISTENER, {}).items():
            refs.merge(encoder.references(TypeUrl.LISTENER, name, msg))
        listener_clusters = frozenset(refs.clusters)
        route_refs = References()
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
            _sources={t: resources.get(t, {}) for t in TypeUrl},
        )
        if previous is not None:  # a type taken over brings what was computed from it
            for type_url in kept:
                if type_url in previous._versions:
                    snapshot._versions[type_url] = previous._versions[type_url]
                if type_url in previous._names:
                    snapshot._names[type_url] = previous._names[type_url]
                if type_url in previous._bodies:
                    snapshot._bodies[type_url] = previous._bodies[type_url]
        snapshot._check_consistent(refs)
        return snapshot

    def _check_consistent(self, refs: References) -> None:
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


def _moved(before: Mapping[str, message.Message], now: Mapping[str, message.Message]) -> set[str] | None:
    """The names whose message is not the very object it was, when ``now`` has exactly the names
    of ``before``, and they are few (an empty set: all the same); None otherwise."""
    if len(before) != len(now):
        return None
    names = list(now)
    # In C (map/compress), not a comprehension: this runs per type and group on every version.
    unchanged = map(operator.is_, map(before.get, names), now.values())
    moved = set(itertools.compress(names, map(operator.not_, unchanged)))
    if len(moved) * 4 > len(now) or any(name not in before for name in moved):
        return None  # other names, or most of them new: built whole
    return moved
