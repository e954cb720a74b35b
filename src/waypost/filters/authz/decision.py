"""The values a decision is made from and made of: the request, the caller's identity, a plugin's
answer and the decision itself, with the denial and allow constructors that build them.

Contracts: every type here is plain data, built per request (a transport fills in the
:class:`AuthRequest`) or per policy version, and not mutated once built. :func:`deny` and
:func:`allowed` cache their :class:`Decision` objects: equal arguments give the very same object,
which the transports use to cache their encodings by decision (a hit on an identical object is
cheapest). A denial's body is ``{"error": ..., "reason": ...}`` (policy-spec, AuthPolicy), byte for
byte what the native JWT filter's local reply renders (:mod:`waypost.xds.compiler.jwt_native`).
No I/O, no logging.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from waypost.contract import CONSUMER_HEADER
from waypost.policies.model import Consumer

__all__ = [
    "DRY_RUN",
    "AuthRequest",
    "Decision",
    "Failure",
    "Identity",
    "PluginResult",
    "allowed",
    "deny",
    "json_str",
]


@dataclass(slots=True)
class AuthRequest:
    """What a decision needs from one HTTP request, whatever transport carried it."""

    route: str
    policies: tuple[str, ...]
    method: str
    path: str
    headers: Mapping[str, str]
    host: str = ""
    principal: str = ""
    """The peer certificate's identity as Envoy reports it (URI/DNS SAN or subject)."""
    certificate: str = ""
    source_ip: str = ""

    def attributes(self) -> dict[str, Any]:
        """The plain-data view given to plugins and CEL."""
        return {
            "route": self.route,
            "method": self.method,
            "path": self.path,
            "host": self.host,
            "headers": dict(self.headers),
            "principal": self.principal,
            "source_ip": self.source_ip,
        }


@dataclass(frozen=True, slots=True)
class Identity:
    kind: str
    name: str
    consumer: Consumer | None = None
    roles: frozenset[str] = frozenset()
    scopes: frozenset[str] = frozenset()
    claims: Mapping[str, Any] = field(default_factory=dict)
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def plan(self) -> str | None:
        return self.consumer.plan if self.consumer is not None else None

    def cel_view(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "consumer": self.name,
            "plan": self.plan or "",
            "roles": sorted(self.roles),
            "scopes": sorted(self.scopes),
            "labels": dict(self.consumer.labels) if self.consumer is not None else {},
            "claims": dict(self.claims),
        }


@dataclass(frozen=True, slots=True)
class PluginResult:
    """What a custom plugin returns (a dict with the same keys works too).

    ``allow`` False denies with ``status`` (401 or 403) and ``reason``; ``consumer`` names the
    caller (a Consumer of that name lends its plan, roles and subscriptions); ``headers`` go to
    the upstream. A plugin returning None saw no credential of its kind: the next source is tried.
    """

    allow: bool
    consumer: str | None = None
    roles: tuple[str, ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    reason: str = ""
    status: int = 403


@dataclass(frozen=True, slots=True)
class Decision:
    status: int
    """200 allows; anything else is the HTTP status the client gets."""
    reason: str
    consumer: str = ""
    plan: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    """Allowed: headers for the upstream. Denied: headers for the client."""
    body: bytes = b""
    client_headers: tuple[tuple[str, str], ...] = ()
    """Allowed: headers added to the client's response (the ``ratelimit-*`` of a counted quota)."""

    @property
    def allowed(self) -> bool:
        return self.status == 200


@dataclass(frozen=True, slots=True)
class Failure:
    """An identity source saw a credential of its kind and rejected it (or could not judge it)."""

    status: int
    reason: str
    challenge_error: bool = False


_ERRORS = {
    401: "unauthorized",
    403: "forbidden",
    429: "too many requests",
    500: "internal error",
    503: "unavailable",
}
_JSON = (("content-type", "application/json"),)


@functools.lru_cache(maxsize=4096)
def deny(status: int, reason: str, extra: tuple[tuple[str, str], ...] = (), consumer: str = "") -> Decision:
    body = (
        '{{"error": "{}", "reason": {}}}'.format(_ERRORS.get(status, "denied"), json_str(reason))
    ).encode()
    return Decision(status=status, reason=reason, consumer=consumer, headers=_JSON + extra, body=body)


def json_str(value: object) -> str:
    return json.dumps(value)


DRY_RUN = Decision(status=200, reason="dry run")


@functools.lru_cache(maxsize=4096)
def allowed(consumer: str, plan: str | None) -> Decision:
    """An allow without claim headers: one object per consumer and plan, reused (the transports
    cache their encodings by decision, and a hit on an identical object is cheapest)."""
    return Decision(
        status=200, reason="allowed", consumer=consumer, plan=plan, headers=((CONSUMER_HEADER, consumer),)
    )
