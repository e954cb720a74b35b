"""Team: a team's lane in a shared repository (its folders, owners and grants of gateways, hosts,
upstreams, plans and limits).

Data only, no I/O. The grants are enforced by :mod:`waypost.policies.teams` when loading.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, StrictStr

from waypost.policies.model_base import Document, NonNegativeInt, Spec
from waypost.policies.types import HostPattern, Name

__all__ = [
    "GatewayGrant",
    "HostGrant",
    "Team",
    "TeamLimits",
]


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
