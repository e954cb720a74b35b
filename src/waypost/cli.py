"""The `waypost` command line: validate, render, bootstrap, serve, top, diff, schema, docs, teams.

A thin layer: parse arguments, call one stage, print its result. Exit codes: 0 success, 1 invalid
policy (one `path:line: Kind name: message` line per problem on stderr), 2 usage errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

# grpcio's fork handlers (1.80 and later) can crash a child between fork and exec while gRPC is
# busy in the parent (grpc/grpc#43055): `git` under serve, --git-pull and the portal. waypost
# only forks to exec, so it needs none of them; read by grpcio when first imported, below.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from waypost.cli_analytics import (
    add_analytics_arguments,
    add_top_parser,
    analytics_options,
    run_top,
)

if TYPE_CHECKING:
    from waypost.h2grpc import Limits
    from waypost.peers import PeerFilter
    from waypost.policies.model import PolicySet
    from waypost.policies.types import Endpoint
    from waypost.server.exposure import AdminAuth
    from waypost.server.ratelimit import CounterOptions, RateLimitOptions

__all__ = ["main"]


def _labels(values: Sequence[str]) -> dict[str, str]:
    labels = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"--label expects key=value, got '{item}'")
        labels[key] = value
    return labels


def _host_port(value: str) -> tuple[str, int]:
    from waypost.xds.bootstrap import parse_host_port

    try:
        return parse_host_port(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _address(value: str) -> Endpoint:
    from waypost.policies.types import Endpoint

    host, port = _host_port(value)
    return Endpoint(host, port)


def _registration(value: str) -> tuple[str, str]:
    """SERVICE=IP:PORT of ``--register``: checked here, so a typo never reaches a bootstrap."""
    from waypost.policies.types import parse_endpoint

    service, sep, address = value.partition("=")
    if not sep or not service:
        raise argparse.ArgumentTypeError(f"'{value}' is not SERVICE=IP:PORT")
    try:
        endpoint = parse_endpoint(address)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not endpoint.is_ip:
        raise argparse.ArgumentTypeError(f"'{address}': a registered endpoint is an IP address and port")
    return service, str(endpoint)


def _interval(value: str) -> float:
    from waypost.policies.types import parse_duration

    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parse_duration(value) / 1000
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"'{value}' must be above 0")
    return seconds


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="waypost", description="An Envoy control plane driven by policy files."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    validate = commands.add_parser("validate", help="check a policy directory; exit 1 listing every problem")
    validate.add_argument("directory", type=Path)

    render = commands.add_parser("render", help="print the Envoy resources one node would receive")
    render.add_argument("directory", type=Path)
    render.add_argument("--node-id", required=True)
    render.add_argument("--node-cluster", required=True)
    render.add_argument(
        "--label", action="append", default=[], metavar="KEY=VALUE", help="node metadata label"
    )
    render.add_argument("--format", choices=("yaml", "json"), default="yaml")
    render.add_argument(
        "--grpc-client", action="store_true", help="as a proxyless gRPC client would (GrpcTargets)"
    )

    grpc_bootstrap = commands.add_parser(
        "grpc-bootstrap", help="print the GRPC_XDS_BOOTSTRAP file of a proxyless gRPC client"
    )
    _node_arguments(grpc_bootstrap, who="the gRPC client")

    bootstrap = commands.add_parser("bootstrap", help="print an Envoy bootstrap that connects to waypost")
    _node_arguments(bootstrap, who="Envoy")
    bootstrap.add_argument("--admin-port", type=int, default=9901)
    bootstrap.add_argument("--admin-address", default="127.0.0.1", help="Envoy admin listen address")
    bootstrap.add_argument("--delta", action="store_true", help="use incremental (delta) xDS")
    bootstrap.add_argument(
        "--xds-sni", metavar="NAME", help="SNI and expected name of waypost's cert (default: the --xds host)"
    )
    bootstrap.add_argument(
        "--max-connections",
        type=int,
        default=50_000,
        help="open client connections this Envoy accepts in all (overload manager; default 50000)",
    )
    bootstrap.add_argument(
        "--max-heap",
        type=_byte_size,
        metavar="SIZE",
        help="heap size (e.g. 2Gi, 512Mi) at which Envoy sheds load: 503s past 98%%, no keep-alive past 95%%",
    )

    serve = commands.add_parser("serve", help="serve policies to Envoy over ADS, reloading on change")
    serve.add_argument("--policies", required=True, type=Path)
    serve.add_argument(
        "--host", default="127.0.0.1", help="address every port listens on (default 127.0.0.1)"
    )
    serve.add_argument("--xds-port", type=int, default=18000)
    serve.add_argument("--admin-port", type=int, default=9902)
    serve.add_argument(
        "--xds-cert", type=Path, metavar="PATH", help="serve xDS over TLS with this certificate"
    )
    serve.add_argument("--xds-key", type=Path, metavar="PATH", help="private key of --xds-cert")
    serve.add_argument(
        "--xds-ca",
        type=Path,
        metavar="PATH",
        help="require client certs from this CA (mTLS); node id must match",
    )
    serve.add_argument("--no-watch", action="store_true", help="load once; do not watch the directory")
    serve.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    serve.add_argument("--log-format", choices=("json", "console"), help="default: json unless on a terminal")
    serve.add_argument(
        "--git-pull",
        type=_interval,
        metavar="INTERVAL",
        help="every INTERVAL (30s, 5m or seconds), `git pull --ff-only` the policy checkout; "
        "a commit with invalid policy is refused and shown on /status",
    )
    serve.add_argument(
        "--reload-debounce",
        type=_interval,
        default=0.25,
        metavar="INTERVAL",
        help="reload this long after the last change; files read from disk must stay unchanged "
        "this long to be applied (default 0.25s)",
    )
    serve.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="keep each team's last good folders here, so a restart while a team's change is "
        "refused still serves the team's last good version (default: in memory only)",
    )

    from waypost.gitdiff_help import DIFF_HELP

    diff = commands.add_parser(
        "diff",
        help="which node groups change between two git revisions, with a diff of their Envoy resources",
        description=DIFF_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    diff.add_argument("rev_a", metavar="REV_A")
    diff.add_argument("rev_b", metavar="REV_B")
    diff.add_argument("directory", nargs="?", type=Path, default=Path("."), metavar="DIR")
    diff.add_argument("--exit-code", action="store_true", help="exit 1 when any node group changes (for CI)")
    diff.add_argument("--stat", action="store_true", help="only list the node groups that change")

    commands.add_parser("schema", help="print the JSON Schema of policy documents (schema/*.json)")
    commands.add_parser("docs", help="print the policy reference generated from the model (docs/)")
    serve.add_argument(
        "--allow-plaintext-secrets",
        action="store_true",
        help="send Gateway TLS private keys over plaintext xDS (default: withheld unless xDS uses TLS)",
    )
    _exposure_arguments(serve)
    _decision_arguments(serve)

    authz = commands.add_parser("authz", help="serve only the ext_authz decision service (gRPC Check)")
    authz.add_argument("--policies", required=True, type=Path)
    authz.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    authz.add_argument("--port", type=int, default=9191, help="the gRPC Check service (default 9191)")
    authz.add_argument("--http-port", type=int, help="also serve the HTTP endpoint (auth_service: http)")
    authz.add_argument("--admin-port", type=int, help="/healthz, /readyz, /metrics on this port")
    authz.add_argument("--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)")
    authz.add_argument("--authz-grpcio", action="store_true", help=_GRPCIO_HELP)
    _decision_limit_arguments(authz)
    authz.add_argument("--no-watch", action="store_true")
    authz.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    authz.add_argument("--log-format", choices=("json", "console"))
    _exposure_arguments(authz)
    _counter_arguments(authz)  # where consumer quotas are counted (--redis: shared with the RLS)

    keys = commands.add_parser("keys", help="API keys for Consumers")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    keys_new = keys_commands.add_parser("new", help="print a fresh API key once, and the line to commit")
    keys_new.add_argument("consumer")
    add_analytics_arguments(serve)
    add_top_parser(commands)

    teams = commands.add_parser("teams", help="views of the Team documents")
    teams_commands = teams.add_subparsers(dest="teams_command", required=True)
    owners = teams_commands.add_parser("codeowners", help="print a CODEOWNERS file from the Team documents")
    owners.add_argument("directory", nargs="?", type=Path, default=Path("."), metavar="DIR")
    owners.add_argument(
        "--platform", action="append", default=[], metavar="OWNER", help="owns everything else (repeatable)"
    )

    ratelimit = commands.add_parser("ratelimit", help="run only the rate-limit service (Envoy RLS)")
    ratelimit.add_argument("--policies", required=True, type=Path)
    ratelimit.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    ratelimit.add_argument("--admin-port", type=int, default=9903, help="/metrics, /readyz")
    ratelimit.add_argument("--no-watch", action="store_true", help="load once; do not watch the directory")
    ratelimit.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    ratelimit.add_argument("--log-format", choices=("json", "console"))
    _ratelimit_arguments(ratelimit, port_flag="--port")
    _exposure_arguments(ratelimit)
    _decision_limit_arguments(ratelimit)

    from waypost.portal.cli import add_portal_command, add_serve_arguments

    add_serve_arguments(serve)
    add_portal_command(commands)
    return parser


def _node_arguments(parser: argparse.ArgumentParser, *, who: str) -> None:
    """The flags every bootstrap takes: the node's identity, the xDS address and its TLS."""
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--node-cluster", required=True)
    parser.add_argument("--xds", required=True, type=_host_port, metavar="HOST:PORT")
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
        type=_registration,
        metavar="SERVICE=IP:PORT",
        help="be an endpoint of SERVICE at IP:PORT while connected (where its registration allows)",
    )


def _exposure_arguments(parser: argparse.ArgumentParser) -> None:
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


def _exposure(
    args: argparse.Namespace, *, admin: bool, decision: bool
) -> tuple[AdminAuth, PeerFilter | None]:
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


def _decision_arguments(serve: argparse.ArgumentParser) -> None:
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
            type=_address,
            metavar="HOST:PORT",
            help=f"{what} Envoys use instead of this process's (repeat: several endpoints, health-checked)",
        )
    group.add_argument(
        "--advertise-address",
        metavar="HOST",
        help="the address Envoys reach this process's decision services at (NAT, containers); "
        "default: --host, or this host's outbound address when --host listens on all",
    )
    group.add_argument("--authz-grpcio", action="store_true", help=_GRPCIO_HELP)
    _ratelimit_arguments(serve, port_flag="--ratelimit-port")
    _decision_limit_arguments(serve)


_GRPCIO_HELP = "serve gRPC Check with grpcio's server (slower) instead of waypost's own (waypost.h2grpc)"


def _decision_limit_arguments(parser: argparse.ArgumentParser) -> None:
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


def _decision_limits(args: argparse.Namespace) -> Limits:
    from waypost.h2grpc import Limits

    if args.max_connections < 1 or args.idle_timeout <= 0:
        raise argparse.ArgumentTypeError("--max-connections and --idle-timeout must be positive")
    return Limits(
        max_connections=args.max_connections,
        idle_timeout=args.idle_timeout,
        handshake_timeout=min(10.0, args.idle_timeout),
    )


def _ratelimit_arguments(parser: argparse.ArgumentParser, *, port_flag: str) -> None:
    parser.add_argument(
        port_flag,
        dest="ratelimit_port",
        type=int,
        default=18001,
        help="gRPC port of the rate-limit service (18001)",
    )
    _counter_arguments(parser)
    parser.add_argument(
        "--ratelimit-grpcio",
        action="store_true",
        help="serve the RLS with grpcio's server (slower) instead of waypost's own (waypost.h2grpc)",
    )


def _counter_arguments(parser: argparse.ArgumentParser) -> None:
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


def _counter_options(args: argparse.Namespace) -> CounterOptions:
    from waypost.server.ratelimit import CounterOptions

    return CounterOptions(
        redis=args.redis, algorithm=args.ratelimit_algorithm, fail_closed=args.ratelimit_fail_closed
    )


def _ratelimit_options(args: argparse.Namespace, peers: PeerFilter | None = None) -> RateLimitOptions:
    from waypost.server.ratelimit import RateLimitOptions

    return RateLimitOptions(
        peers=peers,
        port=args.ratelimit_port,
        host=args.host,
        redis=args.redis,
        fail_closed=args.ratelimit_fail_closed,
        algorithm=args.ratelimit_algorithm,
        grpcio=args.ratelimit_grpcio,
        limits=_decision_limits(args),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "validate":
            return _validate(args.directory)
        if args.command == "render":
            return _render(args)
        if args.command == "bootstrap":
            return _bootstrap(args)
        if args.command == "grpc-bootstrap":
            return _grpc_bootstrap(args)
        if args.command == "serve":
            return _serve(args)
        if args.command == "diff":
            from waypost.gitdiff import run_diff

            return run_diff(args.rev_a, args.rev_b, args.directory, exit_code=args.exit_code, stat=args.stat)
        if args.command == "schema":
            from waypost.policies.schema import schema_text

            sys.stdout.write(schema_text())
            return 0
        if args.command == "docs":
            from waypost.policies.reference import reference_markdown

            sys.stdout.write(reference_markdown())
            return 0
        if args.command == "authz":
            return _authz(args, list(argv if argv is not None else sys.argv[1:]))
        if args.command == "keys":
            return _keys_new(args.consumer)
        if args.command == "ratelimit":
            return _ratelimit(args)
        if args.command == "portal":
            from waypost.portal.cli import run_portal_command

            return run_portal_command(args)
        if args.command == "teams":
            from waypost.codeowners import run_codeowners

            return run_codeowners(args.directory, args.platform)
        if args.command == "top":
            return run_top(args)
    except argparse.ArgumentTypeError as exc:
        print(f"waypost: {exc}", file=sys.stderr)
        return 2
    return 2


def _load(directory: Path) -> PolicySet | None:
    from waypost.policies.diagnostics import PolicyError
    from waypost.policies.loader import load_policies
    from waypost.progress import progress

    try:
        with progress(f"loading {directory}", count_files=directory):
            return load_policies(directory)
    except PolicyError as exc:
        for diagnostic in exc.diagnostics:
            print(diagnostic, file=sys.stderr)
        return None


def _validate(directory: Path) -> int:
    policy = _load(directory)
    if policy is None:
        return 1
    from waypost.filters.authz.plugins import plugin_problems

    # `custom` plugins are imported as the decision service would: run validate where they live.
    problems = plugin_problems(policy)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    counts = ", ".join(
        f"{len(getattr(policy, attr))} {label}"
        for attr, label in (
            ("gateways", "gateways"),
            ("services", "services"),
            ("routes", "routes"),
            ("auth_policies", "auth policies"),
            ("consumers", "consumers"),
            ("rate_limit_policies", "rate-limit policies"),
        )
    )
    from waypost.server.gitinfo import git_info

    git = git_info(directory)
    commit = f" (git {git.describe})" if git is not None else ""
    print(f"{directory}: valid ({counts}); version {policy.version[:16]}{commit}")
    return 0


def _render(args: argparse.Namespace) -> int:
    from waypost.progress import progress
    from waypost.xds.compiler import compile_policy
    from waypost.xds.render import dump_yaml, render_resources

    policy = _load(args.directory)
    if policy is None:
        return 1
    with progress("compiling"):
        compiled = compile_policy(policy)
    group = compiled.select_gateways(args.node_cluster, _labels(args.label), proxyless=args.grpc_client)
    with progress("rendering"):
        rendered = render_resources(compiled.resources_for(group))
    if args.format == "json":
        print(json.dumps(rendered, indent=2))
    else:
        sys.stdout.write(dump_yaml(rendered))
    return 0


_SIZE_UNITS = {"": 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "K": 1000, "M": 10**6, "G": 10**9}


def _byte_size(text: str) -> int:
    number = text.rstrip("KMGi")
    unit = text[len(number) :]
    if not number.isdigit() or unit not in _SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"'{text}' is not a size like 512Mi, 2Gi or 1000000")
    return int(number) * _SIZE_UNITS[unit]


def _bootstrap(args: argparse.Namespace) -> int:
    from waypost.xds.bootstrap import render_bootstrap

    host, port = args.xds
    try:
        text = render_bootstrap(
            node_id=args.node_id,
            node_cluster=args.node_cluster,
            xds_host=host,
            xds_port=port,
            admin_port=args.admin_port,
            admin_address=args.admin_address,
            labels=_labels(args.label),
            delta=args.delta,
            xds_tls_ca=args.xds_tls_ca,
            xds_client_cert=args.xds_client_cert,
            xds_client_key=args.xds_client_key,
            xds_sni=args.xds_sni,
            max_connections=args.max_connections,
            max_heap_bytes=args.max_heap,
            register=args.register,
        )
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    sys.stdout.write(text)
    return 0


def _grpc_bootstrap(args: argparse.Namespace) -> int:
    from waypost.xds.grpc_bootstrap import render_grpc_bootstrap

    host, port = args.xds
    try:
        text = render_grpc_bootstrap(
            node_id=args.node_id,
            node_cluster=args.node_cluster,
            xds_host=host,
            xds_port=port,
            labels=_labels(args.label),
            xds_tls_ca=args.xds_tls_ca,
            xds_client_cert=args.xds_client_cert,
            xds_client_key=args.xds_client_key,
            register=args.register,
        )
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    sys.stdout.write(text)
    return 0


def _serve(args: argparse.Namespace) -> int:
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
    admin_auth, peers = _exposure(args, admin=True, decision=not (args.no_authz and args.no_ratelimit))
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
            limits=_decision_limits(args),
            ratelimit=None if args.no_ratelimit else _ratelimit_options(args, peers),
            peers=peers,
            authz_addresses=tuple(args.authz_address),
            authz_http_addresses=tuple(args.authz_http_address),
            ratelimit_addresses=tuple(args.ratelimit_address),
            counters=_counter_options(args),
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


def _authz(args: argparse.Namespace, argv: list[str]) -> int:
    from waypost.log import configure_logging
    from waypost.server.authz import AuthzOptions, run_authz

    if args.workers < 1:
        raise argparse.ArgumentTypeError("--workers must be at least 1")
    admin_auth, peers = _exposure(args, admin=args.admin_port is not None, decision=True)
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
        limits=_decision_limits(args),
        counters=_counter_options(args),
    )
    return run_authz(options, argv)


def _keys_new(consumer: str) -> int:
    from waypost.filters.authz.keys import new_key

    key, line = new_key(consumer)
    print(f"API key for {consumer} (shown once; hand it to the consumer, do not commit it):")
    print(f"  {key}")
    print(f"Add to Consumer {consumer}'s api_keys and commit:")
    print(f'  - "{line}"')
    return 0


def _ratelimit(args: argparse.Namespace) -> int:
    from waypost.log import configure_logging
    from waypost.server.ratelimit import StandaloneOptions, serve_ratelimit

    admin_auth, peers = _exposure(args, admin=True, decision=True)
    configure_logging(args.log_level, json=None if args.log_format is None else args.log_format == "json")
    rl = _ratelimit_options(args, peers)
    _run(
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


def _run(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


if __name__ == "__main__":
    raise SystemExit(main())
