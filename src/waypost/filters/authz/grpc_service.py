"""`envoy.service.auth.v3.Authorization/Check` over grpc aio, on raw bytes.

The handler takes the serialized CheckRequest and returns serialized CheckResponse bytes itself
(no generated servicer), so each response is encoded once per distinct decision and reused:
a denial or an allow for the same consumer on the same route is the same bytes every time.
"""

from __future__ import annotations

import inspect
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2
from google.rpc import status_pb2

from waypost.contract import AUTHZ_GRPC_SERVICE, METADATA_CONSUMER, METADATA_PLAN
from waypost.filters.authz.core import AuthRequest, AuthzCore, Decision
from waypost.filters.protect.service import CHECK_EXTENSION, BodyChecks
from waypost.log import get_logger

__all__ = ["SERVICE_NAME", "AuthzGrpcService", "encode_decision", "request_from_check"]

log = get_logger("waypost.authz.grpc")

SERVICE_NAME = AUTHZ_GRPC_SERVICE
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_GRPC_CODE = {401: 16, 403: 7}  # UNAUTHENTICATED, PERMISSION_DENIED; anything else UNAVAILABLE
_CACHE_LIMIT = 10_000


def request_from_check(check: external_auth_pb2.CheckRequest) -> AuthRequest:
    attributes = check.attributes
    http = attributes.request.http
    extensions = attributes.context_extensions
    policies = extensions.get("policies", "")
    return AuthRequest(
        route=extensions.get("route", ""),
        policies=tuple(policies.split(",")) if policies else (),
        method=http.method,
        path=http.path,
        headers=http.headers,
        host=http.host,
        principal=attributes.source.principal,
        certificate=attributes.source.certificate,
        source_ip=attributes.source.address.socket_address.address,
    )


def encode_decision(decision: Decision) -> bytes:
    response = external_auth_pb2.CheckResponse()
    if decision.allowed:
        response.status.code = 0
        response.ok_response.headers.extend(
            base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=k, value=v), append_action=_OVERWRITE)
            for k, v in decision.headers
        )
        if decision.consumer:
            # CONTRACT (rate limits): namespace envoy.filters.http.ext_authz, string keys
            # `consumer` and `plan` (plan only when the Consumer has one).
            metadata = {METADATA_CONSUMER: decision.consumer}
            if decision.plan:
                metadata[METADATA_PLAN] = decision.plan
            response.dynamic_metadata.CopyFrom(_struct(metadata))
    else:
        response.status.CopyFrom(status_pb2.Status(code=_GRPC_CODE.get(decision.status, 14)))
        denied = response.denied_response
        denied.status.code = http_status_pb2.StatusCode.Value(
            http_status_pb2.StatusCode.Name(decision.status)
        )
        denied.headers.extend(
            base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=k, value=v), append_action=_OVERWRITE)
            for k, v in decision.headers
        )
        denied.body = decision.body.decode()
    encoded: bytes = response.SerializeToString(deterministic=True)
    return encoded


def _struct(values: dict[str, str]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


class AuthzGrpcService:
    """The Check method, registered on any grpc.aio server with :meth:`add_to`."""

    def __init__(self, core: AuthzCore, *, body_checks: BodyChecks | None = None) -> None:
        self.core = core
        # Checks from the body-checks filter (validation, screening) name their route under
        # `check`; auth checks never carry that key.
        self.body_checks = body_checks
        self._encoded: dict[Decision, bytes] = {}

    def add_to(self, server: grpc.aio.Server) -> None:
        handler = grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "Check": grpc.unary_unary_rpc_method_handler(
                    self.check, request_deserializer=None, response_serializer=None
                )
            },
        )
        server.add_generic_rpc_handlers((handler,))

    async def check(self, body: bytes, context: Any) -> bytes:
        try:
            check = external_auth_pb2.CheckRequest.FromString(body)
        except Exception:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "malformed CheckRequest")
            raise
        if self.body_checks is not None and CHECK_EXTENSION in check.attributes.context_extensions:
            return self.body_checks.check(check)
        decision = self.core.decide(request_from_check(check))
        if inspect.isawaitable(decision):
            decision = await decision
        return self.encode(decision)

    def encode(self, decision: Decision) -> bytes:
        encoded = self._encoded.get(decision)
        if encoded is None:
            if len(self._encoded) >= _CACHE_LIMIT:
                self._encoded.clear()
            encoded = self._encoded[decision] = encode_decision(decision)
        return encoded
