"""What a Team's grants allow: hosts and path prefixes, upstream addresses, and how grants overlap.

Pure functions over the model, shared by the loader-side checks (:mod:`waypost.policies.teams`)
and the property tests. The isolation argument they implement: every Team's host grants are
pairwise disjoint (no request can fall under two teams' grants), and every accepted Route of a
team matches only requests under one of its own grants, so no team's Route can match a request on
another team's host and path.

A path prefix is a plain string prefix, as Envoy's ``prefix`` match is: a grant of ``/pay``
covers ``/payments`` too, so two grants on one host are disjoint only when neither prefix starts
with the other.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence

from waypost.policies.model import Api, AuthPolicy, Document, HostGrant, Route, RouteMatch, Service, Team
from waypost.policies.types import HOSTNAME_RE

__all__ = [
    "file_paths",
    "grants_overlap",
    "host_covers",
    "hosts_overlap",
    "match_within",
    "upstream_allowed",
    "upstream_problem",
]


def _suffix(pattern: str) -> str:
    """``*.example.com`` -> ``.example.com``: what every host the wildcard matches ends with."""
    return pattern[1:]


def host_covers(grant: str, host: str) -> bool:
    """True when every request host that Route host ``host`` matches also matches ``grant``."""
    if grant == "*" or grant == host:
        return True
    if host == "*" or not grant.startswith("*."):
        return False
    # Envoy's '*.example.com' matches any name ending in '.example.com', however many labels.
    return host.endswith(_suffix(grant)) and len(host) > len(_suffix(grant))


def hosts_overlap(a: str, b: str) -> bool:
    """True when some request host matches both host patterns."""
    if a == "*" or b == "*" or a == b:
        return True
    if a.startswith("*.") and b.startswith("*."):
        return a.endswith(_suffix(b)) or b.endswith(_suffix(a))
    if a.startswith("*."):
        return host_covers(a, b)
    if b.startswith("*."):
        return host_covers(b, a)
    return False


def _prefixes_overlap(a: str, b: str) -> bool:
    return a.startswith(b) or b.startswith(a)


def grants_overlap(a: HostGrant, b: HostGrant) -> bool:
    """True when two teams may not hold both grants on one Gateway.

    Besides grants some request falls under, that includes two different host patterns that
    overlap (``*.example.com`` and ``a.example.com``) whatever their prefixes: Envoy sends each
    request to one virtual host, the most specific, so the narrower team's host would swallow the
    wider team's requests on it (a 404 where its grant promised its Routes).
    """
    if not hosts_overlap(a.host, b.host):
        return False
    return a.host != b.host or _prefixes_overlap(a.path_prefix, b.path_prefix)


def match_within(match: RouteMatch, prefix: str) -> bool:
    """True when every path ``match`` accepts starts with ``prefix``."""
    if prefix == "/":
        return True
    if match.prefix is not None:
        return match.prefix.startswith(prefix)
    if match.path is not None:
        return match.path.startswith(prefix)
    return False  # a regex: its paths cannot be bounded by a prefix


def upstream_problem(grant: str) -> str | None:
    """Why an ``upstreams`` entry is not a CIDR or a host pattern, or None."""
    if "/" in grant:
        try:
            ipaddress.ip_network(grant, strict=False)
        except ValueError:
            return f"'{grant}' is not a CIDR such as 10.1.0.0/16"
        return None
    try:
        ipaddress.ip_address(grant)
        return None
    except ValueError:
        pass
    if HOSTNAME_RE.match(grant.lower()) is None:
        return f"'{grant}' is not a CIDR, an IP address, a host name or '*.domain'"
    return None


def upstream_allowed(team: Team, host: str) -> bool:
    """True when a Service of ``team`` may send traffic to ``host`` (an IP or a DNS name)."""
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for grant in team.upstreams:
        if address is not None:
            network = _network(grant)
            if network is not None and address in network:
                return True
        elif "/" not in grant and host_covers(grant.lower(), host.lower()):
            return True
    return False


@functools.lru_cache(maxsize=4096)
def _network(grant: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    # Parsed once per grant, not once per endpoint: thousands of endpoints share a few grants.
    try:
        return ipaddress.ip_network(grant, strict=False)
    except ValueError:
        return None


def grants_on(team: Team, gateway: str) -> Sequence[HostGrant]:
    return tuple(host for grant in team.gateways if grant.gateway == gateway for host in grant.hosts)


def file_paths(document: Document) -> list[tuple[tuple[str | int, ...], str]]:
    """(field location, path) of every file a document names: a team's must be in its folders."""
    found: list[tuple[tuple[str | int, ...], str]] = []
    if isinstance(document, Service) and document.tls is not None:
        found += [
            (("tls", f), v) for f in ("ca", "cert", "key") if (v := getattr(document.tls, f)) is not None
        ]
    elif isinstance(document, Route) and document.grpc_json is not None:
        found.append((("grpc_json", "descriptor"), document.grpc_json.descriptor))
    elif isinstance(document, AuthPolicy):
        found += [
            (("identity", i, "jwt", "jwks"), s.jwt.jwks)
            for i, s in enumerate(document.identity)
            if s.jwt is not None and "://" not in s.jwt.jwks
        ]
    elif isinstance(document, Api) and document.openapi is not None:
        found.append((("openapi",), document.openapi))
    return found
