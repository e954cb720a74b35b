"""Resources encoded once per version: bytes, digest and pre-built response entries.

A resource is serialized deterministically exactly once per policy version; its bytes, its
sha256 digest and its pre-encoded ``DiscoveryResponse.resources`` entry are shared by every node
group and every stream. Versions are hashes of (name, digest) pairs, so two waypost replicas on
the same files hand Envoy identical versions and a failover causes no churn.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass

from envoy.config.route.v3 import route_pb2
from google.protobuf import message

from waypost.xds.references import References
from waypost.xds.types import TypeUrl

__all__ = ["EncodedResource", "ResourceEncoder", "encode_field", "encode_varint", "version_of"]


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
    # One update of the joined lines (the same bytes as one update per piece, far fewer calls).
    lines = b"".join(
        f"{resource.name}\0{resource.digest}\n".encode() for resource in sorted(resources, key=_name)
    )
    return hashlib.sha256(lines).hexdigest()[:16]


def _name(resource: EncodedResource) -> str:
    return resource.name


class ResourceEncoder:
    """Encodes each (type, name) once; shared by every group snapshot of one policy version.

    Given the ``previous`` version's encoder, a resource whose message is the very object that
    version had (the compiler's memo reuses unchanged resources) reuses its bytes and the names
    it refers to: a reload re-encodes only what changed. :meth:`forget_previous` drops the link
    once the version is prepared, so versions do not chain up in memory.
    """

    def __init__(self, previous: ResourceEncoder | None = None) -> None:
        # By type, then name: whole types are handed over in one step (:meth:`adopt`).
        self._done: dict[TypeUrl, dict[str, EncodedResource]] = {t: {} for t in TypeUrl}
        self._messages: dict[TypeUrl, dict[str, message.Message]] = {t: {} for t in TypeUrl}
        self._references: dict[tuple[TypeUrl, str], tuple[message.Message, References]] = {}
        self._previous = previous

    def without(self, keys: set[tuple[TypeUrl, str]]) -> ResourceEncoder:
        """A copy that re-encodes ``keys`` and reuses every other resource's bytes: for a change of
        the same policy version that touches only those resources (registered endpoints)."""
        derived = ResourceEncoder()
        for type_url in TypeUrl:
            dropped = {name for t, name in keys if t is type_url}
            derived._done[type_url] = {n: e for n, e in self._done[type_url].items() if n not in dropped}
            messages = self._messages[type_url]
            derived._messages[type_url] = {n: m for n, m in messages.items() if n not in dropped}
        derived._references = {key: refs for key, refs in self._references.items() if key not in keys}
        return derived

    def encode(self, type_url: TypeUrl, name: str, msg: message.Message) -> EncodedResource:
        done = self._done[type_url]
        encoded = done.get(name)
        if encoded is None:
            previous = self._previous
            if previous is not None and previous._messages[type_url].get(name) is msg:
                encoded = previous._done[type_url][name]
            else:
                encoded = EncodedResource.encode(type_url, name, msg)
            done[name] = encoded
            self._messages[type_url][name] = msg
        return encoded

    def adopt(
        self,
        type_url: TypeUrl,
        messages: Mapping[str, message.Message],
        encoded: Mapping[str, EncodedResource],
        *,
        but: Set[str] = frozenset(),
    ) -> None:
        """Take over a whole type from an earlier snapshot whose messages are these very objects,
        except the names in ``but`` (moved since: :meth:`encode` gives them their new bytes)."""
        done, messages_now = self._done[type_url], self._messages[type_url]
        kept = {name: (done.get(name), messages_now.get(name)) for name in but}
        done.update(encoded)
        messages_now.update(messages)
        # The moved names keep what this encoder had for them (another group may have encoded
        # the new message already), or nothing.
        for name, (had_done, had_message) in kept.items():
            if had_done is None:
                done.pop(name, None)
                messages_now.pop(name, None)
            else:
                assert had_message is not None
                done[name], messages_now[name] = had_done, had_message

    def references(self, type_url: TypeUrl, name: str, msg: message.Message) -> References:
        """The names ``msg`` refers to (walked once per message object)."""
        key = (type_url, name)
        found = self._references.get(key)
        if found is None or found[0] is not msg:
            previous = self._previous._references.get(key) if self._previous is not None else None
            if previous is not None and previous[0] is msg:
                found = previous
            else:
                refs = References()
                if isinstance(msg, route_pb2.RouteConfiguration):
                    refs.walk_route_configuration(msg)
                else:
                    refs.walk(msg)
                found = (msg, refs)
            self._references[key] = found
        return found[1]

    def forget_previous(self) -> None:
        self._previous = None
