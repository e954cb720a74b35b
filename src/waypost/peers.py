# grpcio ships no type hints: its interceptor base class is Any to mypy.
# mypy: disallow-subclassing-any=False
"""Client allow-lists for the decision ports (``--decision-allow``), on every server kind.

Envoy calls the ext_authz and rate-limit services; nothing else should. Off loopback, a
:class:`PeerFilter` closes connections from other addresses as they are accepted (the asyncio
servers: the lean HTTP/2 rate-limit server, the HTTP authz endpoint) or refuses their calls with
``PERMISSION_DENIED`` (grpcio servers, which do not expose the accept). The list is exact:
Envoys on the same host need ``127.0.0.1/32`` in it too.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import grpc

from waypost.log import get_logger

__all__ = ["PeerFilter", "is_loopback"]

log = get_logger("waypost.peers")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps a port reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


class PeerFilter:
    """An allow-list of client networks for the decision ports."""

    def __init__(self, networks: Iterable[Network]) -> None:
        self.networks = tuple(networks)

    @classmethod
    def parse(cls, values: Sequence[str]) -> PeerFilter:
        """``10.0.0.0/8``, ``2001:db8::/32`` or a single address; ValueError names a bad one."""
        networks = []
        for value in values:
            try:
                networks.append(ipaddress.ip_network(value, strict=False))
            except ValueError:
                raise ValueError(f"--decision-allow: '{value}' is not an address or CIDR network") from None
        return cls(networks)

    def allows(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.strip("[]").split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.networks)

    def allows_grpc_peer(self, peer: str) -> bool:
        """``context.peer()`` form: ``ipv4:10.0.0.5:41234``, ``ipv6:[::1]:41234``, ``unix:...``."""
        kind, _, rest = peer.partition(":")
        if kind == "unix":
            return True
        if kind not in ("ipv4", "ipv6"):
            return False
        host = rest.rsplit(":", 1)[0]
        return self.allows(host)

    def protocol_factory(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """Wrap an asyncio protocol factory: connections from other addresses are closed at once."""

        def guarded() -> asyncio.Protocol:
            return _GuardedProtocol(self, factory())

        return guarded

    def interceptor(self) -> grpc.aio.ServerInterceptor:
        return _PeerInterceptor(self)


class _GuardedProtocol(asyncio.Protocol):
    """Checks the peer, then hands the connection to the real protocol (or closes it)."""

    def __init__(self, peers: PeerFilter, inner: asyncio.Protocol) -> None:
        self._peers = peers
        self._inner = inner
        self._refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = peer[0] if isinstance(peer, tuple) and peer else ""
        if isinstance(peer, tuple) and not self._peers.allows(str(address)):
            self._refused = True
            log.warning(
                "decision port: connection refused, address not in --decision-allow", peer=str(address)
            )
            transport.close()
            return
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return None if self._refused else self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._refused:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class _PeerInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every call from a peer outside the allow-list (PERMISSION_DENIED)."""

    def __init__(self, peers: PeerFilter) -> None:
        self._peers = peers

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        peers = self._peers

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            peer = context.peer()
            if not peers.allows_grpc_peer(peer):
                log.warning("decision port: call refused, address not in --decision-allow", peer=peer)
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, "client address not allowed")
            result = inner(request, context)
            return await result if asyncio.iscoroutine(result) else result

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
