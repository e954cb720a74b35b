"""The `waypost` argument parser: every command and its flags."""

from __future__ import annotations

import argparse
from pathlib import Path

from waypost.cli.analytics import (
    add_analytics_arguments,
    add_top_parser,
)
from waypost.cli.flags import (
    GRPCIO_HELP,
    counter_arguments,
    decision_arguments,
    decision_limit_arguments,
    exposure_arguments,
    node_arguments,
    ratelimit_arguments,
)
from waypost.cli.values import (
    byte_size_arg,
    interval_arg,
)

__all__ = ["build_parser"]


def build_parser() -> argparse.ArgumentParser:
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
    node_arguments(grpc_bootstrap, who="the gRPC client")

    bootstrap = commands.add_parser("bootstrap", help="print an Envoy bootstrap that connects to waypost")
    node_arguments(bootstrap, who="Envoy")
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
        type=byte_size_arg,
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
        type=interval_arg,
        metavar="INTERVAL",
        help="every INTERVAL (30s, 5m or seconds), `git pull --ff-only` the policy checkout; "
        "a commit with invalid policy is refused and shown on /status",
    )
    serve.add_argument(
        "--reload-debounce",
        type=interval_arg,
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
    exposure_arguments(serve)
    decision_arguments(serve)

    authz = commands.add_parser("authz", help="serve only the ext_authz decision service (gRPC Check)")
    authz.add_argument("--policies", required=True, type=Path)
    authz.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    authz.add_argument("--port", type=int, default=9191, help="the gRPC Check service (default 9191)")
    authz.add_argument("--http-port", type=int, help="also serve the HTTP endpoint (auth_service: http)")
    authz.add_argument("--admin-port", type=int, help="/healthz, /readyz, /metrics on this port")
    authz.add_argument("--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)")
    authz.add_argument("--authz-grpcio", action="store_true", help=GRPCIO_HELP)
    decision_limit_arguments(authz)
    authz.add_argument("--no-watch", action="store_true")
    authz.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    authz.add_argument("--log-format", choices=("json", "console"))
    exposure_arguments(authz)
    counter_arguments(authz)  # where consumer quotas are counted (--redis: shared with the RLS)

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
    ratelimit_arguments(ratelimit, port_flag="--port")
    exposure_arguments(ratelimit)
    decision_limit_arguments(ratelimit)

    from waypost.portal.cli import add_portal_command, add_serve_arguments

    add_serve_arguments(serve)
    add_portal_command(commands)
    return parser
