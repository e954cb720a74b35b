"""Cross-document rules of GrpcTargets: what a proxyless gRPC client can be given.

gRPC's xDS client implements a subset of Envoy's API (gRFCs A27, A28, A42, A44, A50): a Service
it is sent must be reached over HTTP/2 at IP addresses, balanced by a policy gRPC knows. Anything
else is an error here, at the line that asks for it, rather than a NACK from every client.
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from waypost.policies.diagnostics import Diagnostic
from waypost.policies.model import Gateway, GrpcTarget, Service

if TYPE_CHECKING:
    from waypost.policies.validate import Entry, Loc

__all__ = ["GRPC_CLIENT_LB", "check_grpc_targets"]

GRPC_CLIENT_LB = frozenset({"round_robin", "ring_hash", "least_request"})
"""Service.lb values gRPC's xDS client implements."""


def check_grpc_targets(entries: Sequence[Entry], out: list[Diagnostic]) -> None:
    targets = [(e, e.document) for e in entries if isinstance(e.document, GrpcTarget)]
    if not targets:
        return
    services = {e.name: e.document for e in entries if isinstance(e.document, Service)}
    gateways = {e.name for e in entries if isinstance(e.document, Gateway)}

    def error(entry: Entry, loc: Loc, message: str) -> None:
        out.append(Diagnostic(entry.source.path, entry.source.line_of(loc), entry.kind, entry.name, message))

    seen: dict[str, Entry] = {}
    for entry, target in targets:
        first = seen.setdefault(target.target, entry)
        if first is not entry:
            error(
                entry,
                ("target",),
                f"target '{target.target}' is already published by GrpcTarget {first.name} "
                f"({first.source.path}:{first.source.line_of(('name',))})",
            )
        if target.target in gateways:
            error(entry, ("target",), f"target '{target.target}' is also a Gateway's listener name")
        for r, route in enumerate(target.routes):
            for b, backend in enumerate(route.weighted_backends):
                loc: Loc = (
                    ("routes", r, "backend") if route.backend else ("routes", r, "backends", b, "service")
                )
                service = services.get(backend.service)
                if service is None:
                    continue  # a dangling reference, reported by the reference check
                problem = _client_problem(service)
                if problem is not None:
                    error(entry, loc, f"Service {backend.service} cannot be sent to gRPC clients: {problem}")


def _client_problem(service: Service) -> str | None:
    if service.protocol == "http1":
        return "gRPC calls need protocol: grpc (or http2)"
    if service.uses_dns:
        hosts = ", ".join(str(e) for e in service.endpoints if not e.is_ip)
        return f"gRPC clients take IP endpoints only, not DNS names ({hosts})"
    if service.lb not in GRPC_CLIENT_LB:
        return f"lb {service.lb} is not one gRPC implements (use {', '.join(sorted(GRPC_CLIENT_LB))})"
    if service.tls is not None:
        return "tls to the endpoints is not offered to gRPC clients"
    return None
