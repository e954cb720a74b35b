"""Route -> Api: the ``api`` dimension of every analytics key, from the current policy.

The ``Api`` kind (the portal's) is optional: on a policy model without it every route maps to
no Api (``""``). With it, a route belongs to an Api either by naming it (``Route.api``) or by
being listed in it (``Api.routes``); whichever the model offers is read, so the analytics side
needs no change when that kind lands or grows.
"""

from __future__ import annotations

from waypost.policies.model import PolicySet

__all__ = ["route_apis"]


def route_apis(policy: PolicySet) -> dict[str, str]:
    mapping: dict[str, str] = {}
    apis = getattr(policy, "apis", None) or {}
    for api_name, api in sorted(apis.items()):
        for route_name in getattr(api, "routes", ()) or ():
            mapping.setdefault(str(route_name), str(api_name))
    for route_name, route in policy.routes.items():
        api_name = getattr(route, "api", None)
        if isinstance(api_name, str) and api_name:
            mapping[route_name] = api_name
    return mapping
