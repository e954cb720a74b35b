"""The help text of ``waypost diff``, apart from :mod:`waypost.gitdiff` so that building the
argument parser does not import the compiler and Envoy's protobufs (0.3-0.5 s on every command)."""

from __future__ import annotations

__all__ = ["DIFF_HELP"]

DIFF_HELP = """\
Compare the policy directory DIR (default: the current directory) at two git revisions and show,
per node group, the change in the Envoy resources waypost would push.

Node groups. Envoys that get the same set of Gateways share one configuration (one snapshot in
the server). Which set a node gets depends on its node cluster and labels, matched against each
Gateway's `nodes` selector. The groups compared here are every distinct selection those
selectors imply, at either revision:
  - one per selector: a node carrying exactly what a Gateway's `nodes` asks for
    (e.g. cluster=edge, zone=a), which also gets every Gateway with a looser selector;
  - combinations: a node satisfying several compatible selectors at once (same cluster or none,
    no conflicting label values) when that selects a set of Gateways no single one does;
  - "any other node": a node no selector names, which gets only the Gateways without `nodes`.
A group is reported once per distinct (Gateways at REV_A, Gateways at REV_B) pair.

Exit status: 0 when nothing changes (or without --exit-code), 1 with --exit-code when some
node group changes, 2 on a usage error, an unknown revision or an invalid policy at either
revision (its problems listed as REV:path:line: message).

Example, in CI on a pull request:
  waypost diff origin/main HEAD policies/ --exit-code
"""
