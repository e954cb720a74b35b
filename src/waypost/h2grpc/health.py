"""``grpc.health.v1.Health``: per-service status from each service's readiness.

``Check`` answers SERVING or NOT_SERVING for a registered service (its ``ready()``: for a decision
service, a valid policy is applied), and for ``""`` the whole server (every service ready);
an unknown name is the gRPC status NOT_FOUND, as the health protocol asks. ``Watch`` sends the
current status, then each change (checked every second, and at once after :meth:`Health.notify`);
for an unknown name it sends SERVICE_UNKNOWN and keeps watching.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping

from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2

from waypost.h2grpc.api import GrpcError, Send, Service, Status, StreamMethod, UnaryMethod

__all__ = ["HEALTH_SERVICE", "Health"]

HEALTH_SERVICE = "grpc.health.v1.Health"
_Response = health_pb2.HealthCheckResponse
_POLL = 1.0


class Health:
    def __init__(self, readiness: Mapping[str, Callable[[], bool]]) -> None:
        self._readiness = dict(readiness)
        self._changed: asyncio.Event | None = None

    def status(self, service: str) -> int:
        """A HealthCheckResponse.ServingStatus; SERVICE_UNKNOWN for a name not served here."""
        if service == "":
            ready = all(check() for check in self._readiness.values())
        elif service in self._readiness:
            ready = self._readiness[service]()
        else:
            return int(_Response.SERVICE_UNKNOWN)
        return int(_Response.SERVING if ready else _Response.NOT_SERVING)

    def notify(self) -> None:
        """Readiness may have changed (a policy applied): wake the watchers now."""
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def service(self) -> Service:
        return Service(
            HEALTH_SERVICE,
            {
                "Check": UnaryMethod(self._check),
                "List": UnaryMethod(self._list),
                "Watch": StreamMethod(self._watch),
            },
        )

    def _list(self, body: bytes) -> bytes:
        response = health_pb2.HealthListResponse()
        for name in ("", *self._readiness):
            response.statuses[name].status = self.status(name)
        answer: bytes = response.SerializeToString()
        return answer

    def _check(self, body: bytes) -> bytes:
        status = self.status(_parse(body).service)
        if status == _Response.SERVICE_UNKNOWN:
            raise GrpcError(Status.NOT_FOUND, "unknown service")
        answer: bytes = _Response(status=status).SerializeToString()
        return answer

    async def _watch(self, requests: AsyncIterator[bytes], send: Send) -> None:
        service = None
        async for body in requests:
            if service is not None:
                raise GrpcError(Status.INTERNAL, "Watch takes one request")
            service = _parse(body).service
            break
        if service is None:
            raise GrpcError(Status.INTERNAL, "Watch needs a request")
        last = None
        while True:
            status = self.status(service)
            if status != last:
                await send(_Response(status=status).SerializeToString())
                last = status
            if self._changed is None:
                self._changed = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), _POLL)


def _parse(body: bytes) -> health_pb2.HealthCheckRequest:
    try:
        return health_pb2.HealthCheckRequest.FromString(body)
    except DecodeError as exc:
        raise GrpcError(Status.INVALID_ARGUMENT, "malformed HealthCheckRequest") from exc
