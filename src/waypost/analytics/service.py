"""Call analytics as one service inside ``waypost serve``: collector, aggregator, store, metrics,
anomaly detector, and the admin pages that show them.

Lifecycle: :meth:`Analytics.start` opens the store (reopening the current minute/hour/day),
starts the gRPC collector and a one-second flush task; :meth:`Analytics.stop` flushes once more
and closes everything. A flush closes the past seconds in the aggregator, feeds the closed cells
to the Prometheus collector and the anomaly detector (on the loop), then writes the rows in a
worker thread. A failed write is logged and counted (``waypost_analytics_dropped_total
{reason="write_failed"}``); serving never stops for it.

The JSON views are methods returning a :data:`Reply` (status, body); ``waypost.server.
analytics_pages`` mounts them and the page on the admin port.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import REGISTRY

from waypost.analytics.aggregate import SECOND, Aggregator, consumer_counts
from waypost.analytics.anomaly import AnomalyDetector, WindowCounts
from waypost.analytics.cells import Cell, Key
from waypost.analytics.collector import start_collector
from waypost.analytics.fleet import FleetError, fleet_figures
from waypost.analytics.metrics import DROPPED, AnalyticsMetrics
from waypost.analytics.query import DIMENSIONS, figures, parse_range, resolution_for
from waypost.analytics.routes import route_apis
from waypost.analytics.store import Retention, Store, StoredRow
from waypost.log import get_logger
from waypost.policies.model import PolicySet
from waypost.policies.teams import team_of_name, unknown_team

__all__ = ["Analytics", "AnalyticsOptions", "Reply", "plotly_js"]

log = get_logger("waypost.analytics")

Reply = tuple[int, dict[str, Any]]
"""An HTTP status and the JSON body: the admin server (waypost.server) renders it."""

_LIVE_SECONDS = 60
_PRUNE_EVERY = 60


@dataclass(frozen=True, kw_only=True)
class AnalyticsOptions:
    port: int
    """The collector's gRPC port (0: any free port)."""
    data_dir: Path
    retention: Retention = field(default_factory=Retention)
    top_consumers: int = 20
    """Consumers per route with series of their own; the rest count as ``other``."""
    prometheus_url: str | None = None
    """A Prometheus scraping every replica, for the fleet view."""


class Analytics:
    def __init__(self, options: AnalyticsOptions) -> None:
        self.options = options
        self.aggregator = Aggregator(top_consumers=options.top_consumers)
        self.detector = AnomalyDetector()
        self.metrics = AnalyticsMetrics(self.detector.active, lambda: dict(self.detector.raised_total))
        self.store: Store | None = None
        self.port: int | None = None
        self._live: dict[int, dict[Key, Cell]] = {}
        self._server: grpc.aio.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()
        self._last_prune = 0.0
        self._streaming: list[str] = []
        self._teams: list[str] = []
        """The Teams of the applied policy: what ``team=`` may name."""

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self, host: str) -> int:
        self.store = await asyncio.to_thread(Store, self.options.data_dir)
        now = int(time.time())
        reopened = await asyncio.to_thread(self.store.open_rollups, now)
        self.aggregator.restore((r.resolution, r.start, r.key, r.cell) for r in reopened)
        self.aggregator.plans.update(await asyncio.to_thread(self.store.plans))
        with contextlib.suppress(ValueError):  # already registered (a second serve in-process)
            REGISTRY.register(self.metrics)
        self._server, self.port = await start_collector(self.aggregator, host, self.options.port)
        self._task = asyncio.get_running_loop().create_task(self._run())
        log.info("analytics collecting", port=self.port, store=str(self.store.path), reopened=len(reopened))
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=0.5)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # Everything received so far, the current second included, reaches the store.
        await self.flush(int(time.time()) + 1)
        with contextlib.suppress(ValueError):
            REGISTRY.unregister(self.metrics)
        if self.store is not None:
            await asyncio.to_thread(self.store.close)

    # A policy applier (waypost.server.runtime.PolicyApplier): the route -> Api map of a version.
    name = "analytics"

    async def prepare(self, policy: PolicySet) -> tuple[dict[str, str], list[str], list[str]]:
        streaming = sorted(name for name, gw in policy.gateways.items() if gw.analytics.enabled)
        return route_apis(policy), streaming, sorted(policy.teams)

    def commit(self, prepared: tuple[dict[str, str], list[str], list[str]]) -> None:
        self.aggregator.api_of, self._streaming, self._teams = prepared

    def status(self) -> dict[str, Any]:
        """For /status: where the collector listens, what it holds, which Gateways stream to it."""
        return {
            "collector_port": self.port,
            "store": str(self.store.path) if self.store is not None else None,
            "entries": self.aggregator.entries,
            "gateways": self._streaming,
            "anomalies": [a.as_dict() for a in self.detector.active()],
        }

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(1.0 - time.time() % 1.0 + 0.01)
            await self.flush(int(time.time()))

    async def flush(self, now: int) -> None:
        closed = self.aggregator.flush(now)
        for second, cells in sorted(closed.seconds.items()):
            for key, cell in cells.items():
                self.metrics.add(key, cell)
            counts = {c: WindowCounts(n, e, d) for c, (n, e, d) in consumer_counts(cells).items()}
            for anomaly in self.detector.observe(second, counts):
                log.warning(
                    "analytics anomaly",
                    consumer=anomaly.consumer,
                    kind=anomaly.kind,
                    observed=round(anomaly.observed, 4),
                    baseline=round(anomaly.baseline, 4),
                    detail=anomaly.detail,
                )
            self._live[second] = cells
        for second in [s for s in self._live if s < now - _LIVE_SECONDS]:
            del self._live[second]
        if self.store is None or not closed.rows:
            return
        store, plans = self.store, dict(self.aggregator.plans)
        async with self._write_lock:
            try:
                await asyncio.to_thread(store.write, closed.rows, plans)
                if now - self._last_prune >= _PRUNE_EVERY:
                    self._last_prune = now
                    await asyncio.to_thread(store.prune, now, self.options.retention)
            except Exception as exc:
                DROPPED.labels("write_failed").inc(len(closed.rows))
                log.error("analytics write failed", rows=len(closed.rows), error=str(exc))

    # --- views ----------------------------------------------------------------------------------

    async def figures_response(self, params: Mapping[str, str]) -> Reply:
        try:
            span = parse_range(params.get("range", "15m"))
        except ValueError as exc:
            return (400, {"error": str(exc)})
        unknown = sorted(set(params) - {"range", "team", *DIMENSIONS})
        if unknown:
            return (
                400,
                {"error": f"unknown parameter(s) {unknown}; use range, team, {', '.join(DIMENSIONS)}"},
            )
        problem = self._team_problem(params)
        if problem is not None:
            return (400, {"error": problem})
        filters = {k: params[k] for k in ("team", *DIMENSIONS) if k in params}
        return (200, await self.figures(span, filters))

    def _team_problem(self, params: Mapping[str, str]) -> str | None:
        # A row's team is the prefix of its route's name (``<team>~<route>``, what Envoy logs):
        # fixed when the row is written, so history stays attributed across reloads. Only the
        # current policy's Teams may be named: a typo is a 400, not an empty page.
        return unknown_team(params["team"], self._teams) if "team" in params else None

    async def figures(self, span: int, filters: Mapping[str, str]) -> dict[str, Any]:
        assert self.store is not None
        now = int(time.time())
        resolution = resolution_for(span)
        start = (now - span) - (now - span) % resolution
        rows = await asyncio.to_thread(self.store.rows, resolution, start, now, dict(filters))
        result = figures(
            rows, start=start, end=now, resolution=resolution, filters=filters, plans=self.aggregator.plans
        )
        result["anomalies"] = [a.as_dict() for a in self.detector.active()]
        result["fleet"] = self.options.prometheus_url is not None
        result["teams"] = self._teams
        return result

    async def live_response(self, params: Mapping[str, str]) -> Reply:
        """The last ``seconds`` (default 10) of one-second cells, from memory."""
        try:
            seconds = max(1, min(int(params.get("seconds", "10")), _LIVE_SECONDS))
        except ValueError:
            return (400, {"error": "seconds: a whole number"})
        problem = self._team_problem(params)
        if problem is not None:
            return (400, {"error": problem})
        team = params.get("team")
        now = int(time.time())
        rows = [
            StoredRow(SECOND, s, key, cell)
            for s, cells in self._live.items()
            if s >= now - seconds
            for key, cell in cells.items()
            if team is None or team_of_name(key.route) == team
        ]
        filters = {"team": team} if team is not None else {}
        result = figures(
            rows,
            start=now - seconds,
            end=now,
            resolution=SECOND,
            filters=filters,
            plans=self.aggregator.plans,
        )
        result["anomalies"] = [a.as_dict() for a in self.detector.active()]
        result["entries"] = self.aggregator.entries
        return (200, result)

    async def fleet_response(self, params: Mapping[str, str]) -> Reply:
        if self.options.prometheus_url is None:
            return (404, {"error": "no fleet view: start waypost serve with --prometheus-url"})
        range_text = params.get("range", "15m")
        try:
            parse_range(range_text)
        except ValueError as exc:
            return (400, {"error": str(exc)})
        try:
            data = await asyncio.to_thread(fleet_figures, self.options.prometheus_url, range_text)
        except FleetError as exc:
            return (502, {"error": str(exc)})
        return (200, data)


def plotly_js() -> bytes:
    """plotly.js as the installed ``plotly`` package ships it."""
    return resources.files("plotly").joinpath("package_data/plotly.min.js").read_bytes()
