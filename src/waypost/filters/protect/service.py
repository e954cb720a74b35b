"""The body-check decision: validate a request against its Route's schemas, screen its body.

:class:`BodyChecks` follows the policy runtime like the auth core: each applied version compiles
every checking route once (schemas via :func:`~waypost.policies.request_schemas.compile_validation`,
rules via :class:`~waypost.filters.protect.screen.BodyScreen`) and swaps them in whole. A Check
names its route in the ``check`` context extension; the answer is encoded CheckResponse bytes:

- validation failure: 400, JSON ``{"error": ..., "problems": [{"in", "at", "message"}, ...]}``;
- a screening match in ``block`` mode: 403, JSON naming the rule (never echoing the payload);
  in ``log`` mode the request goes on. Either way one log line and one count
  (``waypost_screen_matches_total{route,rule,mode}``);
- a route this version does not know (Envoy ahead of or behind the decision service): 503, so an
  unchecked request never reaches the backend.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2
from google.rpc import status_pb2
from prometheus_client import Counter

from waypost.contract import BODY_CHECK_EXTENSION
from waypost.filters.protect.screen import BodyScreen
from waypost.log import get_logger
from waypost.policies.model import PolicySet, Route
from waypost.policies.protect import Screen
from waypost.policies.request_checks import RequestSpec
from waypost.policies.request_schemas import compile_validation

__all__ = ["CHECK_EXTENSION", "SCREEN_MATCHES", "VALIDATION_FAILURES", "BodyChecks", "PreparedChecks"]

log = get_logger("waypost.protect")

CHECK_EXTENSION = BODY_CHECK_EXTENSION

SCREEN_MATCHES = Counter(
    "waypost_screen_matches_total",
    "Request bodies the injection rules matched, by route, rule and mode (block, log).",
    ["route", "rule", "mode"],
)
VALIDATION_FAILURES = Counter(
    "waypost_validation_failures_total", "Requests refused by validation (400), by route.", ["route"]
)

_JSON = base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key="content-type", value="application/json"))


@dataclass(frozen=True)
class _RouteChecks:
    spec: RequestSpec | None
    screen: Screen | None
    body_screen: BodyScreen | None


@dataclass(frozen=True)
class PreparedChecks:
    """A version's compiled checks, ready to swap in."""

    version: str
    routes: Mapping[str, _RouteChecks]


def _encode(status: int, body: dict[str, object] | None) -> bytes:
    response = external_auth_pb2.CheckResponse()
    if body is None:
        response.status.CopyFrom(status_pb2.Status(code=0))
        response.ok_response.SetInParent()
    else:
        response.status.CopyFrom(status_pb2.Status(code=3 if status == 400 else 7 if status == 403 else 14))
        response.denied_response.status.code = status
        response.denied_response.headers.append(_JSON)
        response.denied_response.body = json.dumps(body, separators=(",", ":"))
    return bytes(response.SerializeToString(deterministic=True))


_ALLOW = _encode(200, None)
_UNKNOWN = _encode(503, {"error": "this route's checks are not loaded yet; retry"})


class BodyChecks:
    """Thread-safe: :meth:`apply` swaps one dict reference; :meth:`check` only reads it."""

    def __init__(self) -> None:
        self._routes: Mapping[str, _RouteChecks] = {}
        self.version: str | None = None

    def prepare(self, policy: PolicySet) -> PreparedChecks:
        """Compile every checking route of ``policy`` (off the event loop: schemas compile here).
        Raises SchemaProblem for a file that does not compile: the version is refused."""
        routes = {}
        for name, route in policy.routes.items():
            checks = _compile(route, policy)
            if checks is not None:
                routes[name] = checks
        return PreparedChecks(version=policy.version, routes=routes)

    def commit(self, prepared: PreparedChecks) -> None:
        self._routes = prepared.routes
        self.version = prepared.version

    def apply(self, policy: PolicySet) -> None:
        self.commit(self.prepare(policy))

    def check(self, request: external_auth_pb2.CheckRequest) -> bytes:
        attributes = request.attributes
        route_name = attributes.context_extensions.get(CHECK_EXTENSION, "")
        checks = self._routes.get(route_name)
        if checks is None:
            return _UNKNOWN
        http = attributes.request.http
        body = http.raw_body or http.body.encode()
        headers = http.headers
        if checks.spec is not None:
            problems = checks.spec.problems(http.method, http.path, headers, body)
            if problems:
                VALIDATION_FAILURES.labels(route_name).inc()
                return _encode(
                    400,
                    {"error": "request does not match the API", "problems": [p.as_json() for p in problems]},
                )
        if checks.body_screen is not None and checks.screen is not None and body:
            rule = checks.body_screen.match(body, headers.get("content-type", ""))
            if rule is not None:
                mode = checks.screen.mode
                SCREEN_MATCHES.labels(route_name, rule, mode).inc()
                log.warning(
                    "request screened",
                    route=route_name,
                    rule=rule,
                    mode=mode,
                    where="body",
                    client=attributes.source.address.socket_address.address,
                    request_id=headers.get("x-request-id", ""),
                )
                if mode == "block":
                    return _encode(403, {"error": "request blocked by injection screening", "rule": rule})
        return _ALLOW


def _compile(route: Route, policy: PolicySet) -> _RouteChecks | None:
    body_screen = route.screen is not None and route.screen.body
    if route.validation is None and not body_screen:
        return None
    spec = compile_validation(route.validation, policy.files) if route.validation is not None else None
    screen = BodyScreen(route.screen.rules) if body_screen and route.screen is not None else None
    return _RouteChecks(spec=spec, screen=route.screen, body_screen=screen)
