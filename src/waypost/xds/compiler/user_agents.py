"""GatewayLimits.user_agents -> DENY policies in the gateway's RBAC filter (see protection.py).

``deny`` patterns refuse a matching user-agent; ``allow`` patterns refuse every user-agent that
matches none of them, an absent header included (RBAC's ``not_rule`` over "any allowed pattern
matches"), so a client cannot pass an allow-list by sending no user-agent at all.
"""

from __future__ import annotations

from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2

from waypost.policies.protect import UserAgents

__all__ = ["user_agent_policies"]


def _matches(pattern: str) -> rbac_pb2.Permission:
    matcher = string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=pattern))
    return rbac_pb2.Permission(
        header=route_components_pb2.HeaderMatcher(name="user-agent", string_match=matcher)
    )


def _any_of(patterns: tuple[str, ...]) -> rbac_pb2.Permission:
    return rbac_pb2.Permission(or_rules=rbac_pb2.Permission.Set(rules=[_matches(p) for p in patterns]))


def user_agent_policies(user_agents: UserAgents) -> dict[str, rbac_pb2.Policy]:
    anyone = [rbac_pb2.Principal(any=True)]
    policies = {}
    if user_agents.deny:
        policies["user-agents-denied"] = rbac_pb2.Policy(
            permissions=[_any_of(user_agents.deny)], principals=anyone
        )
    if user_agents.allow:
        policies["user-agents-not-allowed"] = rbac_pb2.Policy(
            permissions=[rbac_pb2.Permission(not_rule=_any_of(user_agents.allow))], principals=anyone
        )
    return policies
