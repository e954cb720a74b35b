"""``envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`` over gRPC (grpc aio).

A thin transport over :class:`~waypost.filters.ratelimit.limiter.Limiter`: decode the request,
decide, encode the answer with the ``ratelimit-*`` / ``retry-after`` headers Envoy adds to the
response. Bad input never raises: an unknown domain or descriptor is simply not limited.
"""

from __future__ import annotations

from collections.abc import Awaitable

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ratelimit.v3 import rls_pb2
from google.protobuf import duration_pb2

from waypost.filters.ratelimit import descriptors as d
from waypost.filters.ratelimit.limiter import Limiter, Verdict
from waypost.log import get_logger

__all__ = ["SERVICE_NAME", "RateLimitService"]

log = get_logger("waypost.ratelimit")

SERVICE_NAME = "envoy.service.ratelimit.v3.RateLimitService"
_Response = rls_pb2.RateLimitResponse
_UNITS = {
    "second": rls_pb2.RateLimitResponse.RateLimit.SECOND,
    "minute": rls_pb2.RateLimitResponse.RateLimit.MINUTE,
    "hour": rls_pb2.RateLimitResponse.RateLimit.HOUR,
    "day": rls_pb2.RateLimitResponse.RateLimit.DAY,
}
_OK_EMPTY = _Response(overall_code=_Response.OK).SerializeToString()


class RateLimitService:
    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter

    def add_to(self, server: grpc.aio.Server) -> None:
        # Raw bytes in and out: the handler parses and serializes itself (skips grpc's wrappers).
        handler = grpc.unary_unary_rpc_method_handler(self.should_rate_limit_raw)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE_NAME, {"ShouldRateLimit": handler}),)
        )

    async def should_rate_limit_raw(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            parsed = rls_pb2.RateLimitRequest.FromString(request)
        except Exception:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "malformed RateLimitRequest")
            raise  # unreachable: abort raises
        return await self.decide_bytes(parsed)

    def answer(self, request: rls_pb2.RateLimitRequest) -> bytes | Awaitable[bytes]:
        """The serialized response, inline when the store counts in process, else awaitable."""
        if request.domain != d.DOMAIN:
            return _OK_EMPTY
        descriptors = [[(e.key, e.value) for e in desc.entries] for desc in request.descriptors]
        verdict = self.limiter.decide_now(descriptors, request.hits_addend or 1)
        if verdict is not None:
            return encode_verdict(verdict).SerializeToString()
        return self.decide_bytes(request)

    async def decide_bytes(self, request: rls_pb2.RateLimitRequest) -> bytes:
        if request.domain != d.DOMAIN:
            return _OK_EMPTY
        descriptors = [[(e.key, e.value) for e in desc.entries] for desc in request.descriptors]
        verdict = await self.limiter.decide(descriptors, request.hits_addend or 1)
        return encode_verdict(verdict).SerializeToString()


def encode_verdict(verdict: Verdict) -> rls_pb2.RateLimitResponse:
    response = _Response(overall_code=_Response.OK if verdict.allowed else _Response.OVER_LIMIT)
    for result in verdict.results:
        status = response.statuses.add()
        status.code = _Response.OVER_LIMIT if result.over_limit else _Response.OK
        if result.counted:
            status.current_limit.requests_per_unit = result.limit
            status.current_limit.unit = _UNITS[result.unit]
            status.limit_remaining = result.remaining
            status.duration_until_reset.CopyFrom(
                duration_pb2.Duration(seconds=max(0, int(result.reset + 0.999)))
            )
    for name, value in verdict.headers:
        response.response_headers_to_add.append(base_pb2.HeaderValue(key=name, value=value))
    return response
