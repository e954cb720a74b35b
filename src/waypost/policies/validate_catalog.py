"""Cross-document rules of the developer portal's catalog: Apis, their plans, Portal.

An Api's plans must be plans of its routes' RateLimitPolicies (the limits a consumer sees are
read from there, never retyped); a subscription's plan must be one its Api offers; there is at
most one Portal. Pure: no I/O. References (an Api's routes, an admin Consumer) are checked with
every other reference in :mod:`waypost.policies.validate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from waypost.policies.diagnostics import Diagnostic
from waypost.policies.model import Api, Consumer, Portal, RateLimitPolicy, Route

if TYPE_CHECKING:
    from waypost.policies.validate import Entry, Loc

__all__ = ["check_catalog"]


def _diagnostic(entry: Entry, loc: Loc, message: str) -> Diagnostic:
    return Diagnostic(entry.source.path, entry.source.line_of(loc), entry.kind, entry.name, message)


def _at(entry: Entry) -> str:
    return f"{entry.source.path}:{entry.source.line_of(('name',))}"


def check_catalog(entries: Sequence[Entry], out: list[Diagnostic]) -> None:
    """Api plans exist in their routes' RateLimitPolicies; subscriptions name offered plans;
    one Portal at most."""
    routes = {e.name: e.document for e in entries if isinstance(e.document, Route)}
    limits = {e.name: e.document for e in entries if isinstance(e.document, RateLimitPolicy)}
    apis = {e.name: e.document for e in entries if isinstance(e.document, Api)}
    portals = [e for e in entries if isinstance(e.document, Portal)]
    for extra in portals[1:]:
        out.append(
            _diagnostic(extra, ("name",), f"only one Portal is allowed, first defined at {_at(portals[0])}")
        )
    for entry in entries:
        document = entry.document
        if isinstance(document, Api):
            defined: dict[str, None] = {}
            for route_name in document.routes:
                route = routes.get(route_name)
                for policy_name in route.rate_limit_policies if route is not None else ():
                    policy = limits.get(policy_name)
                    defined.update(dict.fromkeys(policy.plans if policy is not None else ()))
            for plan in document.plans:
                if plan not in defined:
                    known = ", ".join(defined) or "none"
                    message = (
                        f"plans.{plan}: no RateLimitPolicy of this Api's routes has a plan '{plan}'"
                        f" (plans there: {known})"
                    )
                    out.append(_diagnostic(entry, ("plans", plan), message))
        elif isinstance(document, Consumer):
            for index, subscription in enumerate(document.subscriptions or ()):
                api = apis.get(subscription.api) if subscription.api is not None else None
                if api is None or subscription.plan is None or subscription.plan in api.plans:
                    continue
                offered = ", ".join(api.plans) or "none"
                message = (
                    f"subscriptions[{index}].plan: Api {api.name} offers no plan '{subscription.plan}'"
                    f" (offered: {offered})"
                )
                out.append(_diagnostic(entry, ("subscriptions", index, "plan"), message))
