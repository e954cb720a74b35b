"""A delta (incremental) xDS stream: only what the node lacks or holds at another version."""

from __future__ import annotations

from typing import Any

from envoy.service.discovery.v3 import discovery_pb2

from waypost.xds.snapshot import EncodedResource, Snapshot, encode_field, version_of
from waypost.xds.stream import XdsStream
from waypost.xds.stream_state import DELTA_CONTROL_PLANE, DeltaTypeState, TypeState, shared_names
from waypost.xds.types import WILDCARD_TYPES, TypeUrl

__all__ = ["DeltaStream"]


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
            state.sent_names = shared_names(frozenset(state.known))
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
            state.sent_names = shared_names(frozenset(state.known))
        state.subscription = None if state.wildcard else shared_names(frozenset(state.explicit))

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
        state.sent_names = shared_names(frozenset(known))
        state.inflight.append((nonce, version, snapshot))
        return payload, len(changed)

    def status(self) -> dict[str, Any]:
        result = super().status()
        for type_url, state in self.types.items():
            if isinstance(state, DeltaTypeState):
                result["types"][type_url.short]["wildcard"] = state.wildcard
                result["types"][type_url.short]["resources"] = len(state.known)
        return result


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
