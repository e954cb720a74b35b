"""PolicySet -> the global limits by descriptor ``limit`` value: what the RLS looks up per call.

Counter identities are built from a limit's *content* (policy, key kind, window), never from the
policy version or the limit's position: a reload that changes one limit leaves every other
counter running, and a changed request count keeps its window's count.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from waypost import contract as d
from waypost.policies.model import PolicySet
from waypost.policies.types import RATE_UNIT_SECONDS

__all__ = ["LimitRule", "RateLimitTable", "build_table"]


@dataclass(frozen=True, slots=True)
class PlanRule:
    requests: int
    window: int
    unit: str
    counter: str


@dataclass(frozen=True, slots=True)
class LimitRule:
    policy: str
    by: str
    requests: int | None
    """None: the implicit limit of a policy with plans only; consumers without a plan pass."""
    window: int
    unit: str
    shadow: bool
    counter: str
    plans: Mapping[str, PlanRule] = field(default_factory=dict)


@dataclass(frozen=True)
class RateLimitTable:
    version: str
    rules: Mapping[str, LimitRule]
    route_policies: Mapping[str, tuple[str, ...]]
    """Route name -> its RateLimitPolicy names (for consumer checks made outside Envoy's RLS call)."""
    consumer_limits: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Route name -> the ``limit`` values of its global limits keyed by consumer or plan: what the
    ext_authz decision counts itself (:func:`~waypost.filters.ratelimit.limiter.consumer_quota`)."""


def build_table(policy: PolicySet) -> RateLimitTable:
    rules: dict[str, LimitRule] = {}
    for name, rlp in policy.rate_limit_policies.items():
        plans = {
            plan: PlanRule(
                requests=limit.requests,
                window=RATE_UNIT_SECONDS[limit.per],
                unit=limit.per,
                counter=f"{name}|plan:{plan}|{limit.per}",
            )
            for plan, limit in rlp.plans.items()
        }
        has_consumer = False
        for index, limit in enumerate(rlp.limits):
            if limit.scope != "global":
                continue
            has_consumer |= limit.by == "consumer"
            rules[d.limit_value(name, str(index))] = LimitRule(
                policy=name,
                by=limit.by,
                requests=limit.requests,
                window=RATE_UNIT_SECONDS[limit.per],
                unit=limit.per,
                shadow=rlp.shadow,
                counter=f"{name}|{limit.by}|{limit.per}",
                plans=plans if limit.by == "consumer" else {},
            )
        if plans and not has_consumer:
            rules[d.limit_value(name, d.PLANS_ONLY)] = LimitRule(
                policy=name,
                by="consumer",
                requests=None,
                window=0,
                unit="minute",
                shadow=rlp.shadow,
                counter=f"{name}|consumer",
                plans=plans,
            )
    route_policies = {name: route.rate_limit_policies for name, route in policy.routes.items()}
    by_policy: dict[str, list[str]] = {}
    for value, rule in rules.items():
        if rule.by == "consumer":
            by_policy.setdefault(rule.policy, []).append(value)
    consumer_limits = {
        name: limits
        for name, names in route_policies.items()
        if (limits := tuple(v for p in names for v in by_policy.get(p, ())))
    }
    return RateLimitTable(
        version=policy.version, rules=rules, route_policies=route_policies, consumer_limits=consumer_limits
    )
