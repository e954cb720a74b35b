"""The typed policy model: one frozen pydantic model per kind of policy document.

Data only, no I/O. Field names are the YAML keys users write, so a validation error's location is
also the path a user sees in their file. Cross-document rules (references, duplicates, conflicts)
live in :mod:`waypost.policies.validate`; loading from disk in :mod:`waypost.policies.loader`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Annotated, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from waypost.policies.cel_env import check_expression
from waypost.policies.protect import AdmissionControl, Screen, UserAgents, Validate
from waypost.policies.types import (
    Duration,
    EndpointField,
    HeaderName,
    HostPattern,
    Name,
    Port,
    RateUnit,
    RequestHeaderName,
    ScopedName,
)

__all__ = [
    "KINDS",
    "AbortFault",
    "AdmissionControl",
    "Api",
    "ApiPlan",
    "AuthPolicy",
    "Backend",
    "Compression",
    "Consumer",
    "ConsumerAccount",
    "Cors",
    "DelayFault",
    "DenyRule",
    "Document",
    "Fault",
    "Gateway",
    "GatewayAnalytics",
    "GatewayGrant",
    "GatewayLimits",
    "GatewayTLS",
    "GrpcJson",
    "GrpcMatch",
    "GrpcRetries",
    "GrpcRoute",
    "GrpcTarget",
    "HeaderMutation",
    "HealthCheck",
    "HostGrant",
    "IdentitySource",
    "Limit",
    "Mirror",
    "NodeSelector",
    "PolicySet",
    "Portal",
    "PortalAdmin",
    "PortalOidc",
    "RateLimitPolicy",
    "Registration",
    "Retries",
    "Route",
    "RouteMatch",
    "Rule",
    "Screen",
    "Service",
    "ServiceTLS",
    "Sidecar",
    "SidecarInbound",
    "SidecarOutbound",
    "SidecarTLS",
    "SourceRef",
    "Subscription",
    "Team",
    "TeamLimits",
    "Tracing",
    "UserAgents",
    "Validate",
]

HttpMethod = Literal["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]
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
PositiveInt = Annotated[StrictInt, Field(ge=1)]
NonNegativeInt = Annotated[StrictInt, Field(ge=0)]
StringMap = dict[StrictStr, StrictStr]
Percent = Annotated[float, Field(strict=True, ge=0, le=100, allow_inf_nan=False)]
CompressionAlgorithm = Literal["gzip", "brotli", "zstd"]


class Spec(BaseModel):
    """Base of every block: unknown keys are errors, values are immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Document(Spec):
    """Fields every policy document carries."""

    kind: StrictStr
    name: Name


# --- Gateway -------------------------------------------------------------------------------------


class NodeSelector(Spec):
    """Which Envoy nodes get a Gateway: node.cluster and/or node metadata labels, all must match."""

    cluster: StrictStr | None = None
    labels: StringMap = Field(default_factory=dict)

    def matches(self, node_cluster: str, node_labels: Mapping[str, str]) -> bool:
        if self.cluster is not None and self.cluster != node_cluster:
            return False
        return all(node_labels.get(key) == value for key, value in self.labels.items())


class GatewayTLS(Spec):
    cert: StrictStr = Field(description="PEM certificate chain, relative to the policy directory.")
    key: StrictStr = Field(description="PEM private key, relative to the policy directory.")
    client_ca: StrictStr | None = Field(
        default=None, description="PEM CA bundle; when set, clients must present a certificate it signed."
    )


class Compression(Spec):
    """Response compression, negotiated with the client's accept-encoding."""

    algorithms: tuple[CompressionAlgorithm, ...] = Field(default=("gzip",), min_length=1)
    min_bytes: NonNegativeInt = Field(default=1024, description="Smaller responses are sent as they are.")
    level: Literal["fastest", "balanced", "smallest"] = Field(
        default="fastest", description="CPU against size; fastest suits small, dynamic API responses."
    )
    content_types: tuple[StrictStr, ...] = Field(
        default=(),
        description="Media types to compress; empty: Envoy's text, JSON, JS, XML and SVG defaults.",
    )


class DenyRule(Spec):
    """Requests this rule matches are refused with 403 by Envoy itself (no call to waypost).

    A rule matches when the path matches one of ``paths`` (if given) and every header of
    ``headers`` matches (if given). Patterns are RE2 regular expressions matched against the
    whole value (the path without its query string).
    """

    paths: tuple[StrictStr, ...] = ()
    headers: dict[RequestHeaderName, StrictStr] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _something_to_match(self) -> Self:
        if not self.paths and not self.headers:
            raise ValueError("a deny rule needs paths, headers or both")
        return self


class GatewayLimits(Spec):
    """Request limits every route of a gateway enforces, before any upstream is involved."""

    max_request_bytes: PositiveInt | None = Field(default=None, description="Larger bodies get 413.")
    max_request_headers_kb: Annotated[StrictInt, Field(ge=1, le=8192)] | None = Field(
        default=None, description="Larger request headers get 431 (Envoy's default is 60 KiB)."
    )
    methods: tuple[HttpMethod, ...] = Field(default=(), description="Allowed methods; others get 403.")
    idle_timeout: Duration | None = Field(default=None, description="Close a connection idle this long.")
    max_connection_duration: Duration | None = None
    request_headers_timeout: Duration = Field(
        default=10_000, description="A client must send all request headers within this (slowloris)."
    )
    stream_idle_timeout: Duration = Field(
        default=300_000, description="Reset a request that sends or receives nothing for this long."
    )
    user_agents: UserAgents | None = Field(
        default=None, description="Allow or deny clients by user-agent (403 otherwise)."
    )


class Tracing(Spec):
    """Send OpenTelemetry spans of every request to an OTLP/gRPC collector."""

    collector: EndpointField = Field(description="host:port of an OTLP gRPC collector.")
    service_name: StrictStr | None = Field(default=None, description="Default: the Gateway's name.")
    sampling: Percent = 100.0


class GatewayAnalytics(Spec):
    """Call analytics: Envoy streams this Gateway's access log to waypost over gRPC (served by
    `waypost serve --analytics-port`; without it nothing is streamed)."""

    enabled: StrictBool = True
    sample: Annotated[float, Field(strict=True, gt=0, le=100, allow_inf_nan=False)] = Field(
        default=100.0,
        description="Percentage of requests logged; each logged request counts as 100/sample, "
        "so figures stay estimates of the whole traffic.",
    )


class Gateway(Document):
    kind: Literal["Gateway"] = "Gateway"
    port: Port
    address: StrictStr = "0.0.0.0"
    nodes: NodeSelector | None = Field(default=None, description="Omitted: every node.")
    tls: GatewayTLS | None = None
    auth_failure_mode: Literal["closed", "open"] = Field(
        default="closed",
        description="Auth decision service unreachable: closed answers 503, open lets requests through.",
    )
    auth_service: Literal["grpc", "http"] = Field(
        default="grpc",
        description="How Envoy asks for auth decisions: gRPC Check, or the faster HTTP endpoint "
        "(api_key and jwt policies only; gateways with mtls or custom policies keep gRPC).",
    )
    limits: GatewayLimits | None = None
    deny: tuple[DenyRule, ...] = ()
    compression: Compression | None = Field(default=None, description="Compress every route's responses.")
    access_log: StrictBool = Field(default=False, description="One JSON line per request on Envoy's stdout.")
    tracing: Tracing | None = None
    analytics: GatewayAnalytics = Field(
        default_factory=GatewayAnalytics, description="Call analytics; on by default."
    )
    trusted_hops: Annotated[StrictInt, Field(ge=0, le=10)] = Field(
        default=0,
        description="Proxies in front of this gateway that append to x-forwarded-for; the client "
        "address (rate limits by client_ip) is the one they saw. 0: the peer address.",
    )

    def selects(self, node_cluster: str, node_labels: Mapping[str, str]) -> bool:
        return self.nodes is None or self.nodes.matches(node_cluster, node_labels)


# --- Service -------------------------------------------------------------------------------------


class HealthCheck(Spec):
    path: StrictStr | None = Field(default=None, pattern=r"^/")
    service: StrictStr | None = None
    interval: Duration = 5000
    timeout: Duration = 1000
    healthy: PositiveInt = 2
    unhealthy: PositiveInt = 3


class CircuitBreaker(Spec):
    max_connections: PositiveInt | None = None
    max_pending_requests: PositiveInt | None = None
    max_requests: PositiveInt | None = None
    max_retries: NonNegativeInt | None = None


class OutlierDetection(Spec):
    consecutive_5xx: PositiveInt = 5
    base_ejection_time: Duration = 30_000
    interval: Duration = 10_000
    max_ejection_percent: Annotated[StrictInt, Field(ge=0, le=100)] = 10


class ServiceTLS(Spec):
    """Originate TLS to the endpoints: verify them against ``ca``, optionally present a client cert."""

    ca: StrictStr = Field(description="PEM CA bundle the upstream certificate must chain to.")
    sni: StrictStr | None = Field(
        default=None, description="Server name sent and required in the certificate's SAN."
    )
    cert: StrictStr | None = Field(default=None, description="PEM client certificate (mTLS).")
    key: StrictStr | None = Field(default=None, description="PEM private key of cert.")

    @model_validator(mode="after")
    def _cert_with_key(self) -> Self:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together: give both or neither")
        return self


def _field_error(field: str, value: object, message: str) -> ValidationError:
    """A cross-field check's error, placed at ``field`` (its line) rather than the document's."""
    details = InitErrorDetails(type=PydanticCustomError("value_error", message), loc=(field,), input=value)
    return ValidationError.from_exception_data("field", [details])


class Registration(Spec):
    """Nodes that may add themselves as endpoints of a Service while their xDS stream is up.

    A node announces ``register: {service: NAME, address: HOST:PORT}`` in its metadata
    (``waypost bootstrap --register``); it is an endpoint only if this selector matches it.
    """

    nodes: NodeSelector = Field(description="Which nodes may register: node cluster and/or labels.")
    grace: Duration = Field(
        default=10_000, description="How long an endpoint stays after its node's stream drops."
    )
    service: Name | None = Field(
        default=None, description="Count claims made for this name instead of the Service's own."
    )

    def key(self, service: str) -> str:
        """The name claims must give for ``service`` to take them."""
        return self.service or service


class Service(Document):
    kind: Literal["Service"] = "Service"
    endpoints: tuple[EndpointField, ...] = Field(
        default=(), description="Required unless registration is set (then it may add to them)."
    )
    protocol: Literal["http1", "http2", "grpc"] = "http1"
    lb: Literal["round_robin", "least_request", "random", "ring_hash", "maglev"] = "round_robin"
    connect_timeout: Duration = 5000
    health_check: HealthCheck | None = None
    circuit_breaker: CircuitBreaker | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ServiceTLS | None = None
    admission_control: AdmissionControl | None = None
    registration: Registration | None = None
    shared: StrictBool = Field(
        default=False, description="Platform documents only: Routes of every Team may use it (see Team)."
    )

    @model_validator(mode="after")
    def _some_endpoints(self) -> Self:
        if not self.endpoints and self.registration is None:
            raise _field_error("endpoints", self.endpoints, "must not be empty (unless registration is set)")
        if self.registration is not None and self.uses_dns:
            raise _field_error(
                "registration", None, "a Service with DNS endpoints cannot take registered ones"
            )
        return self

    @model_validator(mode="after")
    def _health_check_fits_protocol(self) -> Self:
        check = self.health_check
        if check is None:
            return self
        if self.protocol == "grpc":
            if check.path is not None:
                raise ValueError(
                    "health_check.path: a grpc Service is checked over gRPC (grpc.health.v1.Health/Check), "
                    "not by GET: drop path (service: names the gRPC service to ask about)"
                )
        elif check.path is None:
            raise ValueError("health_check.path is required: the path Envoy GETs")
        elif check.service is not None:
            raise ValueError("health_check.service is for protocol: grpc (a gRPC health check)")
        return self

    @property
    def uses_dns(self) -> bool:
        return not all(endpoint.is_ip for endpoint in self.endpoints)


# --- Route ---------------------------------------------------------------------------------------


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
        names = [b.service for b in self.weighted_backends]
        if self.mirror is not None:
            names.append(self.mirror.service)
        return tuple(dict.fromkeys(names))

    @property
    def auth_policies(self) -> tuple[str, ...]:
        return (self.auth,) if isinstance(self.auth, str) else self.auth

    @property
    def rate_limit_policies(self) -> tuple[str, ...]:
        return (self.rate_limit,) if isinstance(self.rate_limit, str) else self.rate_limit


# --- GrpcTarget ----------------------------------------------------------------------------------

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


# --- Sidecar -------------------------------------------------------------------------------------


class SidecarInbound(Spec):
    """Requests from other sidecars (mTLS) to the local app, with a Gateway route's features."""

    port: Port = Field(description="Where other sidecars reach this one (TLS, client certificates required).")
    app: EndpointField = Field(description="The local app, e.g. 127.0.0.1:8080.")
    auth: Name | tuple[Name, ...] = ()
    rate_limit: Name | tuple[Name, ...] = ()
    timeout: Duration | None = None


class SidecarOutbound(Spec):
    """A service the app calls: plain HTTP to 127.0.0.1:<port>, mTLS to that service's sidecars."""

    service: Name = Field(description="The Sidecar (by name) whose instances are called.")
    port: Port = Field(description="The local port the app sends those calls to.")
    timeout: Duration | None = None


class SidecarTLS(Spec):
    cert: StrictStr = Field(description="This sidecar's certificate (its DNS SAN is the Sidecar's name).")
    key: StrictStr = Field(description="Its private key.")
    ca: StrictStr = Field(description="The mesh CA: peers' certificates must chain to it.")


class Sidecar(Document):
    """The Envoys in front of one service's instances: east-west traffic in the same repository.

    Each instance's Envoy registers itself (``waypost bootstrap --register NAME=IP:PORT``, the
    inbound port) and becomes an endpoint for the sidecars that call this one. waypost expands a
    Sidecar into Gateways, Routes and Services named ``<name>.inbound``, ``<name>.app``,
    ``<name>.out.<service>`` and ``<name>.to.<service>``, so every Route feature applies.
    """

    kind: Literal["Sidecar"] = "Sidecar"
    nodes: NodeSelector = Field(description="The Envoys of this service (node cluster and/or labels).")
    tls: SidecarTLS
    inbound: SidecarInbound | None = None
    outbound: tuple[SidecarOutbound, ...] = ()
    grace: Duration = Field(
        default=10_000, description="An instance stays this long after its Envoy disconnects."
    )


# --- AuthPolicy ----------------------------------------------------------------------------------


class ApiKeyIdentity(Spec):
    header: RequestHeaderName = "x-api-key"


class JwtIdentity(Spec):
    issuer: StrictStr
    audiences: tuple[StrictStr, ...] = ()
    jwks: StrictStr = Field(description="A JWKS file relative to the policy directory, or an https:// URL.")
    claims_to_headers: dict[StrictStr, HeaderName] = Field(default_factory=dict)
    header: RequestHeaderName = "authorization"


class MtlsIdentity(Spec):
    pass


class CustomIdentity(Spec):
    plugin: StrictStr = Field(
        pattern=r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$", description="module:function"
    )
    timeout: Duration = 1000


class IdentitySource(Spec):
    """Exactly one of the keys: the credential to look for."""

    api_key: ApiKeyIdentity | None = None
    jwt: JwtIdentity | None = None
    mtls: MtlsIdentity | None = None
    custom: CustomIdentity | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        given = [key for key in ("api_key", "jwt", "mtls", "custom") if getattr(self, key) is not None]
        if len(given) != 1:
            raise ValueError("each identity entry has exactly one of api_key, jwt, mtls, custom")
        return self


class RuleMatch(Spec):
    roles: tuple[StrictStr, ...] = ()
    scopes: tuple[StrictStr, ...] = ()
    methods: tuple[HttpMethod, ...] = ()
    paths: tuple[StrictStr, ...] = ()
    when: StrictStr | None = Field(default=None, description="A CEL expression over request and identity.")

    @field_validator("when")
    @classmethod
    def _cel_compiles(cls, value: str | None) -> str | None:
        # A typo in a rule must fail at load time with file:line, never at the first request.
        if value is not None:
            check_expression(value)
        return value


class Rule(Spec):
    allow: RuleMatch | None = None
    deny: RuleMatch | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.allow is None) == (self.deny is None):
            raise ValueError("each rule has exactly one of allow, deny")
        return self


class AuthPolicy(Document):
    kind: Literal["AuthPolicy"] = "AuthPolicy"
    identity: tuple[IdentitySource, ...] = Field(min_length=1)
    rules: tuple[Rule, ...] = ()
    mode: Literal["enforce", "dry_run"] = "enforce"
    shared: StrictBool = Field(
        default=False, description="Platform documents only: Routes of every Team may use it (see Team)."
    )


# --- Consumer ------------------------------------------------------------------------------------

ApiKeyHash = Annotated[StrictStr, Field(pattern=r"^sha256:[0-9a-f]{64}$")]


SubscriptionStatus = Literal["approved", "pending", "revoked"]


class Subscription(Spec):
    """Access to one Route, or to every route of one Api (exactly one of ``route``, ``api``)."""

    route: Name | None = None
    api: ScopedName | None = Field(
        default=None,
        description="An Api: covers every route it lists (a Team's Api: `<team>~<name>`, or its own"
        " team's by name).",
    )
    plan: StrictStr | None = Field(
        default=None,
        description="With `api`: one of the Api's plans; on its routes it replaces the Consumer's plan.",
    )
    status: SubscriptionStatus

    @model_validator(mode="after")
    def _exactly_one_target(self) -> Self:
        if (self.route is None) == (self.api is None):
            raise ValueError("each subscription has exactly one of route, api")
        if self.plan is not None and self.api is None:
            raise ValueError("plan goes with api: a route subscription takes the Consumer's plan")
        return self

    @property
    def target(self) -> tuple[Literal["route", "api"], str]:
        return ("api", self.api) if self.api is not None else ("route", self.route or "")


class KeyInfo(Spec):
    """What the portal shows of a key it issued: never the key, only its public prefix and date."""

    prefix: StrictStr = Field(pattern=r"^[A-Za-z0-9_]{1,16}$")
    created: date


class ConsumerAccount(Spec):
    """Written by the developer portal: who this Consumer is there. No effect on decisions."""

    email: StrictStr | None = Field(default=None, max_length=254)
    subject: StrictStr | None = Field(
        default=None, max_length=255, description="The OpenID Connect `sub` that signs in as this Consumer."
    )
    keys: dict[ApiKeyHash, KeyInfo] = Field(
        default_factory=dict, description="Prefix and creation date of keys in `api_keys`, by hash."
    )


class Consumer(Document):
    kind: Literal["Consumer"] = "Consumer"
    plan: StrictStr | None = None
    roles: tuple[StrictStr, ...] = ()
    labels: StringMap = Field(default_factory=dict)
    api_keys: tuple[ApiKeyHash, ...] = ()
    subscriptions: tuple[Subscription, ...] | None = None
    account: ConsumerAccount | None = None


# --- RateLimitPolicy -----------------------------------------------------------------------------


class Limit(Spec):
    by: StrictStr = Field(pattern=r"^(consumer|client_ip|route|header:[a-zA-Z0-9!#$%&'*+.^`|~-]+)$")
    requests: PositiveInt
    per: RateUnit
    scope: Literal["global", "local"] = "global"


class PlanLimit(Spec):
    requests: PositiveInt
    per: RateUnit


class RateLimitPolicy(Document):
    kind: Literal["RateLimitPolicy"] = "RateLimitPolicy"
    limits: tuple[Limit, ...] = ()
    plans: dict[StrictStr, PlanLimit] = Field(default_factory=dict)
    shadow: StrictBool = False
    shared: StrictBool = Field(
        default=False, description="Platform documents only: Routes of every Team may use it (see Team)."
    )


# --- Team ----------------------------------------------------------------------------------------


class HostGrant(Spec):
    """One host a Team may route on, optionally only under a path prefix."""

    host: HostPattern = Field(description="A host name, '*.domain' or '*', as in Route.hosts.")
    path_prefix: StrictStr = Field(
        default="/",
        pattern=r"^/",
        description="The team's Routes on this host must match only paths starting with it.",
    )


class GatewayGrant(Spec):
    gateway: Name
    hosts: tuple[HostGrant, ...] = Field(min_length=1)


class TeamLimits(Spec):
    routes: NonNegativeInt | None = Field(default=None, description="Most Routes the team may define.")
    consumers: NonNegativeInt | None = Field(default=None, description="Most Consumers the team may define.")


class Team(Document):
    """A team's lane in a shared repository, written by the platform team (outside team folders).

    Documents under ``folders`` belong to the team: their names are scoped to it, they may refer
    only to the team's own documents and to platform documents marked ``shared: true``, and they
    must stay inside these grants. Teams define Services, Routes, AuthPolicies, Consumers,
    RateLimitPolicies and Apis (over their own Routes, in the portal's catalog); Gateways stay the
    platform's.
    """

    kind: Literal["Team"] = "Team"
    folders: tuple[StrictStr, ...] = Field(
        min_length=1, description="Folders (relative to the policy directory) whose documents are the team's."
    )
    owners: tuple[StrictStr, ...] = Field(
        default=(), description="Who approves changes to the folders (CODEOWNERS: '@org/team', emails)."
    )
    gateways: tuple[GatewayGrant, ...] = Field(
        default=(), description="The Gateways and hosts (path prefixes) the team's Routes may use."
    )
    upstreams: tuple[StrictStr, ...] = Field(
        default=(),
        description="Where the team's Services may point: CIDRs (10.1.0.0/16) or host patterns (*.pay.svc).",
    )
    plans: tuple[StrictStr, ...] = Field(
        default=(), description="Plans the team's Consumers and RateLimitPolicies may name."
    )
    limits: TeamLimits = Field(default_factory=TeamLimits)


# --- Api and Portal: the developer portal's catalog ---------------------------------------------


class ApiPlan(Spec):
    """A plan consumers may subscribe on; its limits are the RateLimitPolicies' plan of this name."""

    approval: StrictBool = Field(
        default=True, description="true: a request waits for an admin; false: granted at once."
    )
    description: StrictStr = Field(default="", max_length=2000)


class Api(Document):
    """A product in the developer portal: routes grouped under a title, with docs and plans.

    The gateway enforces nothing new for an Api: a Consumer's ``subscriptions`` naming it stand
    for subscriptions to each of its routes, and a subscription's plan selects the plan limits of
    those routes' RateLimitPolicies. Everything else here is what the portal shows.
    """

    kind: Literal["Api"] = "Api"
    title: StrictStr = Field(min_length=1, max_length=200)
    version: StrictStr = Field(min_length=1, max_length=50)
    summary: StrictStr = Field(default="", max_length=500)
    description: StrictStr = Field(default="", max_length=100_000, description="Markdown.")
    routes: tuple[Name, ...] = Field(min_length=1, description="The Routes this Api covers.")
    openapi: StrictStr | None = Field(
        default=None, description="An OpenAPI document (JSON or YAML), relative to the policy directory."
    )
    plans: dict[StrictStr, ApiPlan] = Field(
        default_factory=dict,
        description="Plans offered, by name; each a plan of a RateLimitPolicy of the Api's routes.",
    )
    approval: StrictBool = Field(
        default=True, description="Without plans: whether a subscription waits for an admin."
    )
    lifecycle: Literal["beta", "stable", "deprecated"] = "stable"
    sunset: date | None = Field(default=None, description="When a deprecated Api stops (required then).")

    @model_validator(mode="after")
    def _sunset_with_deprecated(self) -> Self:
        if (self.lifecycle == "deprecated") != (self.sunset is not None):
            raise ValueError("sunset is required for a deprecated Api, and only for one")
        return self

    def needs_approval(self, plan: str | None) -> bool:
        if plan is None:
            return self.approval
        found = self.plans.get(plan)
        return True if found is None else found.approval


class PortalAdmin(Spec):
    """Exactly one of ``consumer`` (signed in with its API key) or ``subject`` (OIDC ``sub``)."""

    consumer: Name | None = None
    subject: StrictStr | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.consumer is None) == (self.subject is None):
            raise ValueError("each admin has exactly one of consumer, subject")
        return self


class PortalOidc(Spec):
    """Sign-in through an OpenID provider (authorization-code flow)."""

    issuer: StrictStr = Field(pattern=r"^https?://", description="Its discovery document is under it.")
    client_id: StrictStr = Field(min_length=1)
    client_secret_env: StrictStr = Field(
        default="WAYPOST_OIDC_CLIENT_SECRET",
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="The environment variable holding the client secret (never in git).",
    )


class Portal(Document):
    """The developer portal's settings (at most one Portal document)."""

    kind: Literal["Portal"] = "Portal"
    title: StrictStr = Field(default="API portal", min_length=1, max_length=200)
    admins: tuple[PortalAdmin, ...] = ()
    signup: Literal["open", "approval", "closed"] = Field(
        default="approval",
        description="open: a sign-up lands at once; approval: it waits for an admin; closed: none.",
    )
    oidc: PortalOidc | None = None
    gateway_url: StrictStr | None = Field(
        default=None, pattern=r"^https?://", description="Where the console sends requests."
    )

    def is_admin(self, *, consumer: str | None = None, subject: str | None = None) -> bool:
        return any(
            (consumer is not None and admin.consumer == consumer)
            or (subject is not None and admin.subject == subject)
            for admin in self.admins
        )


KINDS: dict[str, type[Document]] = {
    "Gateway": Gateway,
    "Service": Service,
    "Route": Route,
    "AuthPolicy": AuthPolicy,
    "Consumer": Consumer,
    "RateLimitPolicy": RateLimitPolicy,
    "GrpcTarget": GrpcTarget,
    "Sidecar": Sidecar,
    "Api": Api,
    "Portal": Portal,
    "Team": Team,
}


# --- The whole set ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SourceRef:
    """Where a document (or one of its fields) was written: for error messages only."""

    path: str
    line: int


@dataclass(frozen=True)
class PolicySet:
    """A validated policy directory: every document by kind and name, plus the files they name.

    ``version`` is a content hash of every input byte, identical on every replica loading the same
    files. ``files`` maps the relative paths documents refer to (certificates, JWKS) to contents;
    private keys are :class:`~waypost.policies.types.PrivateBytes`.
    """

    version: str
    gateways: Mapping[str, Gateway] = field(default_factory=dict)
    services: Mapping[str, Service] = field(default_factory=dict)
    routes: Mapping[str, Route] = field(default_factory=dict)
    auth_policies: Mapping[str, AuthPolicy] = field(default_factory=dict)
    consumers: Mapping[str, Consumer] = field(default_factory=dict)
    rate_limit_policies: Mapping[str, RateLimitPolicy] = field(default_factory=dict)
    grpc_targets: Mapping[str, GrpcTarget] = field(default_factory=dict)
    sidecars: Mapping[str, Sidecar] = field(default_factory=dict)
    apis: Mapping[str, Api] = field(default_factory=dict)
    portals: Mapping[str, Portal] = field(default_factory=dict)
    teams: Mapping[str, Team] = field(default_factory=dict)
    files: Mapping[str, bytes] = field(default_factory=dict)
    sources: Mapping[tuple[str, str], SourceRef] = field(default_factory=dict, compare=False, repr=False)
    field_sources: Mapping[tuple[str, str, str], SourceRef] = field(
        default_factory=dict, compare=False, repr=False
    )
    """(kind, name, field) -> where, for fields checked after loading (``identity[0].custom.plugin``,
    which a decision service imports)."""

    def where(self, kind: str, name: str, field: str = "") -> SourceRef:
        """Where a document, or one of its fields recorded in ``field_sources``, was written."""
        found = self.field_sources.get((kind, name, field)) if field else None
        return found or self.sources.get((kind, name)) or SourceRef("", 0)

    @property
    def portal(self) -> Portal | None:
        """The Portal document, if any (validation allows at most one)."""
        return next(iter(self.portals.values()), None)

    def subscribed_routes(self, subscription: Subscription) -> tuple[str, ...]:
        """The routes a subscription stands for: its route, or every route of its Api."""
        kind, name = subscription.target
        if kind == "route":
            return (name,)
        api = self.apis.get(name)
        return api.routes if api is not None else ()
