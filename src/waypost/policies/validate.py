"""Cross-document checks: the rules no single document can check on its own.

The loader validates each document against its model, then hands every document to
:func:`validate`, which finds duplicate names, dangling references, conflicting routes, Gateways
that would bind the same socket on one node, duplicate API keys, and route regexes Envoy's RE2
engine would refuse. Pure: no I/O; positions come from each document's :class:`Source`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, cast

from waypost.policies.diagnostics import Diagnostic
from waypost.policies.identity import RESERVED_HEADERS, credential_headers
from waypost.policies.model import (
    Api,
    AuthPolicy,
    Consumer,
    DenyRule,
    Document,
    Gateway,
    GrpcTarget,
    NodeSelector,
    Portal,
    Route,
)
from waypost.policies.regexes import regex_problem
from waypost.policies.validate_catalog import check_catalog
from waypost.policies.validate_grpc import check_grpc_targets

__all__ = ["Entry", "Loc", "Source", "per_entry", "regex_problem", "validate"]

T = TypeVar("T")

Loc = tuple[str | int, ...]
"""A field path inside a document, as in pydantic: ``("backends", 1, "service")``."""


class Source(Protocol):
    """Where a document was written, and the line of any of its fields."""

    @property
    def path(self) -> str: ...

    def line_of(self, loc: Loc) -> int:
        """The line of the field at ``loc``, or of its nearest enclosing field that exists."""
        ...


@dataclass(frozen=True, slots=True)
class Entry:
    """One document of the directory.

    ``document`` is None when the document failed its own validation (already reported): its name
    still counts as defined, so references to it do not produce a second, misleading error.
    """

    kind: str
    name: str
    source: Source
    document: Document | None
    memo: dict[str, Any] = field(default_factory=dict, init=False, compare=False, repr=False)
    """Results of pure functions of this entry alone (:func:`per_entry`)."""


def per_entry(entry: Entry, name: str, compute: Callable[[Entry], T]) -> T:
    """``compute(entry)``, computed once per entry object and kept with it.

    The loader's :class:`~waypost.policies.load_cache.LoadCache` hands back the very same entries
    for unchanged documents, so the per-document part of a cross-document check (a document's
    reference targets, its route-conflict keys, its own problems) is computed once per edit,
    not once per load; only the combining (dictionary lookups) sees every document each time.
    """
    memo = entry.memo
    if name not in memo:
        memo[name] = compute(entry)
    return cast(T, memo[name])


def validate(entries: Sequence[Entry], *, check_references: bool = True) -> list[Diagnostic]:
    """Every cross-document problem among ``entries``, each at the line of the offending field.

    ``check_references=False`` skips dangling-reference checks: the loader passes it when a file
    could not be parsed, since the missing target may well be in that file.
    """
    out: list[Diagnostic] = []
    defined = _check_duplicate_names(entries, out)
    valid = [entry for entry in entries if entry.document is not None]
    by_kind: dict[str, list[Entry]] = {}
    for entry in valid:
        group = by_kind.get(entry.kind)
        if group is None:
            group = by_kind[entry.kind] = []
        group.append(entry)

    def of(*kinds: str) -> list[Entry]:
        """The valid entries of ``kinds``, in file order (each check reports in that order)."""
        wanted = set(kinds)
        return [entry for entry in valid if entry.kind in wanted]

    if check_references:
        _check_references(valid, defined, out)
    _check_consumers(by_kind.get("Consumer", []), out)
    _check_routes(by_kind.get("Route", []), out)
    _check_gateways(by_kind.get("Gateway", []), out)
    _check_claim_headers(by_kind.get("AuthPolicy", []), out)
    if "GrpcTarget" in by_kind:
        check_grpc_targets(of("GrpcTarget", "Service", "Gateway"), out)
    if by_kind.keys() & {"Api", "Consumer", "Portal"}:
        check_catalog(of("Route", "RateLimitPolicy", "Api", "Consumer", "Portal"), out)
    return out


def _where(entry: Entry) -> str:
    return f"{entry.source.path}:{entry.source.line_of(('name',))}"


def _error(entry: Entry, loc: Loc, message: str) -> Diagnostic:
    return Diagnostic(entry.source.path, entry.source.line_of(loc), entry.kind, entry.name, message)


def _field(loc: Loc) -> str:
    """``("backends", 1, "service")`` -> ``backends[1].service``: how users spell a field."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


# --- names and references ------------------------------------------------------------------------


def _check_duplicate_names(entries: Sequence[Entry], out: list[Diagnostic]) -> dict[str, dict[str, Entry]]:
    defined: dict[str, dict[str, Entry]] = {}
    for entry in entries:
        names = defined.get(entry.kind)
        if names is None:  # not setdefault(kind, {}): that builds a dict per entry
            names = defined[entry.kind] = {}
        first = names.setdefault(entry.name, entry)
        if first is not entry:
            out.append(
                _error(entry, ("name",), f"duplicate {entry.kind} name, first defined at {_where(first)}")
            )
    return defined


_ARTICLE = {"AuthPolicy": "an AuthPolicy", "Api": "an Api"}


_Expected = tuple[tuple[Loc, str, str], ...]
"""(field, target name, target kind) for every reference a document makes."""


def _check_references(
    entries: Sequence[Entry], defined: dict[str, dict[str, Entry]], out: list[Diagnostic]
) -> None:
    none: dict[str, Entry] = {}
    for entry in entries:
        for loc, target, kind in per_entry(entry, "references", _references):
            if target not in defined.get(kind, none):
                article = _ARTICLE.get(kind, f"a {kind}")
                out.append(_error(entry, loc, f"{_field(loc)} '{target}' is not {article}"))


def _references(entry: Entry) -> _Expected:
    found: list[tuple[Loc, str, str]] = []

    def expect(loc: Loc, target: str, kind: str) -> None:
        found.append((loc, target, kind))

    def expect_names(field: str, value: str | tuple[str, ...], kind: str) -> None:
        if isinstance(value, str):
            expect((field,), value, kind)
        else:
            for index, target in enumerate(value):
                expect((field, index), target, kind)

    document = entry.document
    if isinstance(document, Route):
        expect(("gateway",), document.gateway, "Gateway")
        if document.backend is not None:
            expect(("backend",), document.backend, "Service")
        for index, backend in enumerate(document.backends or ()):
            expect(("backends", index, "service"), backend.service, "Service")
        if document.mirror is not None:
            expect(("mirror", "service"), document.mirror.service, "Service")
        expect_names("auth", document.auth, "AuthPolicy")
        expect_names("rate_limit", document.rate_limit, "RateLimitPolicy")
    elif isinstance(document, GrpcTarget):
        for r, grpc_route in enumerate(document.routes):
            if grpc_route.backend is not None:
                expect(("routes", r, "backend"), grpc_route.backend, "Service")
            for index, backend in enumerate(grpc_route.backends or ()):
                expect(("routes", r, "backends", index, "service"), backend.service, "Service")
    elif isinstance(document, Consumer):
        for index, subscription in enumerate(document.subscriptions or ()):
            kind, target = subscription.target
            expect(("subscriptions", index, kind), target, "Route" if kind == "route" else "Api")
    elif isinstance(document, Api):
        expect_names("routes", document.routes, "Route")
    elif isinstance(document, Portal):
        for index, admin in enumerate(document.admins):
            if admin.consumer is not None:
                expect(("admins", index, "consumer"), admin.consumer, "Consumer")
    return tuple(found)


# --- per-kind rules across documents -------------------------------------------------------------


def _check_consumers(entries: Sequence[Entry], out: list[Diagnostic]) -> None:
    # An API key must identify exactly one caller; the same hash on two Consumers would make the
    # identity of whoever holds that key depend on lookup order.
    owners: dict[str, tuple[Entry, int]] = {}
    for entry in entries:
        document = entry.document
        if not isinstance(document, Consumer):
            continue
        for index, key_hash in enumerate(document.api_keys):
            owner, owner_index = owners.setdefault(key_hash, (entry, index))
            if owner is entry and owner_index != index:
                message = f"api_keys[{index}]: same key as api_keys[{owner_index}]"
                out.append(_error(entry, ("api_keys", index), message))
            elif owner is not entry:
                out.append(
                    _error(
                        entry,
                        ("api_keys", index),
                        f"api_keys[{index}]: key already belongs to Consumer {owner.name} ({_where(owner)})",
                    )
                )
        seen_targets: dict[tuple[str, str], int] = {}
        for index, subscription in enumerate(document.subscriptions or ()):
            kind, target = subscription.target
            first = seen_targets.setdefault((kind, target), index)
            if first != index:
                out.append(
                    _error(
                        entry,
                        ("subscriptions", index, kind),
                        f"subscriptions[{index}].{kind}: {kind} '{target}' is already in"
                        f" subscriptions[{first}]",
                    )
                )
        if document.account is not None:
            for key_hash in document.account.keys:
                if key_hash not in document.api_keys:
                    loc = ("account", "keys", key_hash)
                    out.append(_error(entry, loc, "account.keys: describes a key that is not in api_keys"))


def _check_routes(entries: Sequence[Entry], out: list[Diagnostic]) -> None:
    # Two routes with the same gateway, host and match: only one could ever be chosen, and which
    # one would depend on file order. Methods and headers are compared as sets.
    claimed: dict[tuple[object, ...], Entry] = {}
    for entry in entries:
        problems, claims = per_entry(entry, "route claims", _route_claims)
        out.extend(problems)
        reported: set[int] = set()
        for claim in claims:
            other = claimed.setdefault(claim, entry)
            if other is not entry and id(other) not in reported:
                reported.add(id(other))
                out.append(
                    _error(
                        entry,
                        ("match",),
                        f"conflicts with Route {other.name} ({_where(other)}): same gateway"
                        f" '{claim[0]}', host '{claim[1]}' and match",
                    )
                )


def _route_claims(entry: Entry) -> tuple[tuple[Diagnostic, ...], tuple[tuple[object, ...], ...]]:
    """A Route's own problems (its patterns), and the (gateway, host, match) it claims."""
    route = entry.document
    assert isinstance(route, Route)
    problems: list[Diagnostic] = []
    _check_deny_patterns(entry, route.deny, problems)
    match = route.match
    if match.regex is not None:
        problem = regex_problem(match.regex)
        if problem is not None:
            problems.append(_error(entry, ("match", "regex"), f"match.regex: {problem}"))
    shape = (
        match.path_kind,
        match.path_value,
        frozenset(match.methods),
        frozenset((name.lower(), value) for name, value in match.headers.items()),
    )
    claims = tuple((route.gateway, host, *shape) for host in dict.fromkeys(route.hosts))
    return tuple(problems), claims


def _check_deny_patterns(entry: Entry, rules: Sequence[DenyRule], out: list[Diagnostic]) -> None:
    for index, rule in enumerate(rules):
        for at, pattern in [(("paths", i), p) for i, p in enumerate(rule.paths)] + [
            (("headers", name), p) for name, p in rule.headers.items()
        ]:
            problem = regex_problem(pattern)
            if problem is not None:
                loc = ("deny", index, *at)
                out.append(_error(entry, loc, f"{_field(loc)}: {problem}"))


def _selectors_disjoint(a: NodeSelector | None, b: NodeSelector | None) -> bool:
    """True only when no node can match both: a proof of disjointness, not a guess."""
    if a is None or b is None:
        return False
    if a.cluster is not None and b.cluster is not None and a.cluster != b.cluster:
        return True
    return any(key in b.labels and b.labels[key] != value for key, value in a.labels.items())


def _normal_address(address: str) -> str | None:
    try:
        return ipaddress.ip_address(address).compressed
    except ValueError:
        return None


def _check_gateways(entries: Sequence[Entry], out: list[Diagnostic]) -> None:
    # Two Gateways on one socket of one node would make Envoy reject the whole listener update.
    by_socket: dict[tuple[str, int], list[tuple[Entry, Gateway]]] = {}
    for entry in entries:
        gateway = entry.document
        if not isinstance(gateway, Gateway):
            continue
        _check_deny_patterns(entry, gateway.deny, out)
        agents = gateway.limits.user_agents if gateway.limits is not None else None
        for field_name in ("allow", "deny"):
            for index, pattern in enumerate(getattr(agents, field_name, ())):
                problem = regex_problem(pattern)
                if problem is not None:
                    loc = ("limits", "user_agents", field_name, index)
                    out.append(_error(entry, loc, f"{_field(loc)}: {problem}"))
        address = _normal_address(gateway.address)
        if address is None:
            out.append(_error(entry, ("address",), f"address: '{gateway.address}' is not an IP address"))
            continue
        earlier = by_socket.setdefault((address, gateway.port), [])
        for other, other_gateway in earlier:
            if not _selectors_disjoint(gateway.nodes, other_gateway.nodes):
                out.append(
                    _error(
                        entry,
                        ("port",),
                        f"port {gateway.port} on {gateway.address} is already used by Gateway"
                        f" {other.name} ({_where(other)}) on the same nodes",
                    )
                )
                break
        earlier.append((entry, gateway))


def _check_claim_headers(entries: Sequence[Entry], out: list[Diagnostic]) -> None:
    # Claim headers are removed from every client request (policies.identity): one naming a
    # credential or a header every request needs would remove that too.
    policies = [e.document for e in entries if isinstance(e.document, AuthPolicy)]
    credentials = credential_headers(policies)
    for entry in entries:
        policy = entry.document
        if not isinstance(policy, AuthPolicy):
            continue
        for index, source in enumerate(policy.identity):
            for claim, header in (source.jwt.claims_to_headers if source.jwt else {}).items():
                name = header.lower()
                why = (
                    "a credential header of an AuthPolicy"
                    if name in credentials
                    else "a header requests need"
                    if name in RESERVED_HEADERS
                    else None
                )
                if why is not None:
                    loc = ("identity", index, "jwt", "claims_to_headers", claim)
                    message = (
                        f"{_field(loc)}: '{header}' is {why}; claim headers are removed from client"
                        " requests, so pick another name (e.g. x-user-id)"
                    )
                    out.append(_error(entry, loc, message))
