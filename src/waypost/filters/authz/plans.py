"""Decision plans: everything one policy version's decisions need, built once per version by
:func:`build_version` so the per-request path only looks things up.

A :class:`RoutePlan` per route holds its AuthPolicies' :class:`PolicyPlan` (identity sources,
compiled rules, the ``www-authenticate`` challenges, dry-run or enforced), and the version holds
every subscribing Consumer's grants by route. Contracts: building is pure apart from importing
``custom`` plugins (PolicyError, file:line, when one cannot be imported) and fetching remote JWKS
in the background (:mod:`.jwks`); a built :class:`Version` is never mutated, except for each
RoutePlan's cache of its decision counters. Any thread may build; the core swaps a whole version
in with one assignment.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from waypost.filters.authz.guard import FailedKeyGuard
from waypost.filters.authz.identity_sources import ConsumerIndex, Source, build_source
from waypost.filters.authz.plugins import load_plugins
from waypost.filters.authz.rules import CompiledRule, compile_rule
from waypost.metrics import AUTHZ_DECISIONS
from waypost.policies.model import AuthPolicy, Consumer, PolicySet

__all__ = ["Grant", "PolicyPlan", "PreparedAuthz", "RoutePlan", "Version", "build_version"]


@dataclass(slots=True)
class PolicyPlan:
    name: str
    sources: tuple[Source, ...]
    is_async: bool
    rules: tuple[CompiledRule, ...]
    dry_run: bool
    challenge: str
    challenge_error: str


@dataclass(slots=True)
class RoutePlan:
    """Everything one route's decisions need, prepared once per policy version."""

    route: str
    policies: tuple[PolicyPlan, ...]
    is_async: bool
    counters: dict[str, Any] = field(default_factory=dict)

    def count(self, decision: str) -> None:
        counter = self.counters.get(decision)
        if counter is None:
            counter = self.counters[decision] = AUTHZ_DECISIONS.labels(self.route, decision)
        counter.inc()


def _build_policy_plan(
    policy: AuthPolicy, policy_set: PolicySet, index: ConsumerIndex, plugins: Mapping[str, Callable[..., Any]]
) -> PolicyPlan:
    sources: list[Source] = []
    challenges: list[str] = []
    for source in policy.identity:
        sources.append(build_source(source, policy_set, index, plugins))
        if source.api_key is not None:
            challenges.append(f'ApiKey header="{source.api_key.header}"')
        elif source.jwt is not None:
            challenges.append('Bearer realm="waypost"')
    challenge = ", ".join(dict.fromkeys(challenges)) or 'Bearer realm="waypost"'
    return PolicyPlan(
        name=policy.name,
        sources=tuple(sources),
        is_async=any(getattr(s, "is_async", False) for s in sources),
        rules=tuple(compile_rule(rule) for rule in policy.rules),
        dry_run=policy.mode == "dry_run",
        challenge=challenge,
        challenge_error=challenge.replace(
            'Bearer realm="waypost"', 'Bearer realm="waypost", error="invalid_token"'
        ),
    )


@dataclass(frozen=True, slots=True)
class Grant:
    """A Consumer's subscription as it applies to one route."""

    status: str
    plan: str | None
    """The plan of the Api subscription granting the route; None: the Consumer's own plan."""


@dataclass(frozen=True)
class Version:
    """One policy version's plans (:data:`PreparedAuthz`), made by :func:`build_version`."""

    version: str
    routes: Mapping[str, RoutePlan]
    subscriptions: Mapping[str, Mapping[str, Grant]]
    """consumer -> route -> grant, for Consumers that list subscriptions."""


_STATUS_RANK = {"approved": 2, "pending": 1, "revoked": 0}


def _grants(consumer: Consumer, policy: PolicySet) -> dict[str, Grant]:
    """Route subscriptions and Api subscriptions (one per route of the Api), by route.

    When several name one route, the most permissive status wins (an approved Api subscription
    is not undone by a revoked subscription to one of its routes: revoke both to revoke), and a
    direct route subscription keeps the Consumer's plan over an Api's.
    """
    grants: dict[str, Grant] = {}
    for subscription in consumer.subscriptions or ():
        plan = subscription.plan if subscription.api is not None else None
        for route in policy.subscribed_routes(subscription):
            grant = Grant(subscription.status, plan)
            held = grants.get(route)
            if held is None or _STATUS_RANK[grant.status] > _STATUS_RANK[held.status]:
                grants[route] = grant
    return grants


PreparedAuthz = Version


def build_version(policy: PolicySet, failed_keys: FailedKeyGuard) -> Version:
    """Every route's plan for ``policy``; ``failed_keys`` is carried over from the last version.
    PolicyError (file:line) when a ``custom`` plugin cannot be imported."""
    plugins = load_plugins(policy)
    index = ConsumerIndex(policy.consumers, failed_keys)
    policy_plans = {
        name: _build_policy_plan(auth, policy, index, plugins)
        for name, auth in sorted(policy.auth_policies.items())
    }
    routes = {}
    for name, route in policy.routes.items():
        plans = tuple(policy_plans[p] for p in route.auth_policies if p in policy_plans)
        if plans:
            routes[name] = RoutePlan(route=name, policies=plans, is_async=any(p.is_async for p in plans))
    subscriptions = {
        c.name: _grants(c, policy) for c in policy.consumers.values() if c.subscriptions is not None
    }
    return Version(policy.version, routes, subscriptions)
