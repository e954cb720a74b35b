"""Consumer quotas counted inside the ext_authz decision: one Python call per request, not two.

When a route has an AuthPolicy the decision service decides and global limits keyed by consumer
or plan, the compiler sends those limits' descriptors nowhere (see
:mod:`waypost.xds.compiler.ratelimit`): the decision that admits a consumer counts its quota
here, against the RLS's own counters and store (:func:`~waypost.filters.ratelimit.limiter.consumer_quota`),
and answers 429 with the RLS's headers (``ratelimit-limit/remaining/reset``, ``retry-after``)
or lets the request through with the ``ratelimit-*`` headers for the client's response. With
Redis this is one round trip per decision, so counts stay exact across replicas.

Only admitted consumers are counted: no credential, a denial, or a dry-run denial (no consumer
named) counts nothing, as on the RLS path where the descriptor needs the consumer metadata.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable

from waypost.filters.authz.decision import Decision
from waypost.filters.ratelimit.limiter import Limiter, Verdict, consumer_quota

__all__ = ["ConsumerQuota", "limited"]

_EMPTY = b""


@functools.lru_cache(maxsize=4096)
def limited(headers: tuple[tuple[str, str], ...], consumer: str) -> Decision:
    """The 429 the RLS path gives: its headers, no body."""
    return Decision(status=429, reason="rate limited", consumer=consumer, headers=headers, body=_EMPTY)


class ConsumerQuota:
    """Counts an admitted consumer's request; given to :class:`~waypost.filters.authz.core.AuthzCore`."""

    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter

    def __call__(self, route: str, decision: Decision) -> Decision | Awaitable[Decision]:
        verdict = consumer_quota(self.limiter, route, decision.consumer, decision.plan)
        if verdict is None:
            return decision
        if isinstance(verdict, Verdict):
            return _apply(verdict, decision)
        return self._later(verdict, decision)

    async def _later(self, verdict: Awaitable[Verdict], decision: Decision) -> Decision:
        return _apply(await verdict, decision)


def _apply(verdict: Verdict, decision: Decision) -> Decision:
    if not verdict.allowed:
        return limited(verdict.headers, decision.consumer)
    if not verdict.headers:
        return decision
    return Decision(
        status=decision.status,
        reason=decision.reason,
        consumer=decision.consumer,
        plan=decision.plan,
        headers=decision.headers,
        client_headers=verdict.headers,
    )
