"""The long-running commands: serve, authz and ratelimit (options from flags, then the event loop)."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Coroutine
from typing import Any

from waypost.cli.analytics import analytics_options
from waypost.cli.flags import (
    counter_options,
    decision_limits,
    exposure,
    ratelimit_options,
)

__all__ = ["authz_command", "ratelimit_command", "run_loop", "serve_command"]


def serve_command(args: argparse.Namespace) -> int:
    from waypost.log import configure_logging
    from waypost.portal.cli import serve_portal_options
    from waypost.server.app import ServeOptions, serve
    from waypost.server.decisions import DecisionOptions

    xds_tls = None
    if args.xds_cert is not None or args.xds_key is not None or args.xds_ca is not None:
        from waypost.xds.security import XdsTls

        if args.xds_cert is None or args.xds_key is None:
            raise argparse.ArgumentTypeError("--xds-cert and --xds-key go together (and --xds-ca needs both)")
        for path in (args.xds_cert, args.xds_key, args.xds_ca):
            if path is not None and not path.is_file():
                raise argparse.ArgumentTypeError(f"{path}: no such file")
        xds_tls = XdsTls(cert=args.xds_cert, key=args.xds_key, client_ca=args.xds_ca)
    # serve runs the decision services itself when the policy needs them, unless switched off.
    admin_auth, peers = exposure(args, admin=True, decision=not (args.no_authz and args.no_ratelimit))
    options = ServeOptions(
        admin_host=args.admin_host,
        admin_auth=admin_auth,
        working_tree=args.working_tree,
        state_dir=args.state_dir,
        allow_plaintext_secrets=args.allow_plaintext_secrets,
        policies=args.policies,
        host=args.host,
        xds_port=args.xds_port,
        admin_port=args.admin_port,
        watch=not args.no_watch,
        git_pull=args.git_pull,
        debounce=args.reload_debounce,
        xds_tls=xds_tls,
        decisions=DecisionOptions(
            host=args.host,
            advertise_address=args.advertise_address,
            authz=not args.no_authz,
            authz_port=args.authz_port,
            authz_http_port=args.authz_http_port,
            authz_grpcio=args.authz_grpcio,
            limits=decision_limits(args),
            ratelimit=None if args.no_ratelimit else ratelimit_options(args, peers),
            peers=peers,
            authz_addresses=tuple(args.authz_address),
            authz_http_addresses=tuple(args.authz_http_address),
            ratelimit_addresses=tuple(args.ratelimit_address),
            counters=counter_options(args),
        ),
        registry_redis=args.redis,
        portal=serve_portal_options(args),
        analytics=analytics_options(args),
    )
    # Only once the arguments are known good: a usage error leaves logging as it was.
    configure_logging(args.log_level, json=None if args.log_format is None else args.log_format == "json")
    try:
        import uvloop

        uvloop.run(serve(options))
    except ImportError:
        asyncio.run(serve(options))
    return 0


def authz_command(args: argparse.Namespace, argv: list[str]) -> int:
    from waypost.log import configure_logging
    from waypost.server.authz import AuthzOptions, run_authz

    if args.workers < 1:
        raise argparse.ArgumentTypeError("--workers must be at least 1")
    admin_auth, peers = exposure(args, admin=args.admin_port is not None, decision=True)
    configure_logging(args.log_level, json=None if args.log_format is None else args.log_format == "json")
    # The children re-run this command line with --workers 1 (argparse keeps the last value).
    options = AuthzOptions(
        policies=args.policies,
        host=args.host,
        port=args.port,
        http_port=args.http_port,
        admin_port=args.admin_port,
        watch=not args.no_watch,
        workers=args.workers,
        working_tree=args.working_tree,
        admin_host=args.admin_host,
        admin_auth=admin_auth,
        peers=peers,
        grpcio=args.authz_grpcio,
        limits=decision_limits(args),
        counters=counter_options(args),
    )
    return run_authz(options, argv)


def ratelimit_command(args: argparse.Namespace) -> int:
    from waypost.log import configure_logging
    from waypost.server.ratelimit import StandaloneOptions, serve_ratelimit

    admin_auth, peers = exposure(args, admin=True, decision=True)
    configure_logging(args.log_level, json=None if args.log_format is None else args.log_format == "json")
    rl = ratelimit_options(args, peers)
    run_loop(
        serve_ratelimit(
            StandaloneOptions(
                policies=args.policies,
                ratelimit=rl,
                admin_port=args.admin_port,
                watch=not args.no_watch,
                working_tree=args.working_tree,
                admin_host=args.admin_host,
                admin_auth=admin_auth,
            )
        )
    )
    return 0


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)
