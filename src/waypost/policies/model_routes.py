"""Route and GrpcTarget: how requests are matched and sent to Services, for Envoy (a Route on a
Gateway) and for proxyless gRPC clients (a GrpcTarget's routes).

Data only, no I/O. Both offer the same choice of ``backend`` or weighted ``backends``; names they
refer to (Gateway, Services, AuthPolicies, RateLimitPolicies) are checked across documents by
:mod:`waypost.policies.validate`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Literal, Self

from pydantic import Field, StrictBool, StrictInt, StrictStr, model_validator

from waypost.policies.model_base import Document, HttpMethod, NodeSelector, Percent, Spec
from waypost.policies.model_gateways import DenyRule
from waypost.policies.protect import Screen, Validate
from waypost.policies.types import Duration, HeaderName, HostPattern, Name, RequestHeaderName

__all__ = [
    "GRPC_NAME_PATTERN",
    "AbortFault",
    "Backend",
    "Cors",
    "DelayFault",
    "Fault",
    "GrpcJson",
    "GrpcMatch",
    "GrpcRetries",
    "GrpcRetryOn",
    "GrpcRoute",
    "GrpcTarget",
    "HeaderMutation",
    "Mirror",
    "Retries",
    "RetryOn",
    "Rewrite",
    "Route",
    "RouteMatch",
]


RetryOn = Literal[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "envoy-ratelimited",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
]


class RouteMatch(Spec):
    prefix: StrictStr | None = Field(default=None, pattern=r"^/")
    path: StrictStr | None = Field(default=None, pattern=r"^/")
    regex: StrictStr | None = None
    methods: tuple[HttpMethod, ...] = ()
    headers: dict[RequestHeaderName, StrictStr] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _exactly_one_path_match(self) -> Self:
        given = [key for key in ("prefix", "path", "regex") if getattr(self, key) is not None]
        if len(given) != 1:
            raise ValueError(
                "exactly one of prefix, path, regex is required"
                if not given
                else f"{' and '.join(given)} are exclusive: give exactly one of prefix, path, regex"
            )
        return self

    @property
    def path_kind(self) -> Literal["path", "prefix", "regex"]:
        if self.path is not None:
            return "path"
        return "prefix" if self.prefix is not None else "regex"

    @property
    def path_value(self) -> str:
        return self.path or self.prefix or self.regex or ""


class Backend(Spec):
    service: Name
    weight: Annotated[StrictInt, Field(ge=0, le=1_000_000)] = 1


def _check_backend_form(backend: str | None, backends: tuple[Backend, ...] | None) -> None:
    """``backend`` or weighted ``backends``, the choice every route kind offers."""
    if (backend is None) == (backends is None):
        raise ValueError("exactly one of backend, backends is required")
    if backends is not None and sum(b.weight for b in backends) == 0:
        raise ValueError("backends: at least one weight must be above 0")


def _weighted_backends(backend: str | None, backends: tuple[Backend, ...] | None) -> tuple[Backend, ...]:
    # Constructed, not validated: the name was checked when loaded (and may be team-scoped).
    return backends if backends is not None else (Backend.model_construct(service=backend or ""),)


class Rewrite(Spec):
    prefix: StrictStr = Field(pattern=r"^/")


class Retries(Spec):
    attempts: Annotated[StrictInt, Field(ge=0, le=20)] = 1
    on: tuple[RetryOn, ...] = ("connect-failure", "refused-stream", "reset")
    per_try_timeout: Duration | None = None


class HeaderMutation(Spec):
    add: dict[HeaderName, StrictStr] = Field(
        default_factory=dict, description="Headers to set, replacing any value already present."
    )
    remove: tuple[HeaderName, ...] = ()


class Cors(Spec):
    origins: tuple[StrictStr, ...] = Field(min_length=1, description="Exact origins, or '*'.")
    methods: tuple[HttpMethod, ...] = ()
    headers: tuple[HeaderName, ...] = ()
    expose_headers: tuple[HeaderName, ...] = ()
    max_age: Duration | None = None
    credentials: StrictBool = False


class Mirror(Spec):
    """Copy a share of requests to another Service; its answers are discarded."""

    service: Name
    percent: Percent = 100.0


class DelayFault(Spec):
    duration: Duration
    percent: Percent = 100.0


class AbortFault(Spec):
    status: Annotated[StrictInt, Field(ge=200, le=599)]
    percent: Percent = 100.0


class Fault(Spec):
    """Fault injection for chaos drills: delay and/or fail a share of requests at the gateway."""

    delay: DelayFault | None = None
    abort: AbortFault | None = None

    @model_validator(mode="after")
    def _some_fault(self) -> Self:
        if self.delay is None and self.abort is None:
            raise ValueError("fault needs delay, abort or both")
        return self


class GrpcJson(Spec):
    """Serve JSON/HTTP clients from a gRPC backend: Envoy transcodes each call both ways."""

    descriptor: StrictStr = Field(
        description="FileDescriptorSet of the API (protoc --include_imports --descriptor_set_out)."
    )
    services: tuple[StrictStr, ...] = Field(min_length=1, description="Fully qualified gRPC services.")


class Route(Document):
    kind: Literal["Route"] = "Route"
    gateway: Name
    hosts: tuple[HostPattern, ...] = Field(default=("*",), min_length=1)
    match: RouteMatch
    backend: Name | None = None
    backends: tuple[Backend, ...] | None = Field(default=None, min_length=1)
    rewrite: Rewrite | None = None
    timeout: Duration | None = None
    retries: Retries | None = None
    request_headers: HeaderMutation | None = None
    response_headers: HeaderMutation | None = None
    cors: Cors | None = None
    compression: StrictBool | None = Field(
        default=None, description="true: compress (Gateway settings or defaults); false: never."
    )
    cache: StrictBool = Field(default=False, description="Cache responses in Envoy per Cache-Control.")
    deny: tuple[DenyRule, ...] = ()
    mirror: Mirror | None = None
    fault_injection: Fault | None = None
    grpc_json: GrpcJson | None = None
    auth: Name | tuple[Name, ...] = ()
    rate_limit: Name | tuple[Name, ...] = ()
    validation: Validate | None = Field(
        default=None, description="Check requests against a JSON Schema or OpenAPI operation (400 if not)."
    )
    screen: Screen | None = Field(
        default=None, description="Screen for SQL injection, XSS, path traversal and command injection."
    )
    websocket: StrictBool = Field(
        default=False, description="Allow WebSocket upgrades; auth and limits apply to the upgrade request."
    )
    grpc_web: StrictBool = Field(
        default=False, description="Let browsers call this gRPC route with gRPC-Web (Envoy translates)."
    )

    @model_validator(mode="after")
    def _exactly_one_backend_form(self) -> Self:
        _check_backend_form(self.backend, self.backends)
        return self

    @property
    def weighted_backends(self) -> tuple[Backend, ...]:
        return _weighted_backends(self.backend, self.backends)

    @property
    def services(self) -> tuple[str, ...]:
        """Every Service this route sends traffic to, mirrors included."""
        # Not through weighted_backends: this runs for every route of a version, several times.
        names = [self.backend or ""] if self.backends is None else [b.service for b in self.backends]
        if self.mirror is not None:
            names.append(self.mirror.service)
        return tuple(dict.fromkeys(names))

    @property
    def auth_policies(self) -> tuple[str, ...]:
        return (self.auth,) if isinstance(self.auth, str) else self.auth

    @property
    def rate_limit_policies(self) -> tuple[str, ...]:
        return (self.rate_limit,) if isinstance(self.rate_limit, str) else self.rate_limit


GrpcRetryOn = Literal["cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable"]
GRPC_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"


class GrpcMatch(Spec):
    """Which calls a GrpcTarget route takes: all of them unless narrowed."""

    service: Annotated[StrictStr, Field(pattern=GRPC_NAME_PATTERN)] | None = Field(
        default=None, description="Fully qualified gRPC service, e.g. helloworld.Greeter."
    )
    method: Annotated[StrictStr, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = Field(
        default=None, description="One method of service (requires service)."
    )
    headers: dict[HeaderName, StrictStr] = Field(
        default_factory=dict, description="Call metadata that must have exactly these values."
    )

    @model_validator(mode="after")
    def _method_needs_service(self) -> Self:
        if self.method is not None and self.service is None:
            raise ValueError("method needs service: a method is named within its service")
        return self


class GrpcRetries(Spec):
    """Retry a failed call on another endpoint, as gRPC's own retry policy (gRFC A44) does."""

    attempts: Annotated[StrictInt, Field(ge=1, le=4)] = Field(
        default=1, description="Retries after the first try (gRPC allows 5 tries in all)."
    )
    on: tuple[GrpcRetryOn, ...] = Field(default=("unavailable",), min_length=1)


class GrpcRoute(Spec):
    """A route of a GrpcTarget; the first route whose match fits a call takes it."""

    match: GrpcMatch = Field(default_factory=GrpcMatch)
    backend: Name | None = None
    backends: tuple[Backend, ...] | None = Field(default=None, min_length=1)
    timeout: Duration | None = Field(default=None, description="Longest a call may take, retries included.")
    retries: GrpcRetries | None = None

    @model_validator(mode="after")
    def _exactly_one_backend_form(self) -> Self:
        _check_backend_form(self.backend, self.backends)
        return self

    @property
    def weighted_backends(self) -> tuple[Backend, ...]:
        return _weighted_backends(self.backend, self.backends)


class GrpcTarget(Document):
    """Services published to proxyless gRPC clients (gRPC's own xDS client, ``xds:///`` targets).

    A client dialing ``xds:///<target>`` gets this target's routes and the endpoints of their
    Services straight from waypost, with no proxy on the path.
    """

    kind: Literal["GrpcTarget"] = "GrpcTarget"
    target: Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})(:[0-9]{1,5})?$")] = Field(
        description="The name clients dial as xds:///<target>, e.g. orders.example:9000."
    )
    nodes: NodeSelector | None = Field(
        default=None, description="Which clients get it (their bootstrap's node cluster and labels)."
    )
    routes: tuple[GrpcRoute, ...] = Field(min_length=1)

    def selects(self, node_cluster: str, node_labels: Mapping[str, str]) -> bool:
        return self.nodes is None or self.nodes.matches(node_cluster, node_labels)

    @property
    def services(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(b.service for route in self.routes for b in route.weighted_backends))
