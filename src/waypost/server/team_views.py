"""The fleet dashboard seen by one team: ``/dashboard.json?team=NAME`` (and ``/?team=NAME``).

A team's view keeps what concerns the team and leaves out the rest: its own state in
``policy.teams`` (serving, or held with its errors), the Envoys that serve a Gateway the team
routes on or is granted, the decision services its routes need (``needed_by`` and ``unserved``
narrowed to its routes), and a ``team`` block listing what it owns in the serving version
(Routes, Services, Consumers, Apis: the documents named ``<team>~<name>``). Platform-wide facts
stay, because they hold the team back too: the last refused change, git, the pushes and NACKs of
the Envoys shown. Pure functions over the policy and the /status dict; no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from waypost.policies.model import PolicySet
from waypost.policies.teams import team_of_name

__all__ = ["team_status", "team_summary"]


def _own(names: Iterable[str], team: str) -> list[str]:
    return sorted(name for name in names if team_of_name(name) == team)


def team_summary(policy: PolicySet, team: str) -> dict[str, Any]:
    """What ``team`` owns in ``policy`` and where it routes (``team`` must be one of its Teams)."""
    grants = policy.teams[team]
    routes = _own(policy.routes, team)
    gateways = {policy.routes[name].gateway for name in routes} | {g.gateway for g in grants.gateways}
    return {
        "name": team,
        "owners": list(grants.owners),
        "folders": list(grants.folders),
        "gateways": sorted(gateways),
        "routes": [
            {"name": name, "gateway": policy.routes[name].gateway, "hosts": list(policy.routes[name].hosts)}
            for name in routes
        ],
        "services": _own(policy.services, team),
        "consumers": _own(policy.consumers, team),
        "apis": _own(policy.apis, team),
    }


def team_status(status: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """/status narrowed to one team (a new dict; ``status`` is not changed)."""
    team = summary["name"]
    routes = {route["name"] for route in summary["routes"]}
    gateways = set(summary["gateways"])
    policy = dict(status.get("policy") or {})
    policy["teams"] = {name: t for name, t in (policy.get("teams") or {}).items() if name == team}
    plane = dict(status.get("decision_services") or {})
    plane["clusters"] = {
        name: {**cluster, "needed_by": [r for r in cluster.get("needed_by", []) if r in routes]}
        for name, cluster in (plane.get("clusters") or {}).items()
    }
    plane["unserved"] = [p for p in plane.get("unserved") or [] if p.get("route") in routes]
    nodes = [n for n in status.get("nodes") or [] if gateways & set(n.get("gateways") or [])]
    return {**status, "policy": policy, "decision_services": plane, "nodes": nodes}
