"""``waypost diff REV_A REV_B [DIR]``: what a policy change does to each Envoy node group.

This is what a reviewer reads on a policy pull request: the policy directory is read at both
revisions straight from git (:class:`~waypost.policies.source.GitTreeSource`, as ``serve`` reads
a checkout's commit; the working tree is never touched),
each is loaded and compiled exactly as ``waypost serve`` would, and for every node group the
Envoy resources (as ``waypost render`` prints them) are compared.
"""

from __future__ import annotations

import difflib
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from envoy.config.route.v3 import route_pb2
from google.protobuf import message

from waypost.gitdiff_help import DIFF_HELP
from waypost.policies.diagnostics import PolicyError
from waypost.policies.loader import load_policies
from waypost.policies.model import Gateway, PolicySet
from waypost.policies.source import GitTreeSource
from waypost.policies.teams import team_of_name
from waypost.progress import progress
from waypost.xds.compiler import CompiledPolicy, compile_policy
from waypost.xds.render import SECTIONS, dump_yaml, render_resources
from waypost.xds.types import TypeUrl

__all__ = ["DIFF_HELP", "GroupChange", "NodeProfile", "diff_policies", "node_profiles", "run_diff"]


ANY_CLUSTER = ""
"""The node cluster of profiles no Gateway names a cluster for: matches only cluster-less
selectors (an Envoy's cluster is never empty)."""

MAX_PROFILES = 512
"""Bound on selector combinations explored; real fleets have a handful of selectors."""


class DiffError(Exception):
    """A revision that cannot be read or a policy that does not load; the message says which."""


@dataclass(frozen=True, order=True)
class NodeProfile:
    """A representative Envoy identity: node cluster and labels."""

    cluster: str
    labels: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        cluster = f"cluster={self.cluster}" if self.cluster != ANY_CLUSTER else "any cluster"
        labels = ", ".join(f"{key}={value}" for key, value in self.labels)
        return f"{cluster}, labels {labels}" if labels else cluster

    def merge(self, other: NodeProfile) -> NodeProfile | None:
        """A node satisfying both, or None when they conflict."""
        if ANY_CLUSTER not in (self.cluster, other.cluster) and self.cluster != other.cluster:
            return None
        merged = dict(self.labels)
        for key, value in other.labels:
            if merged.setdefault(key, value) != value:
                return None
        cluster = self.cluster if self.cluster != ANY_CLUSTER else other.cluster
        return NodeProfile(cluster, tuple(sorted(merged.items())))


def _profile(gateway: Gateway) -> NodeProfile:
    selector = gateway.nodes
    if selector is None:
        return NodeProfile(ANY_CLUSTER)
    return NodeProfile(selector.cluster or ANY_CLUSTER, tuple(sorted(selector.labels.items())))


def node_profiles(policies: Iterable[PolicySet]) -> list[NodeProfile]:
    """Representative nodes for every distinct Gateway selection the policies' selectors imply."""
    gateways = [gateway for policy in policies for gateway in policy.gateways.values()]
    base = sorted({_profile(gateway) for gateway in gateways} | {NodeProfile(ANY_CLUSTER)})
    profiles = set(base)
    frontier = list(base)
    # Merge compatible profiles until nothing new appears (the closure is small in practice:
    # selectors mostly differ in cluster, and profiles of different clusters never merge).
    while frontier and len(profiles) < MAX_PROFILES:
        next_frontier = []
        for profile in frontier:
            for other in base:
                merged = profile.merge(other)
                if merged is not None and merged not in profiles:
                    profiles.add(merged)
                    next_frontier.append(merged)
        frontier = next_frontier
    return sorted(profiles)


@dataclass(frozen=True)
class GroupChange:
    """One node group: what it gets at each revision, and the diff of its resources."""

    profile: NodeProfile
    gateways_a: tuple[str, ...]
    gateways_b: tuple[str, ...]
    diffs: tuple[tuple[str, str], ...] = ()
    """``(mark + resource key, unified diff)`` per resource that differs; the mark is ``+``
    (added), ``-`` (removed) or ``~`` (changed)."""
    teams: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Resource key (no mark) -> the teams (or ``(platform)``) whose documents changed it."""

    @property
    def changed(self) -> bool:
        return bool(self.diffs)

    @property
    def resources(self) -> tuple[str, ...]:
        return tuple(key for key, _ in self.diffs)

    @property
    def diff(self) -> str:
        return "".join(text for _, text in self.diffs)


def _select(compiled: CompiledPolicy | None, profile: NodeProfile) -> tuple[str, ...]:
    if compiled is None:
        return ()
    return compiled.select_gateways(profile.cluster, dict(profile.labels))


Resources = dict[str, tuple[TypeUrl, message.Message]]


def _resources(compiled: CompiledPolicy | None, group: tuple[str, ...]) -> Resources:
    """The group's resources keyed ``section/name`` (e.g. ``routes/public``)."""
    if compiled is None or not group:
        return {}
    return {
        f"{SECTIONS[type_url]}/{name}": (type_url, resource)
        for type_url, by_name in compiled.resources_for(group).items()
        for name, resource in by_name.items()
    }


def _yaml(entry: tuple[TypeUrl, message.Message] | None) -> str:
    if entry is None:
        return ""
    type_url, resource = entry
    # Through render_resources, so it reads exactly like `waypost render` (secrets redacted).
    (item,) = render_resources({type_url: {"_": resource}})[SECTIONS[type_url]]
    return dump_yaml(item)


def _resource_diff(a: Resources, b: Resources, label_a: str, label_b: str) -> tuple[tuple[str, str], ...]:
    """One unified diff per resource that differs, headed by the resource's section and name,
    so a reviewer sees "routes/public" rather than a line number in one long document. Only
    resources whose bytes differ are rendered: a large fleet's diff costs what the change does."""
    diffs: list[tuple[str, str]] = []
    for key in sorted(a.keys() | b.keys()):
        old, new = a.get(key), b.get(key)
        if old is not None and new is not None and _same(old[1], new[1]):
            continue
        old_text, new_text = _yaml(old), _yaml(new)
        if old_text == new_text:
            continue
        text = "".join(
            difflib.unified_diff(
                old_text.splitlines(keepends=True),
                new_text.splitlines(keepends=True),
                fromfile=f"{label_a}:{key}" if old else "/dev/null",
                tofile=f"{label_b}:{key}" if new else "/dev/null",
                n=4,
            )
        )
        diffs.append((("~" if old and new else "+" if new else "-") + key, text))
    return tuple(diffs)


def _same(a: message.Message, b: message.Message) -> bool:
    return a is b or a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


def diff_policies(
    policy_a: PolicySet | None, policy_b: PolicySet | None, *, label_a: str = "a", label_b: str = "b"
) -> list[GroupChange]:
    """Every node group, changed or not; a None policy is an absent directory (nothing served)."""
    compiled_a = compile_policy(policy_a) if policy_a is not None else None
    compiled_b = compile_policy(policy_b) if policy_b is not None else None
    seen: set[tuple[tuple[str, ...], tuple[str, ...]]] = set()
    changes: list[GroupChange] = []
    rendered: dict[tuple[str, tuple[str, ...]], Resources] = {}
    for profile in node_profiles(p for p in (policy_a, policy_b) if p is not None):
        group_a, group_b = _select(compiled_a, profile), _select(compiled_b, profile)
        if (group_a, group_b) in seen or (not group_a and not group_b):
            continue
        seen.add((group_a, group_b))
        if ("a", group_a) not in rendered:
            rendered["a", group_a] = _resources(compiled_a, group_a)
        if ("b", group_b) not in rendered:
            rendered["b", group_b] = _resources(compiled_b, group_b)
        resources_a, resources_b = rendered["a", group_a], rendered["b", group_b]
        diffs = _resource_diff(resources_a, resources_b, label_a, label_b)
        teams = _changed_teams(resources_a, resources_b, diffs)
        changes.append(GroupChange(profile, group_a, group_b, diffs, teams))
    return changes


# --- git ----------------------------------------------------------------------------------------


def _git(cwd: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, timeout=120, stdin=subprocess.DEVNULL, check=False
    )


def _prefix(directory: Path) -> str:
    """DIR's path inside its repository ('' at the top)."""
    result = _git(directory, "rev-parse", "--show-prefix")
    if result.returncode != 0:
        raise DiffError(f"{directory}: not in a git checkout: {result.stderr.decode().strip()}")
    return result.stdout.decode().strip()


def _load_at(directory: Path, rev: str) -> PolicySet | None:
    """DIR as committed in ``rev`` (read from the commit, like ``serve``); None when DIR does not
    exist at ``rev``."""
    commit = _git(directory, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if commit.returncode != 0:
        raise DiffError(f"unknown revision '{rev}'")
    prefix = _prefix(directory).rstrip("/")
    tree = f"{rev}:{prefix}" if prefix else f"{rev}^{{tree}}"
    if _git(directory, "cat-file", "-e", tree).returncode != 0:
        return None
    toplevel = _git(directory, "rev-parse", "--show-toplevel").stdout.decode().strip()
    source = GitTreeSource(
        directory, toplevel=toplevel, commit=commit.stdout.decode().strip(), display=f"{rev}:{prefix}"
    )
    try:
        return load_policies(source)
    except PolicyError as exc:
        lines = [str(d) for d in exc.diagnostics]
        raise DiffError("\n".join([f"the policy at {rev} is invalid:", *lines])) from None


def run_diff(rev_a: str, rev_b: str, directory: Path, *, exit_code: bool, stat: bool = False) -> int:
    try:
        with progress(f"loading {directory} at {rev_a}"):
            policy_a = _load_at(directory, rev_a)
        with progress(f"loading {directory} at {rev_b}"):
            policy_b = _load_at(directory, rev_b)
    except DiffError as exc:
        print(f"waypost diff: {exc}", file=sys.stderr)
        return 2
    if policy_a is None and policy_b is None:
        print(f"waypost diff: {directory} exists at neither {rev_a} nor {rev_b}", file=sys.stderr)
        return 2
    with progress("compiling and comparing node groups"):
        changes = diff_policies(policy_a, policy_b, label_a=rev_a, label_b=rev_b)
    write_report(changes, rev_a, rev_b, sys.stdout, stat=stat)
    changed = any(change.changed for change in changes)
    return 1 if exit_code and changed else 0


def write_report(
    changes: list[GroupChange], rev_a: str, rev_b: str, out: TextIO, *, stat: bool = False
) -> None:
    write = out.write
    changed = [change for change in changes if change.changed]
    write(f"{len(changed)} of {len(changes)} node groups change between {rev_a} and {rev_b}\n")
    for change in changes:
        mark = "changed" if change.changed else "unchanged"
        write(f"  {mark:9}  {change.profile.describe()}: {_gateways(change.gateways_a, change.gateways_b)}\n")
        if change.resources:
            write(f"             {' '.join(change.resources)}\n")
    by_team = changes_by_team(changed)
    if by_team:
        write("changes by team:\n")
        for team, keys in sorted(by_team.items(), key=lambda item: (item[0] == PLATFORM, item[0])):
            write(f"  {team}: {', '.join(keys)}\n")
    if stat:
        return
    # A resource shared by several groups (a Gateway's route table, a Service's cluster) changes
    # the same way in each: its diff is printed once, and later groups point back to it.
    shown: dict[tuple[str, str], str] = {}
    for change in changed:
        where = change.profile.describe()
        write(f"\n=== node group {where}: {_gateways(change.gateways_a, change.gateways_b)}\n")
        for key, text in change.diffs:
            first = shown.setdefault((key, text), where)
            if first == where:
                write(text)
            else:
                write(f"({key[1:]}: the same change as in node group {first})\n")


def _gateways(a: tuple[str, ...], b: tuple[str, ...]) -> str:
    shown_a = ", ".join(a) or "(none)"
    if a == b:
        return f"gateways {shown_a}"
    return f"gateways {shown_a} -> {', '.join(b) or '(none)'}"


PLATFORM = "(platform)"


def _route_bytes(entry: tuple[TypeUrl, message.Message] | None) -> dict[str, bytes]:
    if entry is None or not isinstance(entry[1], route_pb2.RouteConfiguration):
        return {}
    return {
        route.name: route.SerializeToString(deterministic=True)
        for host in entry[1].virtual_hosts
        for route in host.routes
    }


def _changed_teams(
    a: Resources, b: Resources, diffs: Iterable[tuple[str, str]]
) -> dict[str, tuple[str, ...]]:
    """Resource key -> the teams whose names changed in it: a scoped resource is its team's; a
    Gateway's route table is every team whose routes in it were added, removed or changed, and
    the platform's when one of its own routes or the table itself changed."""
    found: dict[str, tuple[str, ...]] = {}
    for mark_key, _ in diffs:
        key = mark_key[1:]
        team = team_of_name(key.partition("/")[2])
        if team is not None:
            found[key] = (team,)
            continue
        old, new = _route_bytes(a.get(key)), _route_bytes(b.get(key))
        changed = {name for name in old.keys() | new.keys() if old.get(name) != new.get(name)}
        teams = sorted({team_of_name(name) or PLATFORM for name in changed})
        found[key] = tuple(teams) if teams else (PLATFORM,)
    return found


def changes_by_team(changed: Iterable[GroupChange]) -> dict[str, list[str]]:
    """Team -> the changed resources that carry its names; empty when no team is involved, so
    an un-teamed repository's report is unchanged."""
    found: dict[str, dict[str, None]] = {}
    for change in changed:
        for key, teams in change.teams.items():
            for team in teams:
                found.setdefault(team, {})[key] = None
    if set(found) <= {PLATFORM}:
        return {}
    return {team: list(keys) for team, keys in found.items()}
