"""Mounts call analytics on the admin port: ``/analytics`` (the page), ``/analytics.json``
(``?range=15m&team=&gateway=&api=&route=&consumer=``), ``/analytics/live.json`` (the last seconds, for
``waypost top``), ``/analytics/fleet.json`` (from Prometheus, with ``--prometheus-url``) and
``/analytics/plotly.min.js`` (the charting library, from the installed plotly package)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from waypost.analytics.page import PAGE
from waypost.analytics.service import Analytics, Reply, plotly_js
from waypost.server.admin import AdminServer, Response

__all__ = ["install_analytics"]


def _json(
    view: Callable[[Mapping[str, str]], Awaitable[Reply]],
) -> Callable[[Mapping[str, str]], Awaitable[Response]]:
    async def handler(params: Mapping[str, str]) -> Response:
        status, body = await view(params)
        return Response.json(status, body)

    return handler


def install_analytics(admin: AdminServer, analytics: Analytics) -> None:
    page, script = PAGE.encode(), plotly_js()
    admin.route("/analytics", lambda: Response(200, page, "text/html; charset=utf-8"))
    admin.route("/analytics/plotly.min.js", lambda: Response(200, script, "text/javascript"))
    admin.route_query("/analytics.json", _json(analytics.figures_response))
    admin.route_query("/analytics/live.json", _json(analytics.live_response))
    admin.route_query("/analytics/fleet.json", _json(analytics.fleet_response))
