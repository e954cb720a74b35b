"""`envoy.service.auth.v3.Authorization/Check`, registered with :mod:`waypost.h2grpc`, on raw bytes.

The handler takes the serialized CheckRequest and returns serialized CheckResponse bytes itself
(no generated servicer), so each response is encoded once per distinct decision and reused:
a denial or an allow for the same consumer on the same route is the same bytes every time.
A counted quota's ``ratelimit-*`` headers differ on almost every answer, so they are not part of
the reused bytes: each header is encoded once as a CheckResponse of its own, and the answer is the
concatenation (protobuf merges concatenated messages, appending repeated fields in order).
A decision made inline is answered inline (no task, no await): the lean server writes it at once.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable

from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2
from google.protobuf.message import DecodeError
from google.rpc import status_pb2

from waypost.contract import AUTHZ_GRPC_SERVICE, METADATA_CONSUMER, METADATA_PLAN
from waypost.filters.authz.core import AuthzCore
from waypost.filters.authz.decision import AuthRequest, Decision
from waypost.filters.protect.service import CHECK_EXTENSION, BodyChecks
from waypost.h2grpc import GrpcError, Service, Status, UnaryMethod
from waypost.log import get_logger

__all__ = ["SERVICE_NAME", "AuthzGrpcService", "encode_decision", "request_from_check"]

log = get_logger("waypost.authz.grpc")

SERVICE_NAME = AUTHZ_GRPC_SERVICE
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
# UNAUTHENTICATED, PERMISSION_DENIED, RESOURCE_EXHAUSTED; anything else UNAVAILABLE
_GRPC_CODE = {401: 16, 403: 7, 429: 8}
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
        response.ok_response.headers.extend(_options(decision.headers))
        response.ok_response.response_headers_to_add.extend(_options(decision.client_headers))
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
        denied.headers.extend(_options(decision.headers))
        denied.body = decision.body.decode()
    encoded: bytes = response.SerializeToString(deterministic=True)
    return encoded


def _options(headers: tuple[tuple[str, str], ...]) -> list[base_pb2.HeaderValueOption]:
    return [
        base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=k, value=v), append_action=_OVERWRITE)
        for k, v in headers
    ]


def _struct(values: dict[str, str]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


class AuthzGrpcService:
    """The Check method: :meth:`service` is its registration (lean server or grpcio)."""

    def __init__(self, core: AuthzCore, *, body_checks: BodyChecks | None = None) -> None:
        self.core = core
        # Checks from the body-checks filter (validation, screening) name their route under
        # `check`; auth checks never carry that key.
        self.body_checks = body_checks
        self._encoded: dict[Decision, bytes] = {}
        self._headers: dict[tuple[str, str], bytes] = {}

    def service(self) -> Service:
        """Healthy (SERVING) once the core holds a valid policy version."""
        return Service(
            SERVICE_NAME, {"Check": UnaryMethod(self.check)}, ready=lambda: self.core.version is not None
        )

    def check(self, body: bytes) -> bytes | Awaitable[bytes]:
        try:
            check = external_auth_pb2.CheckRequest.FromString(body)
        except DecodeError as exc:
            raise GrpcError(Status.INVALID_ARGUMENT, "malformed CheckRequest") from exc
        if self.body_checks is not None and CHECK_EXTENSION in check.attributes.context_extensions:
            return self.body_checks.check(check)
        decision = self.core.decide(request_from_check(check))
        if inspect.isawaitable(decision):
            return self._later(decision)
        return self.encode(decision)

    async def _later(self, decision: Awaitable[Decision]) -> bytes:
        return self.encode(await decision)

    def encode(self, decision: Decision) -> bytes:
        extra = decision.client_headers
        if extra:
            base = Decision(
                decision.status,
                decision.reason,
                decision.consumer,
                decision.plan,
                decision.headers,
                decision.body,
            )
            return self.encode(base) + b"".join(map(self._client_header, extra))
        encoded = self._encoded.get(decision)
        if encoded is None:
            if len(self._encoded) >= _CACHE_LIMIT:
                self._encoded.clear()
            encoded = self._encoded[decision] = encode_decision(decision)
        return encoded

    def _client_header(self, header: tuple[str, str]) -> bytes:
        encoded = self._headers.get(header)
        if encoded is None:
            if len(self._headers) >= _CACHE_LIMIT:
                self._headers.clear()
            response = external_auth_pb2.CheckResponse()
            response.ok_response.response_headers_to_add.extend(_options((header,)))
            encoded = self._headers[header] = response.SerializeToString(deterministic=True)
        return encoded
