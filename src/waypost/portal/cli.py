"""The portal's command-line hooks: ``waypost portal``, and ``--portal-*`` on ``waypost serve``.

Kept here so :mod:`waypost.cli` only calls in: the flags, their options, and the standalone run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Any

from waypost.portal.options import PortalOptions

__all__ = ["add_portal_command", "add_serve_arguments", "run_portal_command", "serve_portal_options"]

DEFAULT_PORT = 9904


def _repo_arguments(parser: argparse.ArgumentParser, prefix: str) -> None:
    parser.add_argument(
        f"--{prefix}repo",
        dest="portal_repo",
        metavar="URL",
        help="git upstream the portal pushes to (default: the policy checkout's upstream)",
    )
    parser.add_argument(f"--{prefix}branch", dest="portal_branch", help="the served branch")
    parser.add_argument(
        f"--{prefix}subdir", dest="portal_subdir", help="the policy directory inside the repository"
    )
    parser.add_argument(
        f"--{prefix}https-only",
        dest="portal_https_only",
        action="store_true",
        help="send session cookies over HTTPS only (the portal is behind TLS)",
    )
    parser.add_argument(
        f"--{prefix}workdir",
        dest="portal_workdir",
        type=Path,
        help="the portal's own clone (default: a temp dir)",
    )


def add_serve_arguments(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--portal-port", type=int, help="also serve the developer portal on this port")
    _repo_arguments(serve, "portal-")


def add_portal_command(commands: Any) -> None:
    portal = commands.add_parser("portal", help="run only the developer portal")
    portal.add_argument(
        "--policies", type=Path, help="a checkout of the policy repository (for its upstream)"
    )
    portal.add_argument("--host", default="0.0.0.0")
    portal.add_argument("--port", type=int, default=DEFAULT_PORT)
    portal.add_argument("--redis", metavar="URL", help="the rate-limit counters, for usage and quota pages")
    portal.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    portal.add_argument("--log-format", choices=("json", "console"))
    _repo_arguments(portal, "")


def serve_portal_options(args: argparse.Namespace) -> PortalOptions | None:
    if args.portal_port is None:
        return None
    return PortalOptions(
        port=args.portal_port,
        host=args.host,
        repo=args.portal_repo,
        branch=args.portal_branch,
        subdir=args.portal_subdir,
        policies=args.policies,
        workdir=args.portal_workdir,
        https_only=args.portal_https_only,
    )


def run_portal_command(args: argparse.Namespace) -> int:
    from waypost.log import configure_logging

    if args.policies is None and args.portal_repo is None:
        raise argparse.ArgumentTypeError("give --repo (the policy repository's git URL) or --policies")
    configure_logging(args.log_level, json=None if args.log_format is None else args.log_format == "json")
    options = PortalOptions(
        port=args.port,
        host=args.host,
        repo=args.portal_repo,
        branch=args.portal_branch,
        subdir=args.portal_subdir,
        policies=args.policies,
        workdir=args.portal_workdir,
        https_only=args.portal_https_only,
    )
    asyncio.run(_standalone(options, args.redis))
    return 0


async def _standalone(options: PortalOptions, redis: str | None) -> None:
    from waypost.filters.ratelimit.limiter import Limiter
    from waypost.filters.ratelimit.store import RedisStore
    from waypost.portal.server import start_portal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    limiter = None
    if redis is not None:
        # The counters the fleet's rate-limit service writes in Redis, read through a Limiter.
        limiter = Limiter(RedisStore(redis))
    running = await start_portal(options, limiter=limiter, owns_limiter=True)
    try:
        await stop.wait()
    finally:
        await running.stop()
        if limiter is not None:
            await limiter.store.close()
