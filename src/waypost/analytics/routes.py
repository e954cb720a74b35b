"""Route -> Api: the ``api`` dimension of every analytics key, from the current policy.

An Api (the portal's catalog kind) lists the Routes it covers; a route no Api lists maps to no
Api (``""``). Should two Apis list the same route, the first by name wins, so a route's requests
are never counted twice.
"""

from __future__ import annotations

from waypost.policies.model import PolicySet

__all__ = ["route_apis"]


def route_apis(policy: PolicySet) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for api_name, api in sorted(policy.apis.items()):
        for route_name in api.routes:
            mapping.setdefault(route_name, api_name)
    return mapping
