"""Gateway and Sidecar: the documents that open Envoy listeners, with their blocks (TLS, limits,
deny rules, compression, tracing, analytics; a Sidecar's inbound and outbound sides).

Data only, no I/O. :class:`DenyRule` is shared with :class:`~waypost.policies.model_routes.Route`.
A Sidecar is expanded into Gateways, Routes and Services by :mod:`waypost.policies.sidecars`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Literal, Self

from pydantic import Field, StrictBool, StrictInt, StrictStr, model_validator

from waypost.policies.model_base import (
    Document,
    HttpMethod,
    NodeSelector,
    NonNegativeInt,
    Percent,
    PositiveInt,
    Spec,
)
from waypost.policies.protect import UserAgents
from waypost.policies.types import Duration, EndpointField, Name, Port, RequestHeaderName

__all__ = [
    "Compression",
    "CompressionAlgorithm",
    "DenyRule",
    "Gateway",
    "GatewayAnalytics",
    "GatewayLimits",
    "GatewayTLS",
    "Sidecar",
    "SidecarInbound",
    "SidecarOutbound",
    "SidecarTLS",
    "Tracing",
]


CompressionAlgorithm = Literal["gzip", "brotli", "zstd"]


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
