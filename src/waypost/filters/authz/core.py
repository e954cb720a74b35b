"""The authorization decision core: who is calling, may they call this route, and the outcome.

Transport-free: the gRPC Check service (:mod:`.grpc_service`) turns a CheckRequest into an
:class:`AuthRequest` and a :class:`Decision` back into bytes. Everything that can be prepared per
policy version is prepared once in :meth:`AuthzCore.prepare` (:mod:`.plans`: a route's identity
sources from :mod:`.identity_sources`, its rules compiled by :mod:`.rules`, the consumer index and
subscriptions), and swapped in with one assignment, so a request always sees one whole version.
This module ties them together per request: first credential each policy's sources resolve, its
verdict, dry-run, quota, metrics and the decision log. Decisions come from the cached
constructors of :mod:`.decision` (one object per answer, whose encodings the transports cache).

Outcomes (policy-spec, AuthPolicy): no or bad credential 401 with ``www-authenticate``; a known
caller no rule allows 403; a subscription not approved 403 with its reason; every denial a JSON
body ``{"error": ..., "reason": ...}``; an allowed request gets ``x-waypost-consumer`` and the
configured claim headers.

The request, identity and decision types and :func:`hash_api_key` are re-exported here: this
module stays the one import for the core's users (transports, tests, benches, plugin authors).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable

from waypost.contract import CONSUMER_HEADER
from waypost.filters.authz.decision import (
    DRY_RUN,
    AuthRequest,
    Decision,
    Failure,
    Identity,
    PluginResult,
    allowed,
    deny,
)
from waypost.filters.authz.decision_log import DecisionLog
from waypost.filters.authz.guard import REFILL_SECONDS, FailedKeyGuard
from waypost.filters.authz.identity_sources import Resolution, hash_api_key
from waypost.filters.authz.plans import PolicyPlan, PreparedAuthz, RoutePlan, Version, build_version
from waypost.filters.authz.rules import normalize_path
from waypost.log import get_logger
from waypost.policies.model import PolicySet
from waypost.policies.teams import team_of_name

__all__ = [
    "AuthRequest",
    "AuthzCore",
    "Decision",
    "Identity",
    "PluginResult",
    "PreparedAuthz",
    "hash_api_key",
    "normalize_path",
]

log = get_logger("waypost.authz")
_decision_log = DecisionLog()

Quota = Callable[[str, Decision], "Decision | Awaitable[Decision]"]
"""(route, allowed decision) -> the decision after counting the consumer's quota (see quota.py)."""

_UNKNOWN_ROUTE = deny(403, "route has no auth plan")
_NOT_READY = deny(503, "no policy loaded")


class AuthzCore:
    """Decides requests against the current policy version; :meth:`apply` swaps versions."""

    def __init__(self, quota: Quota | None = None) -> None:
        """``quota``: counts an admitted consumer's request (one hop, see quota.py); settable
        later as :attr:`quota`, before the first decision."""
        self._current: Version | None = None
        self.failed_keys = FailedKeyGuard()
        self.quota = quota

    @property
    def version(self) -> str | None:
        return self._current.version if self._current is not None else None

    def apply(self, policy: PolicySet) -> None:
        """:meth:`prepare` and :meth:`commit` in one step (raises PolicyError, changing nothing)."""
        self.commit(self.prepare(policy))

    def prepare(self, policy: PolicySet) -> PreparedAuthz:
        """Every route's plan for ``policy``, not yet current. Any thread; PolicyError (file:line)
        when a ``custom`` plugin cannot be imported: the version is refused, nothing changes."""
        return build_version(policy, self.failed_keys)

    def commit(self, prepared: PreparedAuthz) -> None:
        """Make a prepared version current (one assignment: a request sees one whole version)."""
        self._current = prepared
        log.info("authz plans applied", version=prepared.version, routes=len(prepared.routes))

    def plan_for(self, route: str) -> RoutePlan | None:
        current = self._current
        return current.routes.get(route) if current is not None else None

    def decide(self, request: AuthRequest) -> Decision | Awaitable[Decision]:
        """A Decision, or an awaitable of one when the route's plan calls an async plugin."""
        started = time.perf_counter_ns()
        current = self._current
        if current is None:
            return self._finish(None, request, _NOT_READY, started, False)
        plan = current.routes.get(request.route)
        if plan is None:
            return self._finish(None, request, _UNKNOWN_ROUTE, started, False)
        if plan.is_async:
            return self._decide_async(current, plan, request, started)
        path = normalize_path(request.path)
        outcome = _Outcome()
        for policy in plan.policies:
            identity: Resolution = None
            for source in policy.sources:
                identity = source(request)  # type: ignore[assignment]
                if identity is not None:
                    break
            if not self._judge(current, plan, policy, request, path, identity, outcome):
                break
        decision = self._count(plan, outcome.result())
        if not isinstance(decision, Decision):
            return self._finish_later(plan, request, decision, started, outcome.dry_run_denied)
        return self._finish(plan, request, decision, started, outcome.dry_run_denied)

    def _count(self, plan: RoutePlan, decision: Decision) -> Decision | Awaitable[Decision]:
        """The decision after counting an admitted consumer's quota (no quota: unchanged)."""
        if self.quota is None or not decision.consumer or not decision.allowed:
            return decision
        return self.quota(plan.route, decision)

    async def _finish_later(
        self, plan: RoutePlan, request: AuthRequest, counted: Awaitable[Decision], started: int, dry_run: bool
    ) -> Decision:
        return self._finish(plan, request, await counted, started, dry_run)

    async def _decide_async(
        self, current: Version, plan: RoutePlan, request: AuthRequest, started: int
    ) -> Decision:
        path = normalize_path(request.path)
        outcome = _Outcome()
        for policy in plan.policies:
            identity: Resolution = None
            for source in policy.sources:
                result = source(request)
                identity = await result if inspect.isawaitable(result) else result
                if identity is not None:
                    break
            if not self._judge(current, plan, policy, request, path, identity, outcome):
                break
        decision = self._count(plan, outcome.result())
        if not isinstance(decision, Decision):
            decision = await decision
        return self._finish(plan, request, decision, started, outcome.dry_run_denied)

    def _judge(
        self,
        current: Version,
        plan: RoutePlan,
        policy: PolicyPlan,
        request: AuthRequest,
        path: str,
        identity: Resolution,
        outcome: _Outcome,
    ) -> bool:
        """Apply one policy's verdict to ``outcome``; False stops (an enforced denial)."""
        denial: Decision | None = None
        if identity is None:
            denial = deny(401, "missing credentials", (("www-authenticate", policy.challenge),))
        elif isinstance(identity, Failure):
            extra = (
                (("www-authenticate", policy.challenge_error),)
                if identity.status == 401
                else (("retry-after", str(int(REFILL_SECONDS))),)
                if identity.status == 429
                else ()
            )
            denial = deny(identity.status, identity.reason, extra)
        else:
            denial = self._authorize(current, plan, policy, request, path, identity)
        if denial is None:
            assert isinstance(identity, Identity)
            outcome.admit(identity, self._plan_of(current, plan.route, identity))
            return True
        if policy.dry_run:
            outcome.dry_run_denied = True
            log.info(
                "authz dry-run denial",
                route=plan.route,
                policy=policy.name,
                consumer=identity.name if isinstance(identity, Identity) else "",
                status=denial.status,
                reason=denial.reason,
            )
            return True
        outcome.denial = denial
        return False

    def _authorize(
        self,
        current: Version,
        plan: RoutePlan,
        policy: PolicyPlan,
        request: AuthRequest,
        path: str,
        identity: Identity,
    ) -> Decision | None:
        # A team's Consumers call only that team's Routes (platform Consumers call any route).
        consumer_team = team_of_name(identity.consumer.name) if identity.consumer else None
        if consumer_team is not None and consumer_team != team_of_name(plan.route):
            return deny(
                403, f"consumer of team {consumer_team}: not a caller of this route", consumer=identity.name
            )
        subscriptions = current.subscriptions.get(identity.consumer.name) if identity.consumer else None
        if subscriptions is not None:
            grant = subscriptions.get(plan.route)
            status = grant.status if grant is not None else None
            if status == "pending":
                return deny(403, "subscription pending approval", consumer=identity.name)
            if status == "revoked":
                return deny(403, "subscription revoked", consumer=identity.name)
            if status != "approved":
                return deny(403, "no subscription to this route", consumer=identity.name)
        if not policy.rules:
            return None  # authentication only: any known caller may pass
        for rule in policy.rules:
            if rule.matches(request, path, identity):
                return None if rule.allow else deny(403, "denied by rule", consumer=identity.name)
        return deny(403, "no rule allows this request", consumer=identity.name)

    @staticmethod
    def _plan_of(current: Version, route: str, identity: Identity) -> str | None:
        """The plan limits count against: an Api subscription's plan on its routes, else the
        Consumer's."""
        if identity.consumer is None:
            return identity.plan
        grant = current.subscriptions.get(identity.consumer.name, {}).get(route)
        if grant is not None and grant.plan is not None:
            return grant.plan
        return identity.plan

    def _finish(
        self, plan: RoutePlan | None, request: AuthRequest, decision: Decision, started: int, dry_run: bool
    ) -> Decision:
        verdict = "allow" if decision.allowed else "deny"
        if plan is not None:
            plan.count("dry_run_deny" if dry_run and decision.allowed else verdict)
        _decision_log(
            request.route,
            decision.consumer,
            verdict,
            decision.status,
            decision.reason,
            dry_run,
            (time.perf_counter_ns() - started) // 1000,
        )
        return decision


class _Outcome:
    __slots__ = ("denial", "dry_run_denied", "headers", "identity", "plan")

    def __init__(self) -> None:
        self.denial: Decision | None = None
        self.dry_run_denied = False
        self.identity: Identity | None = None
        self.plan: str | None = None
        self.headers: list[tuple[str, str]] = []

    def admit(self, identity: Identity, plan: str | None) -> None:
        if self.identity is None:
            self.identity = identity
            self.plan = plan
        self.headers.extend(identity.headers)

    def result(self) -> Decision:
        if self.denial is not None:
            return self.denial
        identity = self.identity
        if identity is None:  # every policy was a dry-run denial
            return DRY_RUN
        if not self.headers:
            return allowed(identity.name, self.plan)
        headers = tuple(dict([(CONSUMER_HEADER, identity.name), *self.headers]).items())
        return Decision(status=200, reason="allowed", consumer=identity.name, plan=self.plan, headers=headers)
