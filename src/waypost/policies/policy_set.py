"""The whole validated set: :class:`PolicySet` (every document by kind and name, the files they
name, and where each was written) and :class:`SourceRef`.

Data only, no I/O; built by :mod:`waypost.policies.loader`, read by the compiler and the decision
services. Frozen: a new policy version is a new set.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from waypost.policies.model_auth import AuthPolicy
from waypost.policies.model_catalog import Api, Portal
from waypost.policies.model_consumers import Consumer, RateLimitPolicy, Subscription
from waypost.policies.model_gateways import Gateway, Sidecar
from waypost.policies.model_routes import GrpcTarget, Route
from waypost.policies.model_services import Service
from waypost.policies.model_teams import Team

__all__ = [
    "PolicySet",
    "SourceRef",
]


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
