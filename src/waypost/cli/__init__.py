"""The `waypost` command line: validate, render, bootstrap, serve, top, diff, schema, docs, teams.

A thin layer: parse arguments, call one stage, print its result. Exit codes: 0 success, 1 invalid
policy (one `path:line: Kind name: message` line per problem on stderr), 2 usage errors.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

# grpcio's fork handlers (1.80 and later) can crash a child between fork and exec while gRPC is
# busy in the parent (grpc/grpc#43055): `git` under serve, --git-pull and the portal. waypost
# only forks to exec, so it needs none of them; read by grpcio when first imported, below.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from waypost.cli.analytics import run_top
from waypost.cli.commands import (
    bootstrap_command,
    grpc_bootstrap_command,
    keys_new_command,
    render_command,
    validate_command,
)
from waypost.cli.parser import build_parser
from waypost.cli.services import authz_command, ratelimit_command, serve_command

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "validate":
            return validate_command(args.directory)
        if args.command == "render":
            return render_command(args)
        if args.command == "bootstrap":
            return bootstrap_command(args)
        if args.command == "grpc-bootstrap":
            return grpc_bootstrap_command(args)
        if args.command == "serve":
            return serve_command(args)
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
            return authz_command(args, list(argv if argv is not None else sys.argv[1:]))
        if args.command == "keys":
            return keys_new_command(args.consumer)
        if args.command == "ratelimit":
            return ratelimit_command(args)
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
