"""Flag groups several commands share, and the options each group builds from parsed flags."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from waypost.cli.values import (
    address_arg,
    host_port_arg,
    registration_arg,
)

if TYPE_CHECKING:
    from waypost.h2grpc import Limits
    from waypost.peers import PeerFilter
    from waypost.server.exposure import AdminAuth
    from waypost.server.ratelimit import CounterOptions, RateLimitOptions

GRPCIO_HELP = "serve gRPC Check with grpcio's server (slower) instead of waypost's own (waypost.h2grpc)"

__all__ = [
    "GRPCIO_HELP",
    "counter_arguments",
    "counter_options",
    "decision_arguments",
    "decision_limit_arguments",
    "decision_limits",
    "exposure",
    "exposure_arguments",
    "node_arguments",
    "ratelimit_arguments",
    "ratelimit_options",
]


def node_arguments(parser: argparse.ArgumentParser, *, who: str) -> None:
    """The flags every bootstrap takes: the node's identity, the xDS address and its TLS."""
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--node-cluster", required=True)
    parser.add_argument("--xds", required=True, type=host_port_arg, metavar="HOST:PORT")
    parser.add_argument(
        "--label", action="append", default=[], metavar="KEY=VALUE", help="node metadata label"
    )
    parser.add_argument(
        "--xds-tls-ca",
        metavar="PATH",
        help=f"CA file (on the host of {who}) to verify waypost's xDS cert; enables TLS",
    )
    parser.add_argument("--xds-client-cert", metavar="PATH", help=f"client certificate {who} presents (mTLS)")
    parser.add_argument("--xds-client-key", metavar="PATH", help="private key of --xds-client-cert")
    parser.add_argument(
        "--register",
        type=registration_arg,
        metavar="SERVICE=IP:PORT",
        help="be an endpoint of SERVICE at IP:PORT while connected (where its registration allows)",
    )


def exposure_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the policy is read from, and who may reach the ports (see server/exposure.py)."""
    parser.add_argument(
        "--working-tree",
        action="store_true",
        help="in a git checkout, read the working files (uncommitted changes too) instead of HEAD's commit",
    )
    parser.add_argument("--admin-host", help="address of the admin port (default: --host)")
    parser.add_argument(
        "--admin-token-file",
        type=Path,
        metavar="PATH",
        help="bearer token the admin pages require (or WAYPOST_ADMIN_TOKEN); needed off loopback",
    )
    parser.add_argument("--admin-cert", type=Path, metavar="PATH", help="serve the admin port over TLS")
    parser.add_argument("--admin-key", type=Path, metavar="PATH", help="private key of --admin-cert")
    parser.add_argument(
        "--admin-ca", type=Path, metavar="PATH", help="require admin client certificates from this CA"
    )
    parser.add_argument(
        "--decision-allow",
        action="append",
        default=[],
        metavar="CIDR",
        help="client networks the decision ports answer (the Envoys); needed off loopback",
    )


def exposure(args: argparse.Namespace, *, admin: bool, decision: bool) -> tuple[AdminAuth, PeerFilter | None]:
    """The admin authentication and decision allow-list the flags ask for; ArgumentTypeError
    when a port would be open to anyone (see :func:`waypost.server.exposure.exposure_problems`)."""
    from waypost.peers import PeerFilter
    from waypost.server.exposure import AdminAuth, exposure_problems, read_admin_token

    if (args.admin_cert is None) != (args.admin_key is None) or (args.admin_ca and args.admin_cert is None):
        raise argparse.ArgumentTypeError(
            "--admin-cert and --admin-key go together (and --admin-ca needs both)"
        )
    for path in (args.admin_cert, args.admin_key, args.admin_ca):
        if path is not None and not path.is_file():
            raise argparse.ArgumentTypeError(f"{path}: no such file")
    try:
        token = read_admin_token(args.admin_token_file)
        peers = PeerFilter.parse(args.decision_allow) if args.decision_allow else None
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    auth = AdminAuth(token=token, cert=args.admin_cert, key=args.admin_key, client_ca=args.admin_ca)
    problems = exposure_problems(
        admin_host=(args.admin_host or args.host) if admin else None,
        admin_auth=auth,
        decision_host=args.host if decision else None,
        decision_allow=peers,
    )
    if problems:
        raise argparse.ArgumentTypeError("refusing to start: " + "; ".join(problems))
    return auth, peers


def decision_arguments(serve: argparse.ArgumentParser) -> None:
    group = serve.add_argument_group(
        "decision services",
        "serve runs ext_authz and the rate-limit service itself when the policies need them, and "
        "tells Envoys where they are over CDS/EDS; or name the ones a fleet runs elsewhere",
    )
    group.add_argument("--authz-port", type=int, default=9191, help="in-process ext_authz gRPC port (9191)")
    group.add_argument(
        "--authz-http-port", type=int, default=9192, help="its HTTP endpoint, auth_service: http (9192)"
    )
    group.add_argument("--no-authz", action="store_true", help="never run ext_authz in this process")
    group.add_argument("--no-ratelimit", action="store_true", help="never run the rate-limit service here")
    for flag, what in (
        ("--authz-address", "a `waypost authz` gRPC port"),
        ("--authz-http-address", "a `waypost authz --http-port` endpoint"),
        ("--ratelimit-address", "a `waypost ratelimit` port"),
    ):
        group.add_argument(
            flag,
            action="append",
            default=[],
            type=address_arg,
            metavar="HOST:PORT",
            help=f"{what} Envoys use instead of this process's (repeat: several endpoints, health-checked)",
        )
    group.add_argument(
        "--advertise-address",
        metavar="HOST",
        help="the address Envoys reach this process's decision services at (NAT, containers); "
        "default: --host, or this host's outbound address when --host listens on all",
    )
    group.add_argument("--authz-grpcio", action="store_true", help=GRPCIO_HELP)
    ratelimit_arguments(serve, port_flag="--ratelimit-port")
    decision_limit_arguments(serve)


def decision_limit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-connections",
        type=int,
        default=1000,
        help="open connections per decision port (at the cap the longest-idle one is closed; default 1000)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=300.0,
        help="seconds a decision-port connection may stay without a call (default 300)",
    )


def decision_limits(args: argparse.Namespace) -> Limits:
    from waypost.h2grpc import Limits

    if args.max_connections < 1 or args.idle_timeout <= 0:
        raise argparse.ArgumentTypeError("--max-connections and --idle-timeout must be positive")
    return Limits(
        max_connections=args.max_connections,
        idle_timeout=args.idle_timeout,
        handshake_timeout=min(10.0, args.idle_timeout),
    )


def ratelimit_arguments(parser: argparse.ArgumentParser, *, port_flag: str) -> None:
    parser.add_argument(
        port_flag,
        dest="ratelimit_port",
        type=int,
        default=18001,
        help="gRPC port of the rate-limit service (18001)",
    )
    counter_arguments(parser)
    parser.add_argument(
        "--ratelimit-grpcio",
        action="store_true",
        help="serve the RLS with grpcio's server (slower) instead of waypost's own (waypost.h2grpc)",
    )


def counter_arguments(parser: argparse.ArgumentParser) -> None:
    """Where rate-limit counters live: the RLS's, and the consumer quotas ext_authz counts."""
    parser.add_argument(
        "--redis",
        metavar="URL",
        help="redis://HOST:PORT/DB: counters (and, for serve, registered endpoints) shared by replicas",
    )
    parser.add_argument(
        "--ratelimit-fail-closed",
        action="store_true",
        help="deny (429) while the counter store is unreachable (default: allow)",
    )
    parser.add_argument(
        "--ratelimit-algorithm", choices=("fixed", "sliding"), default="fixed", help="window algorithm"
    )


def counter_options(args: argparse.Namespace) -> CounterOptions:
    from waypost.server.ratelimit import CounterOptions

    return CounterOptions(
        redis=args.redis, algorithm=args.ratelimit_algorithm, fail_closed=args.ratelimit_fail_closed
    )


def ratelimit_options(args: argparse.Namespace, peers: PeerFilter | None = None) -> RateLimitOptions:
    from waypost.server.ratelimit import RateLimitOptions

    return RateLimitOptions(
        peers=peers,
        port=args.ratelimit_port,
        host=args.host,
        redis=args.redis,
        fail_closed=args.ratelimit_fail_closed,
        algorithm=args.ratelimit_algorithm,
        grpcio=args.ratelimit_grpcio,
        limits=decision_limits(args),
    )
