"""The one-shot commands: validate, render, bootstrap, grpc-bootstrap, keys new.

Each prints its result and returns the exit code (1 for an invalid policy, one
`path:line: Kind name: message` line per problem on stderr)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from waypost.cli.values import labels_arg

if TYPE_CHECKING:
    from waypost.policies.model import PolicySet

__all__ = [
    "bootstrap_command",
    "grpc_bootstrap_command",
    "keys_new_command",
    "load_or_report",
    "render_command",
    "validate_command",
]


def load_or_report(directory: Path) -> PolicySet | None:
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


def validate_command(directory: Path) -> int:
    policy = load_or_report(directory)
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


def render_command(args: argparse.Namespace) -> int:
    from waypost.progress import progress
    from waypost.xds.compiler import compile_policy
    from waypost.xds.render import dump_yaml, render_resources

    policy = load_or_report(args.directory)
    if policy is None:
        return 1
    with progress("compiling"):
        compiled = compile_policy(policy)
    group = compiled.select_gateways(args.node_cluster, labels_arg(args.label), proxyless=args.grpc_client)
    with progress("rendering"):
        rendered = render_resources(compiled.resources_for(group))
    if args.format == "json":
        print(json.dumps(rendered, indent=2))
    else:
        sys.stdout.write(dump_yaml(rendered))
    return 0


def _node_options(args: argparse.Namespace) -> dict[str, Any]:
    """What :func:`~waypost.cli.flags.node_arguments` declares, as both renderers take it."""
    host, port = args.xds
    return {
        "node_id": args.node_id,
        "node_cluster": args.node_cluster,
        "xds_host": host,
        "xds_port": port,
        "labels": labels_arg(args.label),
        "xds_tls_ca": args.xds_tls_ca,
        "xds_client_cert": args.xds_client_cert,
        "xds_client_key": args.xds_client_key,
        "register": args.register,
    }


def bootstrap_command(args: argparse.Namespace) -> int:
    from waypost.xds.bootstrap import render_bootstrap

    return _print_rendered(
        render_bootstrap,
        **_node_options(args),
        admin_port=args.admin_port,
        admin_address=args.admin_address,
        delta=args.delta,
        xds_sni=args.xds_sni,
        max_connections=args.max_connections,
        max_heap_bytes=args.max_heap,
    )


def grpc_bootstrap_command(args: argparse.Namespace) -> int:
    from waypost.xds.grpc_bootstrap import render_grpc_bootstrap

    return _print_rendered(render_grpc_bootstrap, **_node_options(args))


def _print_rendered(render: Callable[..., str], **options: Any) -> int:
    try:
        text = render(**options)
    except ValueError as exc:  # a value the flags' types let through but the renderer refuses
        raise argparse.ArgumentTypeError(str(exc)) from None
    sys.stdout.write(text)
    return 0


def keys_new_command(consumer: str) -> int:
    from waypost.filters.authz.keys import new_key

    key, line = new_key(consumer)
    print(f"API key for {consumer} (shown once; hand it to the consumer, do not commit it):")
    print(f"  {key}")
    print(f"Add to Consumer {consumer}'s api_keys and commit:")
    print(f'  - "{line}"')
    return 0
