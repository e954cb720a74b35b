"""A state-of-the-world xDS stream: every response carries the whole set of its type."""

from __future__ import annotations

from envoy.service.discovery.v3 import discovery_pb2

from waypost.xds.snapshot import Snapshot, encode_field, version_of
from waypost.xds.stream import XdsStream
from waypost.xds.stream_state import CONTROL_PLANE, TypeState, shared_names
from waypost.xds.types import WILDCARD_TYPES, TypeUrl

__all__ = ["SotwStream", "subscription_of"]


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
            state.sent_subscription = subscription_of(type_url, request)
            state.sent_names = shared_names(frozenset(request.resource_names))
        state.subscription = subscription_of(type_url, request)

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
            names = shared_names(frozenset(r.name for r in resources))
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


def subscription_of(type_url: TypeUrl, request: discovery_pb2.DiscoveryRequest) -> frozenset[str] | None:
    names = frozenset(request.resource_names)
    if type_url in WILDCARD_TYPES and (not names or "*" in names):
        return None
    return shared_names(names)


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
