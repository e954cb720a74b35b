"""The authorization decision core: who is calling, may they call this route, and the outcome.

Transport-free: the gRPC Check service (:mod:`.grpc_service`) turns a CheckRequest into an
:class:`AuthRequest` and a :class:`Decision` back into bytes. Everything that can be prepared per
policy version is prepared once in :meth:`AuthzCore.apply` (a :class:`RoutePlan` per route: its
identity sources, compiled rules and CEL programs, the consumer index by key hash), and swapped in
with one assignment, so a request always sees one whole version.

Outcomes (policy-spec, AuthPolicy): no or bad credential 401 with ``www-authenticate``; a known
caller no rule allows 403; a subscription not approved 403 with its reason; every denial a JSON
body ``{"error": ..., "reason": ...}``; an allowed request gets ``x-waypost-consumer`` and the
configured claim headers.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import inspect
import json
import posixpath
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import jwt

from waypost.contract import CONSUMER_HEADER
from waypost.filters.authz.decision_log import DecisionLog
from waypost.filters.authz.guard import REFILL_SECONDS, FailedKeyGuard
from waypost.filters.authz.jwks import KeySet, RemoteKeySet, parse_jwks
from waypost.filters.authz.plugins import load_plugins
from waypost.log import get_logger
from waypost.metrics import AUTHZ_DECISIONS
from waypost.policies.cel_env import compile_expression
from waypost.policies.model import AuthPolicy, Consumer, IdentitySource, PolicySet, Rule, RuleMatch
from waypost.policies.teams import SEPARATOR, team_of_name

__all__ = [
    "AuthRequest",
    "AuthzCore",
    "Decision",
    "Identity",
    "PluginResult",
    "PreparedAuthz",
    "hash_api_key",
]

log = get_logger("waypost.authz")
_decision_log = DecisionLog()

JWT_LEEWAY_S = 30
ROLES_CLAIM = "roles"


def hash_api_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


# --- Requests, identities, decisions ------------------------------------------------------------


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
class _Failure:
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
def _deny(status: int, reason: str, extra: tuple[tuple[str, str], ...] = (), consumer: str = "") -> Decision:
    body = (
        '{{"error": "{}", "reason": {}}}'.format(_ERRORS.get(status, "denied"), _json_str(reason))
    ).encode()
    return Decision(status=status, reason=reason, consumer=consumer, headers=_JSON + extra, body=body)


def _json_str(value: object) -> str:
    return json.dumps(value)


# --- Identity sources ---------------------------------------------------------------------------

Resolution = Identity | _Failure | None
Source = Callable[[AuthRequest], "Resolution | Awaitable[Resolution]"]
Quota = Callable[[str, Decision], "Decision | Awaitable[Decision]"]
"""(route, allowed decision) -> the decision after counting the consumer's quota (see quota.py)."""


class _Index:
    """Consumers of one policy version, by key hash and by declared identity; ``failed_keys``
    outlives versions.

    A team's Consumer is named ``<team>~<name>`` in the policy, but a JWT subject, a certificate
    name or a plugin names it as its team wrote it (``<name>``): identities are matched by that
    declared name, on a team's route the team's own Consumer first, then the platform's (as the
    team's references resolve). A scoped name never matches: an issuer cannot pick another
    team's Consumer by writing ``<team>~<name>`` in a subject.
    """

    def __init__(self, consumers: Mapping[str, Consumer], failed_keys: FailedKeyGuard | None = None) -> None:
        self.failed_keys = failed_keys or FailedKeyGuard()
        self.by_identity: dict[tuple[str | None, str], Consumer] = {}
        self.by_key: dict[str, tuple[str, Consumer]] = {}
        for consumer in consumers.values():
            team, scoped, declared = consumer.name.partition(SEPARATOR)
            self.by_identity[(team, declared) if scoped else (None, consumer.name)] = consumer
            for key_hash in consumer.api_keys:
                digest = key_hash.removeprefix("sha256:")
                self.by_key[digest] = (digest, consumer)

    def find(self, route: str, identity: str) -> Consumer | None:
        """The Consumer ``identity`` (as the caller presents it) names on ``route``, if any."""
        team = team_of_name(route)
        found = self.by_identity.get((team, identity)) if team is not None else None
        return found if found is not None else self.by_identity.get((None, identity))

    def identity_for(self, kind: str, route: str, name: str, **extra: Any) -> Identity:
        consumer = self.find(route, name)
        roles = frozenset(consumer.roles) if consumer is not None else frozenset()
        roles |= frozenset(extra.pop("roles", ()))
        # A Consumer found is named as everywhere else (api keys, quotas, analytics): its policy name.
        name = consumer.name if consumer is not None else name
        return Identity(kind=kind, name=name, consumer=consumer, roles=roles, **extra)


def _api_key_source(header: str, index: _Index) -> Source:
    def resolve(request: AuthRequest) -> Resolution:
        value = request.headers.get(header)
        if not value:
            return None
        # Checked before the key: an address that keeps guessing learns nothing more. Only known
        # addresses count (the HTTP endpoint is not told the client's; see guard.py).
        address = request.source_ip
        if address and index.failed_keys.blocked(address):
            return _Failure(429, "too many invalid api keys from this address")
        digest = hashlib.sha256(value.encode()).hexdigest()
        found = index.by_key.get(digest)
        # The dict lookup finds the candidate; the comparison that decides runs in constant time.
        if found is None or not hmac.compare_digest(found[0], digest):
            if address:
                index.failed_keys.failed(address)
            return _Failure(401, "invalid api key")
        consumer = found[1]
        return Identity(
            kind="api_key", name=consumer.name, consumer=consumer, roles=frozenset(consumer.roles)
        )

    return resolve


def _jwt_source(spec: Any, keys: KeySet | RemoteKeySet, index: _Index) -> Source:
    header = spec.header.lower()
    audiences = list(spec.audiences) or None
    claim_headers = tuple(sorted(spec.claims_to_headers.items()))

    def resolve(request: AuthRequest) -> Resolution:
        raw = request.headers.get(header)
        if not raw:
            return None
        token = raw
        if header == "authorization":
            scheme, _, token = raw.partition(" ")
            if scheme.lower() != "bearer":
                return None  # Basic or another scheme: not a credential of this kind
            token = token.strip()
        try:
            unverified = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return _Failure(401, "invalid token: malformed", challenge_error=True)
        alg = unverified.get("alg")
        kid = unverified.get("kid")
        if not isinstance(alg, str) or alg.lower() == "none":
            return _Failure(401, "invalid token: algorithm not allowed", challenge_error=True)
        if not keys.ready:
            return _Failure(401, "invalid token: signing keys not available yet", challenge_error=True)
        entry = keys.find(kid if isinstance(kid, str) else None)
        if entry is None:
            return _Failure(401, "invalid token: unknown signing key", challenge_error=True)
        if alg not in entry.algorithms:
            return _Failure(401, "invalid token: algorithm not allowed", challenge_error=True)
        try:
            claims = jwt.decode(
                token,
                key=entry.key,
                algorithms=[alg],
                audience=audiences,
                issuer=spec.issuer,
                leeway=JWT_LEEWAY_S,
                # `iat` is informational (RFC 7519): validity is exp and nbf, as Envoy's jwt_authn has it.
                options={"require": ["exp", "iss"], "verify_aud": audiences is not None, "verify_iat": False},
            )
        except jwt.ExpiredSignatureError:
            return _Failure(401, "invalid token: expired", challenge_error=True)
        except jwt.ImmatureSignatureError:
            return _Failure(401, "invalid token: not yet valid", challenge_error=True)
        except jwt.InvalidAudienceError:
            return _Failure(401, "invalid token: wrong audience", challenge_error=True)
        except jwt.InvalidIssuerError:
            return _Failure(401, "invalid token: wrong issuer", challenge_error=True)
        except jwt.InvalidSignatureError:
            return _Failure(401, "invalid token: bad signature", challenge_error=True)
        except jwt.PyJWTError as exc:
            return _Failure(401, f"invalid token: {exc}", challenge_error=True)
        subject = str(claims.get("sub") or "")
        if not subject:
            return _Failure(401, "invalid token: no subject", challenge_error=True)
        roles = claims.get(ROLES_CLAIM) or ()
        roles = (roles,) if isinstance(roles, str) else tuple(str(r) for r in roles if isinstance(r, str))
        scope = claims.get("scope")
        scopes = scope.split() if isinstance(scope, str) else list(claims.get("scp") or ())
        headers = tuple(
            (name.lower(), _claim_text(claims[claim])) for claim, name in claim_headers if claim in claims
        )
        return index.identity_for(
            "jwt",
            request.route,
            subject,
            roles=roles,
            scopes=frozenset(str(s) for s in scopes),
            claims=claims,
            headers=headers,
        )

    return resolve


def _claim_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return _json_str(value) if isinstance(value, dict) else str(value)


def _mtls_source(index: _Index) -> Source:
    def resolve(request: AuthRequest) -> Resolution:
        principal = request.principal
        if not principal:
            return None
        name = principal
        if index.find(request.route, principal) is None:
            # A certificate without SANs is reported by subject: its CN may name a Consumer.
            for part in principal.split(","):
                key, _, value = part.strip().partition("=")
                if key.upper() == "CN" and index.find(request.route, value) is not None:
                    name = value
                    break
        return index.identity_for("mtls", request.route, name)

    return resolve


def _custom_source(plugin: str, function: Callable[..., Any], timeout_ms: int, index: _Index) -> Source:
    timeout = timeout_ms / 1000
    is_async = inspect.iscoroutinefunction(function)

    async def resolve(request: AuthRequest) -> Resolution:
        attributes = request.attributes()
        try:
            if is_async:
                result = await asyncio.wait_for(function(attributes), timeout)
            else:
                result = await asyncio.wait_for(asyncio.to_thread(function, attributes), timeout)
            return _plugin_resolution(result, index, request.route)
        except TimeoutError:
            log.error("auth plugin timed out", plugin=plugin, route=request.route, timeout_ms=timeout_ms)
            return _Failure(500, "auth plugin timed out")
        except Exception:
            log.exception("auth plugin failed", plugin=plugin, route=request.route)
            return _Failure(500, "auth plugin failed")

    resolve.is_async = True  # type: ignore[attr-defined]
    return resolve


def _plugin_resolution(result: Any, index: _Index, route: str) -> Resolution:
    if result is None:
        return None
    if isinstance(result, Mapping):
        result = PluginResult(**result)
    if isinstance(result, bool):
        result = PluginResult(allow=result)
    if not isinstance(result, PluginResult):
        raise TypeError(f"an auth plugin returns PluginResult, a dict, a bool or None, not {type(result)}")
    if not result.allow:
        return _Failure(
            result.status if result.status in (401, 403) else 403, result.reason or "denied by plugin"
        )
    headers = tuple((k.lower(), str(v)) for k, v in sorted(result.headers.items()))
    return index.identity_for(
        "custom", route, result.consumer or "anonymous", roles=result.roles, headers=headers
    )


# --- Rules --------------------------------------------------------------------------------------


def _path_matcher(patterns: Sequence[str]) -> Callable[[str], bool]:
    exact = frozenset(p for p in patterns if not p.endswith("*"))
    prefixes = tuple(p[:-1] for p in patterns if p.endswith("*"))

    def matches(path: str) -> bool:
        if path in exact or path.startswith(prefixes):
            return True
        # /v1/orders/admin also covers what lies below it, /v1/orders/admin/users.
        return any(path.startswith(p.rstrip("/") + "/") for p in exact)

    return matches


@dataclass(frozen=True, slots=True)
class _CompiledRule:
    allow: bool
    roles: frozenset[str]
    scopes: frozenset[str]
    methods: frozenset[str]
    paths: Callable[[str], bool] | None
    when: Any
    text: str

    def matches(self, request: AuthRequest, path: str, identity: Identity) -> bool:
        if self.methods and request.method not in self.methods:
            return False
        if self.paths is not None and not self.paths(path):
            return False
        if self.roles and not (self.roles & identity.roles):
            return False
        if self.scopes and not (self.scopes & identity.scopes):
            return False
        if self.when is not None:
            try:
                result = self.when.execute(
                    {
                        "request": {
                            "method": request.method,
                            "path": path,
                            "host": request.host,
                            "headers": dict(request.headers),
                        },
                        "identity": identity.cel_view(),
                    }
                )
            except Exception as exc:
                # A failing expression never widens access: an allow does not match, a deny does.
                log.warning("cel rule failed", rule=self.text, error=str(exc))
                return not self.allow
            return result is True
        return True


def _compile_rule(rule: Rule) -> _CompiledRule:
    match: RuleMatch = rule.allow if rule.allow is not None else rule.deny  # type: ignore[assignment]
    return _CompiledRule(
        allow=rule.allow is not None,
        roles=frozenset(match.roles),
        scopes=frozenset(match.scopes),
        methods=frozenset(match.methods),
        paths=_path_matcher(match.paths) if match.paths else None,
        when=compile_expression(match.when) if match.when is not None else None,
        text=("allow " if rule.allow is not None else "deny ") + match.model_dump_json(exclude_defaults=True),
    )


def normalize_path(raw: str) -> str:
    """The path rules are matched against: query dropped, escapes decoded, dot segments resolved.

    Envoy normalizes first (normalize_path, merge_slashes); this is the belt to its braces, so a
    deny rule holds even for a gateway configured by hand.
    """
    path = raw.split("?", 1)[0].split("#", 1)[0]
    if "%" in path:
        path = unquote(path)
    if "//" in path or "/." in path:
        trailing = path.endswith("/") and len(path) > 1
        path = posixpath.normpath("/" + path.lstrip("/"))
        if path.startswith("//"):
            path = "/" + path.lstrip("/")
        if trailing and path != "/":
            path += "/"
    return path or "/"


# --- Plans --------------------------------------------------------------------------------------


@dataclass(slots=True)
class _PolicyPlan:
    name: str
    sources: tuple[Source, ...]
    is_async: bool
    rules: tuple[_CompiledRule, ...]
    dry_run: bool
    challenge: str
    challenge_error: str


@dataclass(slots=True)
class RoutePlan:
    """Everything one route's decisions need, prepared once per policy version."""

    route: str
    policies: tuple[_PolicyPlan, ...]
    is_async: bool
    counters: dict[str, Any] = field(default_factory=dict)

    def count(self, decision: str) -> None:
        counter = self.counters.get(decision)
        if counter is None:
            counter = self.counters[decision] = AUTHZ_DECISIONS.labels(self.route, decision)
        counter.inc()


def _build_policy_plan(
    policy: AuthPolicy, policy_set: PolicySet, index: _Index, plugins: Mapping[str, Callable[..., Any]]
) -> _PolicyPlan:
    sources: list[Source] = []
    challenges: list[str] = []
    for source in policy.identity:
        sources.append(_build_source(source, policy_set, index, plugins))
        if source.api_key is not None:
            challenges.append(f'ApiKey header="{source.api_key.header}"')
        elif source.jwt is not None:
            challenges.append('Bearer realm="waypost"')
    challenge = ", ".join(dict.fromkeys(challenges)) or 'Bearer realm="waypost"'
    return _PolicyPlan(
        name=policy.name,
        sources=tuple(sources),
        is_async=any(getattr(s, "is_async", False) for s in sources),
        rules=tuple(_compile_rule(rule) for rule in policy.rules),
        dry_run=policy.mode == "dry_run",
        challenge=challenge,
        challenge_error=challenge.replace(
            'Bearer realm="waypost"', 'Bearer realm="waypost", error="invalid_token"'
        ),
    )


def _build_source(
    source: IdentitySource, policy_set: PolicySet, index: _Index, plugins: Mapping[str, Callable[..., Any]]
) -> Source:
    if source.api_key is not None:
        return _api_key_source(source.api_key.header.lower(), index)
    if source.jwt is not None:
        jwks = source.jwt.jwks
        keys: KeySet | RemoteKeySet
        keys = RemoteKeySet.get(jwks) if jwks.startswith("https://") else parse_jwks(policy_set.files[jwks])
        return _jwt_source(source.jwt, keys, index)
    if source.mtls is not None:
        return _mtls_source(index)
    assert source.custom is not None
    plugin = source.custom.plugin
    return _custom_source(plugin, plugins[plugin], source.custom.timeout, index)


@dataclass(frozen=True, slots=True)
class _Grant:
    """A Consumer's subscription as it applies to one route."""

    status: str
    plan: str | None
    """The plan of the Api subscription granting the route; None: the Consumer's own plan."""


@dataclass(frozen=True)
class _Version:
    """One policy version's plans (:data:`PreparedAuthz`), made by :meth:`AuthzCore.prepare`."""

    version: str
    routes: Mapping[str, RoutePlan]
    subscriptions: Mapping[str, Mapping[str, _Grant]]
    """consumer -> route -> grant, for Consumers that list subscriptions."""


_STATUS_RANK = {"approved": 2, "pending": 1, "revoked": 0}


def _grants(consumer: Consumer, policy: PolicySet) -> dict[str, _Grant]:
    """Route subscriptions and Api subscriptions (one per route of the Api), by route.

    When several name one route, the most permissive status wins (an approved Api subscription
    is not undone by a revoked subscription to one of its routes: revoke both to revoke), and a
    direct route subscription keeps the Consumer's plan over an Api's.
    """
    grants: dict[str, _Grant] = {}
    for subscription in consumer.subscriptions or ():
        plan = subscription.plan if subscription.api is not None else None
        for route in policy.subscribed_routes(subscription):
            grant = _Grant(subscription.status, plan)
            held = grants.get(route)
            if held is None or _STATUS_RANK[grant.status] > _STATUS_RANK[held.status]:
                grants[route] = grant
    return grants


PreparedAuthz = _Version

# --- The core -----------------------------------------------------------------------------------

_UNKNOWN_ROUTE = _deny(403, "route has no auth plan")
_NOT_READY = _deny(503, "no policy loaded")


class AuthzCore:
    """Decides requests against the current policy version; :meth:`apply` swaps versions."""

    def __init__(self, quota: Quota | None = None) -> None:
        """``quota``: counts an admitted consumer's request (one hop, see quota.py); settable
        later as :attr:`quota`, before the first decision."""
        self._current: _Version | None = None
        self.failed_keys = FailedKeyGuard()
        self.quota = quota

    @property
    def version(self) -> str | None:
        return self._current.version if self._current is not None else None

    def apply(self, policy: PolicySet) -> None:
        """:meth:`prepare` and :meth:`commit` in one step (raises PolicyError, changing nothing)."""
        self.commit(self.prepare(policy))

    def prepare(self, policy: PolicySet) -> PreparedAuthz:
        """Every route's plan for ``policy``, not yet current. Any thread; PolicyError (file:line)
        when a ``custom`` plugin cannot be imported: the version is refused, nothing changes."""
        plugins = load_plugins(policy)
        index = _Index(policy.consumers, self.failed_keys)
        policy_plans = {
            name: _build_policy_plan(auth, policy, index, plugins)
            for name, auth in sorted(policy.auth_policies.items())
        }
        routes = {}
        for name, route in policy.routes.items():
            plans = tuple(policy_plans[p] for p in route.auth_policies if p in policy_plans)
            if plans:
                routes[name] = RoutePlan(route=name, policies=plans, is_async=any(p.is_async for p in plans))
        subscriptions = {
            c.name: _grants(c, policy) for c in policy.consumers.values() if c.subscriptions is not None
        }
        return _Version(policy.version, routes, subscriptions)

    def commit(self, prepared: PreparedAuthz) -> None:
        """Make a prepared version current (one assignment: a request sees one whole version)."""
        self._current = prepared
        log.info("authz plans applied", version=prepared.version, routes=len(prepared.routes))

    def plan_for(self, route: str) -> RoutePlan | None:
        current = self._current
        return current.routes.get(route) if current is not None else None

    def decide(self, request: AuthRequest) -> Decision | Awaitable[Decision]:
        """A Decision, or an awaitable of one when the route's plan calls an async plugin."""
        started = time.perf_counter_ns()
        current = self._current
        if current is None:
            return self._finish(None, request, _NOT_READY, started, False)
        plan = current.routes.get(request.route)
        if plan is None:
            return self._finish(None, request, _UNKNOWN_ROUTE, started, False)
        if plan.is_async:
            return self._decide_async(current, plan, request, started)
        path = normalize_path(request.path)
        outcome = _Outcome()
        for policy in plan.policies:
            identity: Resolution = None
            for source in policy.sources:
                identity = source(request)  # type: ignore[assignment]
                if identity is not None:
                    break
            if not self._judge(current, plan, policy, request, path, identity, outcome):
                break
        decision = self._count(plan, outcome.result())
        if not isinstance(decision, Decision):
            return self._finish_later(plan, request, decision, started, outcome.dry_run_denied)
        return self._finish(plan, request, decision, started, outcome.dry_run_denied)

    def _count(self, plan: RoutePlan, decision: Decision) -> Decision | Awaitable[Decision]:
        """The decision after counting an admitted consumer's quota (no quota: unchanged)."""
        if self.quota is None or not decision.consumer or not decision.allowed:
            return decision
        return self.quota(plan.route, decision)

    async def _finish_later(
        self, plan: RoutePlan, request: AuthRequest, counted: Awaitable[Decision], started: int, dry_run: bool
    ) -> Decision:
        return self._finish(plan, request, await counted, started, dry_run)

    async def _decide_async(
        self, current: _Version, plan: RoutePlan, request: AuthRequest, started: int
    ) -> Decision:
        path = normalize_path(request.path)
        outcome = _Outcome()
        for policy in plan.policies:
            identity: Resolution = None
            for source in policy.sources:
                result = source(request)
                identity = await result if inspect.isawaitable(result) else result
                if identity is not None:
                    break
            if not self._judge(current, plan, policy, request, path, identity, outcome):
                break
        decision = self._count(plan, outcome.result())
        if not isinstance(decision, Decision):
            decision = await decision
        return self._finish(plan, request, decision, started, outcome.dry_run_denied)

    def _judge(
        self,
        current: _Version,
        plan: RoutePlan,
        policy: _PolicyPlan,
        request: AuthRequest,
        path: str,
        identity: Resolution,
        outcome: _Outcome,
    ) -> bool:
        """Apply one policy's verdict to ``outcome``; False stops (an enforced denial)."""
        denial: Decision | None = None
        if identity is None:
            denial = _deny(401, "missing credentials", (("www-authenticate", policy.challenge),))
        elif isinstance(identity, _Failure):
            extra = (
                (("www-authenticate", policy.challenge_error),)
                if identity.status == 401
                else (("retry-after", str(int(REFILL_SECONDS))),)
                if identity.status == 429
                else ()
            )
            denial = _deny(identity.status, identity.reason, extra)
        else:
            denial = self._authorize(current, plan, policy, request, path, identity)
        if denial is None:
            assert isinstance(identity, Identity)
            outcome.admit(identity, self._plan_of(current, plan.route, identity))
            return True
        if policy.dry_run:
            outcome.dry_run_denied = True
            log.info(
                "authz dry-run denial",
                route=plan.route,
                policy=policy.name,
                consumer=identity.name if isinstance(identity, Identity) else "",
                status=denial.status,
                reason=denial.reason,
            )
            return True
        outcome.denial = denial
        return False

    def _authorize(
        self,
        current: _Version,
        plan: RoutePlan,
        policy: _PolicyPlan,
        request: AuthRequest,
        path: str,
        identity: Identity,
    ) -> Decision | None:
        # A team's Consumers call only that team's Routes (platform Consumers call any route).
        consumer_team = team_of_name(identity.consumer.name) if identity.consumer else None
        if consumer_team is not None and consumer_team != team_of_name(plan.route):
            return _deny(
                403, f"consumer of team {consumer_team}: not a caller of this route", consumer=identity.name
            )
        subscriptions = current.subscriptions.get(identity.consumer.name) if identity.consumer else None
        if subscriptions is not None:
            grant = subscriptions.get(plan.route)
            status = grant.status if grant is not None else None
            if status == "pending":
                return _deny(403, "subscription pending approval", consumer=identity.name)
            if status == "revoked":
                return _deny(403, "subscription revoked", consumer=identity.name)
            if status != "approved":
                return _deny(403, "no subscription to this route", consumer=identity.name)
        if not policy.rules:
            return None  # authentication only: any known caller may pass
        for rule in policy.rules:
            if rule.matches(request, path, identity):
                return None if rule.allow else _deny(403, "denied by rule", consumer=identity.name)
        return _deny(403, "no rule allows this request", consumer=identity.name)

    @staticmethod
    def _plan_of(current: _Version, route: str, identity: Identity) -> str | None:
        """The plan limits count against: an Api subscription's plan on its routes, else the
        Consumer's."""
        if identity.consumer is None:
            return identity.plan
        grant = current.subscriptions.get(identity.consumer.name, {}).get(route)
        if grant is not None and grant.plan is not None:
            return grant.plan
        return identity.plan

    def _finish(
        self, plan: RoutePlan | None, request: AuthRequest, decision: Decision, started: int, dry_run: bool
    ) -> Decision:
        verdict = "allow" if decision.allowed else "deny"
        if plan is not None:
            plan.count("dry_run_deny" if dry_run and decision.allowed else verdict)
        _decision_log(
            request.route,
            decision.consumer,
            verdict,
            decision.status,
            decision.reason,
            dry_run,
            (time.perf_counter_ns() - started) // 1000,
        )
        return decision


class _Outcome:
    __slots__ = ("denial", "dry_run_denied", "headers", "identity", "plan")

    def __init__(self) -> None:
        self.denial: Decision | None = None
        self.dry_run_denied = False
        self.identity: Identity | None = None
        self.plan: str | None = None
        self.headers: list[tuple[str, str]] = []

    def admit(self, identity: Identity, plan: str | None) -> None:
        if self.identity is None:
            self.identity = identity
            self.plan = plan
        self.headers.extend(identity.headers)

    def result(self) -> Decision:
        if self.denial is not None:
            return self.denial
        identity = self.identity
        if identity is None:  # every policy was a dry-run denial
            return _DRY_RUN
        if not self.headers:
            return _allowed(identity.name, self.plan)
        headers = tuple(dict([(CONSUMER_HEADER, identity.name), *self.headers]).items())
        return Decision(status=200, reason="allowed", consumer=identity.name, plan=self.plan, headers=headers)


_DRY_RUN = Decision(status=200, reason="dry run")


@functools.lru_cache(maxsize=4096)
def _allowed(consumer: str, plan: str | None) -> Decision:
    """An allow without claim headers: one object per consumer and plan, reused (the transports
    cache their encodings by decision, and a hit on an identical object is cheapest)."""
    return Decision(
        status=200, reason="allowed", consumer=consumer, plan=plan, headers=((CONSUMER_HEADER, consumer),)
    )
