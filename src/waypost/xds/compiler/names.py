"""Envoy resource names. They are API: renaming one drains a listener or re-warms a cluster."""

from __future__ import annotations

__all__ = [
    "cluster_name",
    "grpc_client_cluster_name",
    "grpc_route_config_name",
    "grpc_target_key",
    "listener_name",
    "route_config_name",
    "secret_name_ca",
    "secret_name_cert",
    "secret_name_upstream_cert",
    "tracing_cluster_name",
    "virtual_host_name",
]


def listener_name(gateway: str) -> str:
    return gateway


def route_config_name(gateway: str) -> str:
    return gateway


def cluster_name(service: str) -> str:
    return service


def virtual_host_name(gateway: str, host: str) -> str:
    return f"{gateway}/{host}"


def secret_name_cert(gateway: str) -> str:
    # The slash cannot appear in a policy name, so these never collide with user-named resources.
    return f"{gateway}/cert"


def secret_name_ca(gateway: str) -> str:
    return f"{gateway}/client-ca"


def tracing_cluster_name(gateway: str) -> str:
    return f"{gateway}/otel"


def secret_name_upstream_cert(service: str) -> str:
    return f"{service}/client-cert"


def grpc_target_key(target: str) -> str:
    """A GrpcTarget among a node group's sources (beside Gateway names, which have no colon)."""
    return f"grpc:{target}"


def grpc_route_config_name(target: str) -> str:
    return f"{target}/grpc"


def grpc_client_cluster_name(service: str) -> str:
    # Apart from the Service's Envoy cluster: gRPC clients get a leaner cluster of their own.
    return f"{service}/grpc"
