"""The fleet dashboard on the admin port: ``/`` (one self-contained HTML page) and
``/dashboard.json`` (what the page polls).

The page answers an operator's first questions at a glance: which policy version is live (commit
and content hash), did the last change fail to load and why, which Envoys are connected and is
each in sync, which rejected a push (NACK) and with what error, and how many decisions per
second the ext_authz and rate-limit services make, with how many end in a 4xx or a 429.

Rates come from a ring buffer of counter samples kept here, server side, every few seconds, so a
freshly opened page shows the last minutes at once. Decision counters are read by name from the
process's Prometheus registry; ``waypost_authz_decisions_total`` and
``waypost_ratelimit_decisions_total`` are the contract with the decision services (any labels),
and a counter that does not exist reads as 0. A sample counts as denied (4xx) or limited (429)
when one of its label values says so (see ``_DENIED`` / ``_LIMITED``).

``?team=NAME`` narrows both to one team (see :mod:`waypost.server.team_views`); a name that is
not a Team of the serving version is a 400 with a JSON body listing the teams.

No CDN, no external asset: the page must work on an air-gapped admin network.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry

from waypost.policies.model import PolicySet
from waypost.policies.teams import unknown_team
from waypost.server.admin import AdminServer, Response
from waypost.server.dashboard_page import PAGE
from waypost.server.team_views import team_status, team_summary

__all__ = ["Dashboard", "Sample"]

AUTHZ_METRIC = "waypost_authz_decisions_total"
RATELIMIT_METRIC = "waypost_ratelimit_decisions_total"
NACK_METRIC = "waypost_xds_nacks_total"
PUSH_METRIC = "waypost_xds_pushes_total"

# Label values (lower-cased) that mark a decision as a refusal. Colleagues' services label their
# counters e.g. {decision="deny"} or {code="403"}; both are understood.
_DENIED = frozenset({"deny", "denied", "unauthorized", "unauthenticated", "forbidden", "401", "403"})
_LIMITED = frozenset({"over_limit", "overlimit", "limited", "deny", "denied", "rejected", "429"})

DEFAULT_INTERVAL = 5.0
DEFAULT_WINDOW = 600.0
"""Seconds of history the chart shows."""


@dataclass(frozen=True)
class Sample:
    """Counter totals at one instant."""

    t: float
    authz: float = 0.0
    authz_denied: float = 0.0
    ratelimit: float = 0.0
    ratelimit_limited: float = 0.0
    nacks: float = 0.0
    pushes: float = 0.0


def read_counters(registry: CollectorRegistry = REGISTRY, now: float | None = None) -> Sample:
    totals: dict[str, float] = {}

    def add(key: str, value: float) -> None:
        totals[key] = totals.get(key, 0.0) + value

    for family in registry.collect():
        for sample in family.samples:
            name = sample.name
            if name == AUTHZ_METRIC:
                add("authz", sample.value)
                if _marked(sample.labels, _DENIED):
                    add("authz_denied", sample.value)
            elif name == RATELIMIT_METRIC:
                add("ratelimit", sample.value)
                if _marked(sample.labels, _LIMITED):
                    add("ratelimit_limited", sample.value)
            elif name == NACK_METRIC:
                add("nacks", sample.value)
            elif name == PUSH_METRIC:
                add("pushes", sample.value)
    return Sample(t=time.time() if now is None else now, **totals)


def _marked(labels: dict[str, str], values: frozenset[str]) -> bool:
    return any(value.lower() in values for value in labels.values())


def rates(older: Sample, newer: Sample) -> dict[str, float]:
    """Per-second rates between two samples; a counter reset (restart) reads as 0, not negative."""
    span = newer.t - older.t
    if span <= 0:
        return {"decisions": 0.0, "denied": 0.0, "limited": 0.0, "nacks": 0.0, "pushes": 0.0}

    def per_second(a: float, b: float) -> float:
        return round(max(b - a, 0.0) / span, 3)

    return {
        "decisions": per_second(older.authz + older.ratelimit, newer.authz + newer.ratelimit),
        "denied": per_second(older.authz_denied, newer.authz_denied),
        "limited": per_second(older.ratelimit_limited, newer.ratelimit_limited),
        "nacks": per_second(older.nacks, newer.nacks),
        "pushes": per_second(older.pushes, newer.pushes),
    }


class Dashboard:
    """Samples the counters on a timer and serves the page and its JSON."""

    def __init__(
        self,
        status: Callable[[], dict[str, Any]],
        *,
        interval: float | None = None,
        window: float = DEFAULT_WINDOW,
        registry: CollectorRegistry = REGISTRY,
        policy: Callable[[], PolicySet | None] = lambda: None,
    ) -> None:
        self._status = status
        self._policy = policy
        """The serving version: its Teams and what each owns, for ``?team=``."""
        # The env override lets the browser test see a few points within seconds.
        self.interval = interval or _env_interval()
        self._registry = registry
        self._samples: deque[Sample] = deque(maxlen=max(2, int(window / self.interval) + 1))
        self._task: asyncio.Task[None] | None = None
        self._page = PAGE.encode()

    def install(self, admin: AdminServer) -> None:
        admin.route("/", lambda: Response(200, self._page, "text/html; charset=utf-8"))
        admin.route_query("/dashboard.json", self._data_response)

    async def _data_response(self, params: Mapping[str, str]) -> Response:
        team = params.get("team") or None
        if team is None:
            return Response.json(200, self.data())
        policy = self._policy()
        problem = unknown_team(team, policy.teams if policy is not None else ())
        if problem is not None or policy is None:
            return Response.json(400, {"error": problem})
        return Response.json(200, self.data(team_summary(policy, team)))

    def start(self) -> None:
        self.sample()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def sample(self) -> None:
        self._samples.append(read_counters(self._registry))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.sample()

    def series(self) -> list[dict[str, float]]:
        samples = list(self._samples)
        return [{"t": b.t, **rates(a, b)} for a, b in itertools.pairwise(samples)]

    def data(self, team: dict[str, Any] | None = None) -> dict[str, Any]:
        """The page's data; with ``team`` (a :func:`team_summary`), that team's view."""
        status = self._status()
        if team is not None:
            status = team_status(status, team)
        policy = self._policy()
        latest = read_counters(self._registry)
        series = self.series()
        nodes = status.get("nodes", [])
        return {
            "status": status,
            "team": team,
            "teams": sorted(policy.teams) if policy is not None else [],
            "summary": {
                "nodes": len(nodes),
                "in_sync": sum(1 for node in nodes if node_in_sync(node)),
                "nacked": sum(1 for node in nodes if node_nacks(node)),
            },
            "totals": asdict(latest),
            "now": series[-1] if series else rates(latest, latest),
            "series": series,
            "interval": self.interval,
            "metrics": sorted(
                {s.name for f in self._registry.collect() for s in f.samples}
                & {AUTHZ_METRIC, RATELIMIT_METRIC}
            ),
        }


def _env_interval() -> float:
    try:
        value = float(os.environ.get("WAYPOST_DASHBOARD_INTERVAL", DEFAULT_INTERVAL))
    except ValueError:
        return DEFAULT_INTERVAL
    return value if 0 < value <= 3600 else DEFAULT_INTERVAL


def node_in_sync(node: dict[str, Any]) -> bool:
    types = node.get("types") or {}
    return bool(types) and all(state.get("in_sync") for state in types.values())


def node_nacks(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"type": type_name, **state["last_nack"]}
        for type_name, state in (node.get("types") or {}).items()
        if state.get("last_nack")
    ]
