"""Identity sources: who is calling, from an API key, a JWT, a client certificate (mTLS) or a
``custom`` plugin, and the index of one policy version's Consumers they resolve callers against.

Contracts: :func:`build_source` turns one ``IdentitySource`` of the policy into a
:data:`Source`, once per policy version. A source is called once per request and returns a
:data:`Resolution`: None when the request carries no credential of its kind (the next source is
tried), a :class:`~.decision.Failure` when it carries a bad one, else an
:class:`~.decision.Identity`. Sources are synchronous except ``custom`` ones, which return an
awaitable and are marked ``is_async`` (the core awaits only routes that have one). A bad
credential is a failure, not an exception; a plugin's exception or timeout is a 500 failure,
logged. An API key is compared by its sha256 (:func:`hash_api_key`, the form kept in git) in
constant time; failed guesses count per address in the :class:`~.guard.FailedKeyGuard`, which
outlives versions.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import jwt

from waypost.filters.authz.decision import AuthRequest, Failure, Identity, PluginResult, json_str
from waypost.filters.authz.guard import FailedKeyGuard
from waypost.filters.authz.jwks import KeySet, RemoteKeySet, parse_jwks
from waypost.log import get_logger
from waypost.policies.model import Consumer, IdentitySource, PolicySet
from waypost.policies.teams import SEPARATOR, team_of_name

__all__ = [
    "JWT_LEEWAY_S",
    "ROLES_CLAIM",
    "ConsumerIndex",
    "Resolution",
    "Source",
    "build_source",
    "hash_api_key",
]

log = get_logger("waypost.authz")

JWT_LEEWAY_S = 30
ROLES_CLAIM = "roles"


def hash_api_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


Resolution = Identity | Failure | None
Source = Callable[[AuthRequest], "Resolution | Awaitable[Resolution]"]


class ConsumerIndex:
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


def _api_key_source(header: str, index: ConsumerIndex) -> Source:
    def resolve(request: AuthRequest) -> Resolution:
        value = request.headers.get(header)
        if not value:
            return None
        # Checked before the key: an address that keeps guessing learns nothing more. Only known
        # addresses count (the HTTP endpoint is not told the client's; see guard.py).
        address = request.source_ip
        if address and index.failed_keys.blocked(address):
            return Failure(429, "too many invalid api keys from this address")
        digest = hashlib.sha256(value.encode()).hexdigest()
        found = index.by_key.get(digest)
        # The dict lookup finds the candidate; the comparison that decides runs in constant time.
        if found is None or not hmac.compare_digest(found[0], digest):
            if address:
                index.failed_keys.failed(address)
            return Failure(401, "invalid api key")
        consumer = found[1]
        return Identity(
            kind="api_key", name=consumer.name, consumer=consumer, roles=frozenset(consumer.roles)
        )

    return resolve


def _jwt_source(spec: Any, keys: KeySet | RemoteKeySet, index: ConsumerIndex) -> Source:
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
            return Failure(401, "invalid token: malformed", challenge_error=True)
        alg = unverified.get("alg")
        kid = unverified.get("kid")
        if not isinstance(alg, str) or alg.lower() == "none":
            return Failure(401, "invalid token: algorithm not allowed", challenge_error=True)
        if not keys.ready:
            return Failure(401, "invalid token: signing keys not available yet", challenge_error=True)
        entry = keys.find(kid if isinstance(kid, str) else None)
        if entry is None:
            return Failure(401, "invalid token: unknown signing key", challenge_error=True)
        if alg not in entry.algorithms:
            return Failure(401, "invalid token: algorithm not allowed", challenge_error=True)
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
            return Failure(401, "invalid token: expired", challenge_error=True)
        except jwt.ImmatureSignatureError:
            return Failure(401, "invalid token: not yet valid", challenge_error=True)
        except jwt.InvalidAudienceError:
            return Failure(401, "invalid token: wrong audience", challenge_error=True)
        except jwt.InvalidIssuerError:
            return Failure(401, "invalid token: wrong issuer", challenge_error=True)
        except jwt.InvalidSignatureError:
            return Failure(401, "invalid token: bad signature", challenge_error=True)
        except jwt.PyJWTError as exc:
            return Failure(401, f"invalid token: {exc}", challenge_error=True)
        subject = str(claims.get("sub") or "")
        if not subject:
            return Failure(401, "invalid token: no subject", challenge_error=True)
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
    return json_str(value) if isinstance(value, dict) else str(value)


def _mtls_source(index: ConsumerIndex) -> Source:
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


def _custom_source(
    plugin: str, function: Callable[..., Any], timeout_ms: int, index: ConsumerIndex
) -> Source:
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
            return Failure(500, "auth plugin timed out")
        except Exception:
            log.exception("auth plugin failed", plugin=plugin, route=request.route)
            return Failure(500, "auth plugin failed")

    resolve.is_async = True  # type: ignore[attr-defined]
    return resolve


def _plugin_resolution(result: Any, index: ConsumerIndex, route: str) -> Resolution:
    if result is None:
        return None
    if isinstance(result, Mapping):
        result = PluginResult(**result)
    if isinstance(result, bool):
        result = PluginResult(allow=result)
    if not isinstance(result, PluginResult):
        raise TypeError(f"an auth plugin returns PluginResult, a dict, a bool or None, not {type(result)}")
    if not result.allow:
        return Failure(
            result.status if result.status in (401, 403) else 403, result.reason or "denied by plugin"
        )
    headers = tuple((k.lower(), str(v)) for k, v in sorted(result.headers.items()))
    return index.identity_for(
        "custom", route, result.consumer or "anonymous", roles=result.roles, headers=headers
    )


def build_source(
    source: IdentitySource,
    policy_set: PolicySet,
    index: ConsumerIndex,
    plugins: Mapping[str, Callable[..., Any]],
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
