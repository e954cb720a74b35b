"""Teams: the documents under a Team's folders belong to it, are scoped to it and stay in its lane.

:func:`scope_teams` runs in the loader between reading documents and the cross-document checks of
:mod:`waypost.policies.validate`. For every document under a Team's folder it

- checks the kind is one a team may write (Service, Route, AuthPolicy, Consumer, RateLimitPolicy,
  Api),
- renames it ``<team>~<name>`` (:func:`scoped`), so ``payments/orders`` and ``search/orders``
  coexist; ``~`` cannot appear in a policy name, and waypost's generated Envoy names use ``/``
  (``<gateway>/otel``), so a scoped name collides with neither,
- resolves its references: first the team's own documents, then platform documents marked
  ``shared: true``; anything else is an error naming the team and the grant it lacks,
- and checks it against the team's grants (:mod:`waypost.policies.team_grants`): the Gateways,
  hosts and path prefixes of its Routes, the upstream addresses of its Services, the plans of its
  Consumers, RateLimitPolicies and Apis, its size limits, and the files it names.

A repository without Team documents is returned untouched. Pure: no I/O.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Final

from waypost.policies.diagnostics import Diagnostic
from waypost.policies.model import (
    Api,
    Consumer,
    Document,
    RateLimitPolicy,
    Route,
    Service,
    Team,
)
from waypost.policies.team_grants import (
    file_paths,
    grants_on,
    grants_overlap,
    host_covers,
    match_within,
    upstream_allowed,
    upstream_problem,
)
from waypost.policies.validate import Entry, Loc

__all__ = [
    "OWN_OR_SHARED",
    "SEPARATOR",
    "TEAM_KINDS",
    "in_folder",
    "normal_folder",
    "scope_teams",
    "scoped",
    "team_folders",
    "team_of_name",
    "unknown_team",
]

SEPARATOR: Final = "~"
"""Between a team and a name: ``payments~orders``. API: it is in Envoy cluster and route names."""

TEAM_KINDS: Final = frozenset({"Service", "Route", "AuthPolicy", "Consumer", "RateLimitPolicy", "Api"})
OWN_OR_SHARED: Final = "a team may refer only to its own documents and shared ones"


def scoped(team: str, name: str) -> str:
    return f"{team}{SEPARATOR}{name}"


def team_of_name(name: str) -> str | None:
    """The team of a (possibly scoped) name, None for a platform name."""
    team, separator, _ = name.partition(SEPARATOR)
    return team if separator else None


def unknown_team(team: str, teams: Iterable[str]) -> str | None:
    """The 4xx message of a view asked for a ``team`` that is not one of ``teams``, or None.

    Views filtered by team say so rather than answer an empty list: a typo must not read as
    "this team has no traffic"."""
    known = sorted(teams)
    if team in known:
        return None
    return f"unknown team {team!r}; teams: {', '.join(known) or '(none: the policy has no Team documents)'}"


def normal_folder(folder: str) -> str | None:
    """``teams/pay/`` -> ``teams/pay``; None when not a folder inside the policy directory."""
    if not folder or folder.startswith(("/", "\\")):
        return None
    normal = posixpath.normpath(folder.replace("\\", "/"))
    if normal in (".", "..") or normal.startswith("../"):
        return None
    return normal


def in_folder(relative: str, folder: str) -> bool:
    return relative == folder or relative.startswith(folder + "/")


def team_folders(entries: Sequence[Entry]) -> dict[str, tuple[str, ...]]:
    """Team name -> its normalized folders, for every Team that validated."""
    found: dict[str, tuple[str, ...]] = {}
    for entry in entries:
        if isinstance(entry.document, Team):
            folders = (normal_folder(folder) for folder in entry.document.folders)
            found[entry.name] = tuple(folder for folder in folders if folder is not None)
    return found


@dataclass
class _Scope:
    """One run of :func:`scope_teams`."""

    relative: Callable[[str], str]
    out: list[Diagnostic]
    teams: dict[str, tuple[Entry, Team]]
    folders: dict[str, tuple[str, ...]]
    owner: dict[int, str]  # id(entry) -> team
    defined: dict[tuple[str, str], Entry]  # (kind, final name) -> entry
    by_path: dict[str, str | None] = field(default_factory=dict)  # source path -> its team

    def error(self, entry: Entry, loc: Loc, message: str, team: str | None = None) -> None:
        who = f"team {team}: " if team else ""
        field = _field(loc)
        text = f"{field}: {who}{message}" if field and loc != ("name",) else f"{who}{message}"
        self.out.append(
            Diagnostic(entry.source.path, entry.source.line_of(loc), entry.kind, entry.name, text)
        )

    def team_of(self, entry: Entry) -> str | None:
        # Once per file, not per document, and by the file's ancestors: a directory of thousands
        # of documents and dozens of teams would otherwise spend more here than in parsing.
        path = entry.source.path
        if path not in self.by_path:
            by_folder = {folder: team for team, folders in self.folders.items() for folder in folders}
            parts = self.relative(path).split("/")
            ancestors = ("/".join(parts[:i]) for i in range(1, len(parts) + 1))
            self.by_path[path] = next((by_folder[a] for a in ancestors if a in by_folder), None)
        return self.by_path[path]

    def resolve(self, entry: Entry, team: str, loc: Loc, target: str, kind: str) -> str:
        """The final name a team document's reference to ``target`` means, reporting a lack."""
        own = scoped(team, target)
        if (kind, own) in self.defined:
            return own
        platform = self.defined.get((kind, target))
        if platform is not None:
            if not getattr(platform.document, "shared", False):
                self.error(
                    entry,
                    loc,
                    f"'{target}' is a platform {kind} not marked shared: {OWN_OR_SHARED}"
                    f" (grant lacking: shared: true on {kind} {target})",
                    team,
                )
            return target
        for other in self.teams:
            if other != team and (kind, scoped(other, target)) in self.defined:
                self.error(
                    entry,
                    loc,
                    f"'{target}' is a {kind} of team {other}: {OWN_OR_SHARED}",
                    team,
                )
                return scoped(other, target)
        return own  # undefined: validate reports it under the scoped name


def _field(loc: Loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def scope_teams(
    entries: Sequence[Entry], relative: Callable[[str], str]
) -> tuple[list[Entry], list[Diagnostic]]:
    """Entries with team documents scoped and their references resolved, and every overstep.

    ``relative`` maps a source path (as in diagnostics) to its path inside the policy directory.
    """
    teams = {e.name: (e, e.document) for e in entries if isinstance(e.document, Team)}
    if not teams and not any(e.kind == "Team" for e in entries):
        return list(entries), []
    scope = _Scope(relative, [], teams, {}, {}, {})
    _check_teams(scope, entries)
    for entry in entries:
        team = scope.team_of(entry)
        if team is not None:
            scope.owner[id(entry)] = team
        name = scoped(team, entry.name) if team is not None else entry.name
        scope.defined.setdefault((entry.kind, name), entry)
    result: list[Entry] = []
    counts: dict[tuple[str, str], int] = {}
    for entry in entries:
        team = scope.owner.get(id(entry))
        if team is None:
            result.append(entry)
            continue
        result.append(_scope_entry(scope, entry, team, counts))
    return result, scope.out


def _check_teams(scope: _Scope, entries: Sequence[Entry]) -> None:
    """The platform's side: Team folders and host grants must not overlap, names must resolve."""
    gateways = {e.name for e in entries if e.kind == "Gateway"}
    claimed_folders: dict[str, str] = {}
    claimed_hosts: list[tuple[str, str, int, int, Entry]] = []  # team, gateway, grant, host
    for name, (entry, team) in scope.teams.items():
        folders: list[str] = []
        for index, folder in enumerate(team.folders):
            normal = normal_folder(folder)
            if normal is None:
                scope.error(
                    entry, ("folders", index), f"'{folder}' must be a folder inside the policy directory"
                )
                continue
            for other_folder, other in claimed_folders.items():
                if in_folder(normal, other_folder) or in_folder(other_folder, normal):
                    scope.error(
                        entry, ("folders", index), f"'{folder}' overlaps team {other}'s '{other_folder}'"
                    )
            claimed_folders[normal] = name
            folders.append(normal)
        scope.folders[name] = tuple(folders)
        for index, upstream in enumerate(team.upstreams):
            problem = upstream_problem(upstream)
            if problem is not None:
                scope.error(entry, ("upstreams", index), problem)
        for g, grant in enumerate(team.gateways):
            if grant.gateway not in gateways:
                scope.error(entry, ("gateways", g, "gateway"), f"'{grant.gateway}' is not a Gateway")
            for h, host in enumerate(grant.hosts):
                for other, gateway, og, oh, other_entry in claimed_hosts:
                    other_host = scope.teams[other][1].gateways[og].hosts[oh]
                    if gateway == grant.gateway and grants_overlap(host, other_host):
                        scope.error(
                            entry,
                            ("gateways", g, "hosts", h),
                            f"host '{host.host}' path '{host.path_prefix}' overlaps team {other}'s"
                            f" '{other_host.host}' path '{other_host.path_prefix}' on Gateway"
                            f" {gateway} ({other_entry.source.path}): grants must not overlap",
                        )
                claimed_hosts.append((name, grant.gateway, g, h, entry))
    for entry in entries:  # a Team inside a team folder would let a team grant itself
        if entry.kind == "Team" and scope.team_of(entry) is not None:
            scope.error(entry, ("kind",), "a Team document must be outside every team's folders")


def _scope_entry(scope: _Scope, entry: Entry, team: str, counts: dict[tuple[str, str], int]) -> Entry:
    grants = scope.teams[team][1]
    name = scoped(team, entry.name)
    document = entry.document
    if entry.kind not in TEAM_KINDS:
        allowed = ", ".join(sorted(TEAM_KINDS))
        scope.error(
            entry, ("kind",), f"a team may define only {allowed}; {entry.kind} is the platform's", team
        )
        return replace(entry, name=name, document=None)
    count = counts[(team, entry.kind)] = counts.get((team, entry.kind), 0) + 1
    limit = {"Route": grants.limits.routes, "Consumer": grants.limits.consumers}.get(entry.kind)
    if limit is not None and count == limit + 1:
        scope.error(entry, ("name",), f"more than {limit} {entry.kind}s (grant lacking: limits)", team)
    if document is None:
        return replace(entry, name=name)
    if getattr(document, "shared", False):
        scope.error(entry, ("shared",), "only platform documents can be marked shared", team)
    update: dict[str, object] = {"name": name}
    if isinstance(document, Route):
        update.update(_scope_route(scope, entry, team, document))
    elif isinstance(document, Service):
        _check_service(scope, entry, team, document)
    elif isinstance(document, Consumer):
        update.update(_scope_consumer(scope, entry, team, document))
    elif isinstance(document, RateLimitPolicy | Api):
        for plan in document.plans:
            if plan not in grants.plans:
                scope.error(
                    entry, ("plans", plan), f"plan '{plan}' is not granted (grant lacking: plans)", team
                )
        if isinstance(document, Api):  # a team's product covers only the team's own Routes
            routes = (
                scope.resolve(entry, team, ("routes", i), r, "Route") for i, r in enumerate(document.routes)
            )
            update["routes"] = tuple(routes)
    _check_files(scope, entry, team, document)
    return replace(entry, name=name, document=document.model_copy(update=update))


def _names(value: str | tuple[str, ...]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else value


def _scope_route(scope: _Scope, entry: Entry, team: str, route: Route) -> Mapping[str, object]:
    def service(loc: Loc, target: str) -> str:
        return scope.resolve(entry, team, loc, target, "Service")

    update: dict[str, object] = {}
    if route.backend is not None:
        update["backend"] = service(("backend",), route.backend)
    if route.backends is not None:
        update["backends"] = tuple(
            b.model_copy(update={"service": service(("backends", i, "service"), b.service)})
            for i, b in enumerate(route.backends)
        )
    if route.mirror is not None:
        update["mirror"] = route.mirror.model_copy(
            update={"service": service(("mirror", "service"), route.mirror.service)}
        )
    for attribute, kind in (("auth", "AuthPolicy"), ("rate_limit", "RateLimitPolicy")):
        value = getattr(route, attribute)
        single = isinstance(value, str)
        names = tuple(
            scope.resolve(entry, team, (attribute,) if single else (attribute, i), target, kind)
            for i, target in enumerate(_names(value))
        )
        update[attribute] = names[0] if isinstance(value, str) else names
    _check_route_grants(scope, entry, team, route)
    return update


def _check_route_grants(scope: _Scope, entry: Entry, team: str, route: Route) -> None:
    grants = grants_on(scope.teams[team][1], route.gateway)
    if not grants:
        message = f"Gateway '{route.gateway}' is not granted to the team (grant lacking: gateways)"
        scope.error(entry, ("gateway",), message, team)
        return
    for index, host in enumerate(route.hosts):
        covering = [grant for grant in grants if host_covers(grant.host, host)]
        if not covering:
            scope.error(
                entry,
                ("hosts", index),
                f"host '{host}' is not granted on Gateway {route.gateway} (grant lacking: gateways[].hosts)",
                team,
            )
        elif not any(match_within(route.match, grant.path_prefix) for grant in covering):
            prefixes = ", ".join(f"'{grant.path_prefix}'" for grant in covering)
            loc: Loc = ("match", route.match.path_kind)
            scope.error(
                entry,
                loc,
                f"matches paths outside the team's path prefix on host '{host}' (granted: {prefixes})",
                team,
            )


def _check_service(scope: _Scope, entry: Entry, team: str, service: Service) -> None:
    grants = scope.teams[team][1]
    for index, endpoint in enumerate(service.endpoints):
        if not upstream_allowed(grants, endpoint.host):
            scope.error(
                entry,
                ("endpoints", index),
                f"'{endpoint.host}' is outside the team's upstreams (grant lacking: upstreams)",
                team,
            )
    if service.registration is not None:
        scope.error(entry, ("registration",), "a team's Service cannot take registered endpoints", team)


def _scope_consumer(scope: _Scope, entry: Entry, team: str, consumer: Consumer) -> Mapping[str, object]:
    grants = scope.teams[team][1]
    if consumer.plan is not None and consumer.plan not in grants.plans:
        scope.error(entry, ("plan",), f"plan '{consumer.plan}' is not granted (grant lacking: plans)", team)
    if consumer.subscriptions is None:
        return {}
    subscriptions = []
    for i, subscription in enumerate(consumer.subscriptions):
        if subscription.plan is not None and subscription.plan not in grants.plans:
            message = f"plan '{subscription.plan}' is not granted (grant lacking: plans)"
            scope.error(entry, ("subscriptions", i, "plan"), message, team)
        if subscription.api is not None:  # the team's own Api by name, else the platform's
            api = subscription.api
            if ("Api", scoped(team, api)) in scope.defined:
                subscription = subscription.model_copy(update={"api": scoped(team, api)})
            elif team_of_name(api) not in (None, team):
                loc = ("subscriptions", i, "api")
                scope.error(entry, loc, f"'{api}' is an Api of another team: {OWN_OR_SHARED}", team)
            subscriptions.append(subscription)
            continue
        route = scope.resolve(entry, team, ("subscriptions", i, "route"), subscription.route or "", "Route")
        subscriptions.append(subscription.model_copy(update={"route": route}))
    return {"subscriptions": tuple(subscriptions)}


def _check_files(scope: _Scope, entry: Entry, team: str, document: Document) -> None:
    # A team's documents read only the team's files: never the platform's private keys.
    for loc, path in file_paths(document):
        normal = normal_folder(path)
        if normal is None or not any(in_folder(normal, folder) for folder in scope.folders[team]):
            scope.error(entry, loc, f"'{path}' is outside the team's folders", team)
