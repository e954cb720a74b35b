"""The command line of call analytics: ``waypost serve``'s analytics flags and ``waypost top``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from waypost.analytics.query import parse_range
from waypost.analytics.store import Retention

if TYPE_CHECKING:
    from waypost.analytics import AnalyticsOptions

__all__ = ["add_analytics_arguments", "add_top_parser", "analytics_options", "run_top"]

_RETENTION_NAMES = ("second", "minute", "hour", "day")


def _retention(text: str) -> Retention:
    """``second=1h,minute=7d,hour=90d,day=730d`` (any subset; the rest keep their default)."""
    values: dict[str, int] = {}
    for part in text.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep or name not in _RETENTION_NAMES:
            raise argparse.ArgumentTypeError(
                f"{part!r}: write NAME=DURATION with NAME one of {', '.join(_RETENTION_NAMES)}"
            )
        try:
            values[name] = parse_range(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc
    return Retention(**values)


def add_analytics_arguments(serve: argparse.ArgumentParser) -> None:
    group = serve.add_argument_group("call analytics")
    group.add_argument(
        "--analytics-port",
        type=int,
        metavar="PORT",
        help="collect Envoy's access logs on this gRPC port (0: any free port), reached at "
        "--advertise-address; Gateways stream theirs here unless analytics.enabled is false",
    )
    group.add_argument(
        "--data-dir",
        type=Path,
        default=Path("waypost-data"),
        help="where the analytics store (analytics.sqlite3) lives (default ./waypost-data)",
    )
    group.add_argument(
        "--analytics-retention",
        type=_retention,
        default=Retention(),
        metavar="SPEC",
        help="how long each resolution is kept, e.g. second=1h,minute=7d,hour=90d,day=730d (the default)",
    )
    group.add_argument(
        "--analytics-top-consumers",
        type=int,
        default=20,
        metavar="N",
        help="consumers per route with figures of their own; the rest count as 'other' (default 20)",
    )
    group.add_argument(
        "--prometheus-url",
        metavar="URL",
        help="a Prometheus scraping every replica's /metrics: the dashboard's fleet-wide figures",
    )


def analytics_options(args: argparse.Namespace) -> AnalyticsOptions | None:
    """The ``AnalyticsOptions`` of ``waypost serve``'s arguments, or None without --analytics-port."""
    from waypost.analytics import AnalyticsOptions

    if args.analytics_port is None:
        if args.prometheus_url:
            raise argparse.ArgumentTypeError("--prometheus-url needs --analytics-port")
        return None
    if args.analytics_top_consumers < 1:
        raise argparse.ArgumentTypeError("--analytics-top-consumers must be at least 1")
    return AnalyticsOptions(
        port=args.analytics_port,
        data_dir=args.data_dir,
        retention=args.analytics_retention,
        top_consumers=args.analytics_top_consumers,
        prometheus_url=args.prometheus_url,
    )


def add_top_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    top = commands.add_parser("top", help="live call analytics of a running waypost, in the terminal")
    top.add_argument(
        "--admin", default="http://127.0.0.1:9902", metavar="URL", help="waypost's admin URL (default :9902)"
    )
    top.add_argument("--seconds", type=int, default=10, help="window of the live figures (default 10)")
    top.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    top.add_argument("--once", action="store_true", help="print one frame and exit")


def run_top(args: argparse.Namespace) -> int:
    from waypost.analytics.top import run

    return run(args.admin, seconds=args.seconds, interval=args.interval, once=args.once)
