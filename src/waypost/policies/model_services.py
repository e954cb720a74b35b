"""Service: the upstreams Routes send traffic to, with their endpoints, health checks, circuit
breakers, outlier detection, upstream TLS and self-registration of endpoints.

Data only, no I/O. Cross-field checks raise errors placed at the field concerned (its line), not
at the document.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import Field, StrictBool, StrictInt, StrictStr, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from waypost.policies.model_base import Document, NodeSelector, NonNegativeInt, PositiveInt, Spec
from waypost.policies.protect import AdmissionControl
from waypost.policies.types import Duration, EndpointField, Name

__all__ = [
    "CircuitBreaker",
    "HealthCheck",
    "OutlierDetection",
    "Registration",
    "Service",
    "ServiceTLS",
]


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
