"""The rate-limit decision: descriptors in, a verdict with its headers out.

Transport-free, so the RLS gRPC service and the ext_authz service share it: the latter counts a
consumer's quota in the call it already makes (:func:`consumer_quota`) and answers 429 itself,
sparing Envoy a second Python call.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from waypost import contract as d
from waypost.filters.ratelimit.metrics import (
    RATELIMIT_DECISIONS,
    RATELIMIT_OVER_LIMIT,
    RATELIMIT_SHADOW_DENIALS,
    RATELIMIT_STORE_ERRORS,
    RATELIMIT_STORE_OUTAGES,
    RATELIMIT_STORE_UP,
)
from waypost.filters.ratelimit.store import Count, CounterStore, StoreUnavailable
from waypost.filters.ratelimit.table import LimitRule, RateLimitTable, build_table
from waypost.log import get_logger
from waypost.policies.model import PolicySet

__all__ = [
    "DescriptorResult",
    "Limiter",
    "Verdict",
    "check_consumer_quota",
    "consumer_quota",
    "consumer_usage",
]

log = get_logger("waypost.ratelimit")

Entries = Sequence[tuple[str, str]]
_Planned = tuple[int, LimitRule, int, str]
"""(descriptor index, rule, requests allowed, unit) of one counted descriptor."""
_Prepared = tuple[int, list[_Planned], list[tuple[str, int]]]
"""(descriptors, their counted plan, the counters and windows to hit) of one decision."""
_QUOTA_PLANS = 10_000

# Bound once: a labels() lookup per decision costs more than the decision's arithmetic.
_DECIDED_OK = RATELIMIT_DECISIONS.labels("ok")
_DECIDED_OVER = RATELIMIT_DECISIONS.labels("over_limit")
_DECIDED_SHADOW = RATELIMIT_DECISIONS.labels("shadow_over_limit")


class DescriptorResult(NamedTuple):
    # A NamedTuple, not a frozen dataclass: one is built per counted descriptor per decision, and
    # a frozen dataclass's __init__ costs several times a tuple's.
    over_limit: bool
    """Over the limit and enforced (shadow denials are False here)."""
    limit: int
    unit: str
    remaining: int
    reset: float
    counted: bool = True


_UNCOUNTED = DescriptorResult(False, 0, "minute", 0, 0.0, counted=False)


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    results: tuple[DescriptorResult, ...]
    headers: tuple[tuple[str, str], ...] = field(default=())
    store_error: bool = False


class Limiter:
    """Counts descriptors against the current policy's limits.

    A policy version arrives in two steps (the policy runtime's appliers): :meth:`prepare` builds
    its table (any thread), :meth:`commit` swaps it in (one assignment, on the event loop).
    """

    def __init__(self, store: CounterStore, *, fail_closed: bool = False) -> None:
        self.store = store
        self.fail_closed = fail_closed
        self._table: RateLimitTable | None = None
        self._store_down = False
        self._shadow_logged: dict[str, float] = {}
        # (route, consumer, plan) -> what a consumer quota counts, for the table it was built from.
        self._quota_plans: dict[tuple[str, str, str | None], _Prepared | None] = {}
        self._quota_table: RateLimitTable | None = None

    @property
    def table(self) -> RateLimitTable | None:
        return self._table

    def prepare(self, policy: PolicySet) -> RateLimitTable:
        return build_table(policy)

    def commit(self, table: RateLimitTable) -> None:
        self._table = table

    def apply(self, policy: PolicySet) -> None:
        self.commit(self.prepare(policy))

    async def decide(self, descriptors: Sequence[Entries], hits: int = 1) -> Verdict:
        plan, counters = self._plan(descriptors)
        return await self._count((len(descriptors), plan, counters), hits)

    def decide_now(self, descriptors: Sequence[Entries], hits: int = 1) -> Verdict | None:
        """:meth:`decide` without awaiting, for a store that counts synchronously (in process);
        None when the store needs I/O (then await :meth:`decide`)."""
        hit_now = getattr(self.store, "hit_sync", None)
        if hit_now is None:
            return None
        plan, counters = self._plan(descriptors)
        return self._count_now(hit_now, (len(descriptors), plan, counters), hits)

    def consumer_quota(
        self, route: str, consumer: str, plan: str | None, hits: int = 1
    ) -> Verdict | Awaitable[Verdict] | None:
        """See :func:`consumer_quota`. What the quota counts is resolved once per policy version,
        route, consumer and plan (the descriptors, their rules and counter keys), not per request."""
        prepared = self._quota_plan(route, consumer, plan)
        if prepared is None:
            return None
        hit_now = getattr(self.store, "hit_sync", None)
        if hit_now is not None:
            return self._count_now(hit_now, prepared, hits)
        return self._count(prepared, hits)

    def _quota_plan(self, route: str, consumer: str, plan: str | None) -> _Prepared | None:
        table = self._table
        if table is None:
            return None
        cache = self._quota_plans
        if self._quota_table is not table:
            cache.clear()
            self._quota_table = table
        key = (route, consumer, plan)
        if key in cache:
            return cache[key]
        limits = table.consumer_limits.get(route)
        prepared: _Prepared | None = None
        if limits:
            descriptors = [_consumer_entries(limit, consumer, plan) for limit in limits]
            planned, counters = self._plan(descriptors)
            prepared = (len(descriptors), planned, counters)
        if len(cache) >= _QUOTA_PLANS:
            cache.clear()
        cache[key] = prepared
        return prepared

    def _count_now(self, hit_now: Callable[..., list[Count]], prepared: _Prepared, hits: int) -> Verdict:
        size, plan, counters = prepared
        if not counters:
            _DECIDED_OK.inc()
            return Verdict(True, (_UNCOUNTED,) * size)
        return self._finish(plan, hit_now(counters, hits), size)

    async def _count(self, prepared: _Prepared, hits: int) -> Verdict:
        size, plan, counters = prepared
        if not counters:
            _DECIDED_OK.inc()
            return Verdict(True, (_UNCOUNTED,) * size)
        try:
            counts = await self.store.hit(counters, hits)
        except StoreUnavailable as exc:
            return self._store_failed(exc, size)
        return self._finish(plan, counts, size)

    async def peek(self, descriptors: Sequence[Entries]) -> tuple[DescriptorResult, ...]:
        """Where each descriptor's counter stands, counting nothing (for usage pages, not
        decisions: no metrics). Raises StoreUnavailable when the store cannot answer."""
        plan, counters = self._plan(descriptors)
        results = [_UNCOUNTED] * len(descriptors)
        if not counters:
            return tuple(results)
        counts = await self.store.hit(counters, 0)
        for (index, rule, requests, unit), count in zip(plan, counts, strict=True):
            results[index] = DescriptorResult(
                over_limit=count.used > requests and not rule.shadow,
                limit=requests,
                unit=unit,
                remaining=max(0, requests - int(count.used)),
                reset=count.reset,
            )
        return tuple(results)

    def _plan(self, descriptors: Sequence[Entries]) -> tuple[list[_Planned], list[tuple[str, int]]]:
        table = self.table
        plan: list[_Planned] = []
        counters: list[tuple[str, int]] = []
        if table is None:
            return plan, counters
        for index, entries in enumerate(descriptors):
            found = _resolve(table, entries)
            if found is not None:
                rule, requests, window, unit, counter = found
                plan.append((index, rule, requests, unit))
                counters.append((counter, window))
        return plan, counters

    def _finish(self, plan: list[_Planned], counts: Sequence[Count], size: int) -> Verdict:
        if self._store_down:
            self._store_down = False
            RATELIMIT_STORE_UP.set(1)
            log.warning("rate-limit store is back; limiting resumes")
        results = [_UNCOUNTED] * size
        allowed = True
        shadow_over = False
        for (index, rule, requests, unit), count in zip(plan, counts, strict=True):
            over = count.used > requests
            if over:
                if rule.shadow:
                    shadow_over = True
                    RATELIMIT_SHADOW_DENIALS.labels(rule.policy).inc()
                    self._log_shadow(rule, requests)
                else:
                    allowed = False
                    RATELIMIT_OVER_LIMIT.labels(rule.policy).inc()
            results[index] = DescriptorResult(
                over_limit=over and not rule.shadow,
                limit=requests,
                unit=unit,
                remaining=max(0, requests - int(count.used)),
                reset=count.reset,
            )
        if not allowed:
            _DECIDED_OVER.inc()
        elif shadow_over:
            _DECIDED_SHADOW.inc()
        else:
            _DECIDED_OK.inc()
        return Verdict(allowed, tuple(results), headers=rate_limit_headers(results, allowed))

    def _log_shadow(self, rule: LimitRule, requests: int) -> None:
        # At most one line per policy per second: the metric has the exact count.
        now = time.monotonic()
        if now - self._shadow_logged.get(rule.policy, -1.0) >= 1.0:
            self._shadow_logged[rule.policy] = now
            log.info("rate limit would deny (shadow)", policy=rule.policy, by=rule.by, limit=requests)

    def _store_failed(self, exc: StoreUnavailable, size: int) -> Verdict:
        results = (_UNCOUNTED,) * size
        RATELIMIT_STORE_ERRORS.inc()
        if not self._store_down:
            # Once per outage: a dead Redis under load must not flood the log.
            self._store_down = True
            RATELIMIT_STORE_UP.set(0)
            RATELIMIT_STORE_OUTAGES.inc()
            log.error(
                "rate-limit store unreachable",
                error=str(exc),
                mode="fail closed" if self.fail_closed else "fail open",
            )
        RATELIMIT_DECISIONS.labels("store_error").inc()
        if self.fail_closed:
            return Verdict(False, results, headers=(("retry-after", "1"),), store_error=True)
        return Verdict(True, results, store_error=True)


def _resolve(table: RateLimitTable, entries: Entries) -> tuple[LimitRule, int, int, str, str] | None:
    """(rule, requests, window seconds, unit, counter) for one descriptor; None: nothing counts it."""
    if not entries or entries[0][0] != d.LIMIT_KEY:
        return None
    rule = table.rules.get(entries[0][1])
    if rule is None:
        return None
    values = []
    plan = None
    for key, value in entries[1:]:
        if key == d.PLAN_KEY:
            plan = value
        else:
            values.append(value)
    if plan is not None and plan in rule.plans:
        chosen = rule.plans[plan]
        return rule, chosen.requests, chosen.window, chosen.unit, f"{chosen.counter}|{'|'.join(values)}"
    if rule.requests is None:
        return None
    return rule, rule.requests, rule.window, rule.unit, f"{rule.counter}|{'|'.join(values)}"


def rate_limit_headers(results: Sequence[DescriptorResult], allowed: bool) -> tuple[tuple[str, str], ...]:
    """``ratelimit-limit/remaining/reset`` of the tightest counted limit; ``retry-after`` on a 429."""
    counted = [r for r in results if r.counted]
    if not counted:
        return ()
    if not allowed:
        # The caller may retry once every exceeded limit has reset.
        over = [r for r in counted if r.over_limit]
        tightest = max(over, key=lambda r: r.reset)
    else:
        tightest = min(counted, key=lambda r: (r.remaining, -r.reset))
    reset = str(max(1, int(tightest.reset + 0.999)))
    headers = [
        ("ratelimit-limit", str(tightest.limit)),
        ("ratelimit-remaining", str(tightest.remaining)),
        ("ratelimit-reset", reset),
    ]
    if not allowed:
        headers.append(("retry-after", reset))
    return tuple(headers)


def consumer_quota(
    limiter: Limiter, route: str, consumer: str, plan: str | None = None, hits: int = 1
) -> Verdict | Awaitable[Verdict] | None:
    """Count one request of ``consumer`` on ``route`` against the route's consumer and plan limits.

    For the ext_authz decision: it knows the consumer already, so it answers 429 itself with
    ``verdict.headers`` (the headers the RLS path sets) and Envoy makes one call, not two. The
    counters are the RLS path's, so both paths share one quota. A Verdict when the store counts in
    process, an awaitable of one when it needs I/O (Redis: one round trip), None when the route
    has no such limit.
    """
    return limiter.consumer_quota(route, consumer, plan, hits)


def _consumer_entries(limit: str, consumer: str, plan: str | None) -> list[tuple[str, str]]:
    # The descriptor Envoy would have sent the RLS (see compiler.ratelimit.global_actions).
    entries = [(d.LIMIT_KEY, limit), (d.CONSUMER_KEY, consumer)]
    if plan is not None:
        entries.append((d.PLAN_KEY, plan))
    return entries


async def check_consumer_quota(
    limiter: Limiter, route: str, consumer: str, plan: str | None = None, hits: int = 1
) -> Verdict:
    """:func:`consumer_quota`, always awaited; allowed when the route has no consumer limit."""
    verdict = consumer_quota(limiter, route, consumer, plan, hits)
    if verdict is None:
        return Verdict(True, ())
    return await verdict if inspect.isawaitable(verdict) else verdict


async def consumer_usage(
    limiter: Limiter, route: str, consumer: str, plan: str | None = None
) -> tuple[DescriptorResult, ...]:
    """Where ``consumer`` stands against ``route``'s consumer limits (the same counters Envoy's
    requests count on), counting nothing: the developer portal's usage and remaining quota."""
    table = limiter.table
    limits = table.consumer_limits.get(route) if table is not None else None
    if not limits:
        return ()
    descriptors = [_consumer_entries(limit, consumer, plan) for limit in limits]
    return tuple(r for r in await limiter.peek(descriptors) if r.counted)
