"""JWT-only AuthPolicies enforced by Envoy itself: jwt_authn + rbac, no call to waypost.

A route whose AuthPolicy Envoy can enforce exactly as waypost's decision service would
(:func:`native_policy`) gets Envoy's ``jwt_authn`` filter (one provider per policy: issuer,
audiences, the policy's JWKS file inline, ``sub`` to ``x-waypost-consumer``, the configured claim
headers, the payload as dynamic metadata) and a per-route ``rbac`` config expressing the policy's
rules; ext_authz is disabled on that route (:mod:`.ext_authz`). Denials are Envoy local replies,
rewritten by the connection manager's ``local_reply_config`` (:func:`patch_hcm_native_replies`,
matching on the response code details jwt_authn and rbac set) into the decision service's exact
outcomes: 401 with ``www-authenticate`` or 403, and the JSON body ``{"error": ..., "reason": ...}``.

Eligibility (strict: exactness matters more than coverage). A route is native when all hold:

- it names exactly one AuthPolicy, in ``enforce`` mode, with exactly one identity source, ``jwt``;
- the JWKS is a policy file (not an https:// URL) holding exactly one RSA or EC key with a
  ``kid`` (with several keys, waypost refuses a token without ``kid``; Envoy would try each key);
- ``claims_to_headers`` names only ``sub`` and ``iss`` (Envoy writes list and object claims
  base64-encoded, waypost comma-joined or as JSON), and no claim header is ``x-waypost-consumer``;
- no rule has a ``when`` expression, and every rule path is made of unreserved URL characters
  (``A-Z a-z 0-9 - . _ ~ /``, with an optional trailing ``*``), so Envoy's normalized path and
  waypost's decoded one cannot differ on it;
- no Consumer has roles, a plan or subscriptions (a Consumer named like a token's ``sub`` would
  lend them to the caller, and only the decision service knows Consumers);
- the route's rate limits neither count ``by: consumer`` nor have ``plans``, and its header
  mutations do not read ext_authz metadata (the consumer/plan metadata contract is the ext_authz
  namespace, which only the decision service fills).

Rules keep their meaning: first matching rule wins, no match is 403. Any order is expressible,
because the rbac config is one DENY policy per outcome: ``waypost-denied-by-rule`` (some deny rule
matches and no earlier allow rule does), ``waypost-no-rule-allows`` (no rule matches) and
``waypost-no-exp`` and ``waypost-no-subject`` (the token has no ``exp``, or no string ``sub``:
401, as waypost answers).

Known differences, all on tokens that are refused either way with the same status, body shape and
``www-authenticate``, only the reason text differs: a token whose ``kid`` is known but whose
``alg`` does not fit the key says ``invalid token: unknown signing key`` (waypost: ``algorithm not
allowed``); an unsigned ``alg: none`` token says ``invalid token: malformed`` (waypost: ``algorithm
not allowed``); a token with several defects may be refused for another of them. A non-string
``sub`` is refused natively as ``no subject`` (waypost admits it under its text form). Both paths
check ``exp`` and ``nbf`` and ignore ``iat``, as the spec asks. ``roles``,
``scope`` or ``scp`` claims of unusual JSON types (an object, a list of numbers, ``scp`` as a
string) match only their string members natively.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.core.v3 import substitution_format_string_pb2 as sfs_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.type.matcher.v3 import metadata_pb2, path_pb2, regex_pb2, string_pb2, value_pb2
from google.protobuf import wrappers_pb2

from waypost.contract import CONSUMER_HEADER
from waypost.policies.model import AuthPolicy, Gateway, PolicySet, Route, RuleMatch
from waypost.policies.regexes import regex_problem
from waypost.xds.compiler.pb import pack as _pack

__all__ = [
    "JWT_AUTHN_FILTER",
    "RBAC_FILTER",
    "JwtAuthnFeature",
    "NativeRbacFeature",
    "native_policy",
    "native_routes",
    "patch_hcm_native_replies",
]

JWT_AUTHN_FILTER = "envoy.filters.http.jwt_authn"
RBAC_FILTER = "waypost.rbac.jwt"
"""Not Envoy's default rbac name: the Gateway's deny filter has that one, and a per-route config
is looked up by filter name, so a shared name would let this route's rules replace the gateway's."""
PAYLOAD_KEY = "waypost_jwt"
"""jwt_authn files the verified payload under this key of its metadata namespace."""

JWT_LEEWAY_S = 30  # waypost.filters.authz.identity_sources.JWT_LEEWAY_S
CHALLENGE = 'Bearer realm="waypost"'
CHALLENGE_ERROR = 'Bearer realm="waypost", error="invalid_token"'

DENIED_BY_RULE = "waypost-denied-by-rule"
NO_RULE_ALLOWS = "waypost-no-rule-allows"
NO_SUBJECT = "waypost-no-subject"
NO_EXP = "waypost-no-exp"

_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._~/-]*\*?$")
_KEY_TYPES = frozenset({"RSA", "EC"})
_STRING_CLAIMS = frozenset({"sub", "iss"})


# --- Eligibility --------------------------------------------------------------------------------


def native_policy(route: Route, policy: PolicySet) -> AuthPolicy | None:
    """The route's AuthPolicy when Envoy can enforce it exactly as waypost would, else None."""
    if len(route.auth_policies) != 1:
        return None
    auth = policy.auth_policies.get(route.auth_policies[0])
    if auth is None or auth.mode != "enforce" or len(auth.identity) != 1:
        return None
    spec = auth.identity[0].jwt
    if spec is None or spec.jwks.startswith("https://") or _jwks_text(spec.jwks, policy) is None:
        return None
    # Envoy writes list and object claims base64-encoded; `sub` (a string, or the token is
    # refused) and `iss` (equal to the issuer) are the claims whose header is known to match.
    if not set(spec.claims_to_headers) <= _STRING_CLAIMS:
        return None
    if any(header.lower() == CONSUMER_HEADER for header in spec.claims_to_headers.values()):
        return None
    for rule in auth.rules:
        match = rule.allow or rule.deny
        if match is None or match.when is not None:
            return None
        if not all(_SAFE_PATH.match(p) for p in match.paths):
            return None
        # A long scope makes a regex over Envoy's RE2 program-size limit: the decision service
        # checks it instead of a NACK.
        if any(regex_problem(_scope_word(scope)) is not None for scope in match.scopes):
            return None
    if any(c.roles or c.plan is not None or c.subscriptions is not None for c in policy.consumers.values()):
        return None
    for name in route.rate_limit_policies:
        limits = policy.rate_limit_policies.get(name)
        if limits is not None and (limits.plans or any(limit.by == "consumer" for limit in limits.limits)):
            return None
    if "ext_authz" in repr((route.request_headers, route.response_headers)):
        return None
    return auth


def native_routes(policy: PolicySet) -> Mapping[str, AuthPolicy]:
    """Every natively enforced route of ``policy``, with its AuthPolicy."""
    last = _last_native
    if last and last[0] is policy:
        return cast(Mapping[str, AuthPolicy], last[1])  # several features bind to one version
    found = {}
    for name, route in policy.routes.items():
        if not route.auth:  # the raw field, not auth_policies: this walks every route per version
            continue
        auth = native_policy(route, policy)
        if auth is not None:
            found[name] = auth
    _last_native[:] = [policy, found]
    return found


_last_native: list[Any] = []
"""[policy, its native routes] of the last call (a policy is frozen, so this stays true)."""


def _jwks_text(path: str, policy: PolicySet) -> str | None:
    """The JWKS file's text when it holds exactly one RSA/EC key with a kid."""
    data = policy.files.get(path)
    if data is None:
        return None
    try:
        document = json.loads(data)
    except ValueError:
        return None
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list) or len(keys) != 1:
        return None
    key = keys[0]
    if not isinstance(key, dict) or key.get("kty") not in _KEY_TYPES or not isinstance(key.get("kid"), str):
        return None
    return data.decode() if isinstance(data, bytes) else str(data)


# --- jwt_authn ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Native:
    routes: Mapping[str, AuthPolicy]

    def on(self, routes: Sequence[Route]) -> dict[str, AuthPolicy]:
        """The AuthPolicies natively enforced on these routes, by name."""
        return {self.routes[r.name].name: self.routes[r.name] for r in routes if r.name in self.routes}


class JwtAuthnFeature:
    """Envoy's jwt_authn filter: one provider and requirement per natively enforced AuthPolicy.

    On every gateway (empty where no route is native), so adding or removing native routes never
    replaces the listener (see :mod:`.ext_authz`). The providers do change with their policies,
    and then the listener is replaced; connections opened before keep the old providers while
    the route table changes at once. So requirements are named after their provider's content
    (:func:`requirement_name`): a route whose policy changed names a requirement the old chain
    lacks, which jwt_authn refuses (403) rather than verify against a stale JWKS, issuer or
    audience. Unchanged policies keep their names and keep working on old connections."""

    filter_name = JWT_AUTHN_FILTER

    def __init__(self, policy: PolicySet | None = None) -> None:
        self._policy = policy
        self._native = _Native(native_routes(policy) if policy is not None else {})

    def bind(self, policy: PolicySet) -> JwtAuthnFeature:
        return JwtAuthnFeature(policy)

    def applies(self, gateway: Gateway, routes: Sequence[Route]) -> bool:
        return True

    def http_filter(self, gateway: Gateway, routes: Sequence[Route]) -> hcm_pb2.HttpFilter:
        config = jwt_pb2.JwtAuthentication()
        for _, auth in sorted(self._native.on(routes).items()):
            assert self._policy is not None
            provider = _provider(auth, self._policy)
            name = requirement_name(auth.name, provider)
            config.providers[name].CopyFrom(provider)
            config.requirement_map[name].CopyFrom(jwt_pb2.JwtRequirement(provider_name=name))
        return hcm_pb2.HttpFilter(name=JWT_AUTHN_FILTER, typed_config=_pack(config))

    def patch_route(self, route: Route, xds_route: route_components_pb2.Route) -> None:
        auth = self._native.routes.get(route.name)
        if auth is not None:
            assert self._policy is not None
            name = requirement_name(auth.name, _provider(auth, self._policy))
            per_route = jwt_pb2.PerRouteConfig(requirement_name=name)
        else:
            per_route = jwt_pb2.PerRouteConfig(disabled=True)
        xds_route.typed_per_filter_config[JWT_AUTHN_FILTER].CopyFrom(_pack(per_route))


def requirement_name(policy_name: str, provider: jwt_pb2.JwtProvider) -> str:
    """``policy-<12 hex>``: the AuthPolicy's name and a digest of everything its provider checks."""
    digest = hashlib.sha256(provider.SerializeToString(deterministic=True)).hexdigest()[:12]
    return f"{policy_name}-{digest}"


def _provider(auth: AuthPolicy, policy: PolicySet) -> jwt_pb2.JwtProvider:
    spec = auth.identity[0].jwt
    assert spec is not None
    jwks = _jwks_text(spec.jwks, policy)
    assert jwks is not None
    header = spec.header.lower()
    # waypost reads `Bearer` case-insensitively; Envoy's prefix is literal, so list the spellings.
    from_headers = (
        [jwt_pb2.JwtHeader(name=header, value_prefix=p) for p in ("Bearer ", "bearer ", "BEARER ")]
        if header == "authorization"
        else [jwt_pb2.JwtHeader(name=header)]
    )
    claim_headers = [jwt_pb2.JwtClaimToHeader(header_name=CONSUMER_HEADER, claim_name="sub")] + [
        jwt_pb2.JwtClaimToHeader(header_name=h.lower(), claim_name=c)
        for c, h in sorted(spec.claims_to_headers.items())
    ]
    return jwt_pb2.JwtProvider(
        issuer=spec.issuer,
        audiences=list(spec.audiences),
        local_jwks=base_pb2.DataSource(inline_string=jwks),
        from_headers=from_headers,
        # Only the configured header carries tokens (no `access_token` query parameter).
        from_params=[],
        # The credential itself stays the upstream's business, as on the ext_authz path.
        forward=True,
        payload_in_metadata=PAYLOAD_KEY,
        claim_to_headers=claim_headers,
        clock_skew_seconds=JWT_LEEWAY_S,
    )


# --- rbac ---------------------------------------------------------------------------------------


class NativeRbacFeature:
    """Envoy's rbac filter, configured per natively enforced route (allow-all elsewhere); on every
    gateway, so native routes come and go without replacing the listener."""

    filter_name = RBAC_FILTER

    def __init__(self, policy: PolicySet | None = None) -> None:
        self._native = _Native(native_routes(policy) if policy is not None else {})

    def bind(self, policy: PolicySet) -> NativeRbacFeature:
        return NativeRbacFeature(policy)

    def applies(self, gateway: Gateway, routes: Sequence[Route]) -> bool:
        return True

    def http_filter(self, gateway: Gateway, routes: Sequence[Route]) -> hcm_pb2.HttpFilter:
        # No rules at the filter level: routes without a per-route config are not restricted.
        return hcm_pb2.HttpFilter(name=RBAC_FILTER, typed_config=_pack(rbac_filter_pb2.RBAC()))

    def patch_route(self, route: Route, xds_route: route_components_pb2.Route) -> None:
        auth = self._native.routes.get(route.name)
        if auth is None:
            return
        per_route = rbac_filter_pb2.RBACPerRoute(rbac=rbac_filter_pb2.RBAC(rules=build_rbac(auth)))
        xds_route.typed_per_filter_config[RBAC_FILTER].CopyFrom(_pack(per_route))


def build_rbac(auth: AuthPolicy) -> rbac_pb2.RBAC:
    """One DENY policy per denial outcome; they exclude each other, so the matched policy's name
    (in the response code details) is the reason."""
    # waypost checks the token's claims in this order: `exp` present, then `sub`, then the rules.
    # jwt_authn's require_expiration is not used: it reports a missing exp as a bad signature.
    has_exp = _metadata("exp", value_pb2.ValueMatcher(present_match=True))
    has_subject = _and([has_exp, _metadata("sub", value_pb2.ValueMatcher(string_match=_regex("(?s).+")))])
    policies = {NO_EXP: _policy(_not(has_exp)), NO_SUBJECT: _policy(_and([has_exp, _not(has_subject)]))}
    matches: list[tuple[bool, rbac_pb2.Permission]] = [
        (rule.allow is not None, _rule_permission(rule.allow or rule.deny))  # type: ignore[arg-type]
        for rule in auth.rules
    ]
    if matches:
        denied = []
        for i, (allow, permission) in enumerate(matches):
            earlier_allows = [p for a, p in matches[:i] if a]
            if not allow:
                denied.append(_and([permission, *(_not(p) for p in earlier_allows)]))
        if denied:
            policies[DENIED_BY_RULE] = _policy(_and([has_subject, _or(denied)]))
        policies[NO_RULE_ALLOWS] = _policy(_and([has_subject, *(_not(p) for _, p in matches)]))
    return rbac_pb2.RBAC(action=rbac_pb2.RBAC.DENY, policies=policies)


def _rule_permission(match: RuleMatch) -> rbac_pb2.Permission:
    """A rule's match as one permission: every listed condition, each satisfied by any value."""
    parts: list[rbac_pb2.Permission] = []
    if match.methods:
        parts.append(_or([_header(":method", m) for m in match.methods]))
    if match.paths:
        parts.append(_or([p for pattern in match.paths for p in _path_permissions(pattern)]))
    if match.roles:
        parts.append(_or([p for role in match.roles for p in _claim_has("roles", role)]))
    if match.scopes:
        parts.append(_or([_scope(s) for s in match.scopes]))
    return _and(parts) if parts else rbac_pb2.Permission(any=True)


def _path_permissions(pattern: str) -> list[rbac_pb2.Permission]:
    # As waypost's _path_matcher: `p*` a prefix; `p` itself and everything below `p/`.
    if pattern.endswith("*"):
        return [_url_path(string_pb2.StringMatcher(prefix=pattern[:-1]))]
    return [
        _url_path(string_pb2.StringMatcher(exact=pattern)),
        _url_path(string_pb2.StringMatcher(prefix=pattern.rstrip("/") + "/")),
    ]


def _claim_has(claim: str, value: str) -> list[rbac_pb2.Permission]:
    """The claim is this string, or a list holding it (waypost reads `roles` both ways)."""
    exact = value_pb2.ValueMatcher(string_match=string_pb2.StringMatcher(exact=value))
    return [
        _metadata(claim, exact),
        _metadata(claim, value_pb2.ValueMatcher(list_match=value_pb2.ListMatcher(one_of=exact))),
    ]


def _scope(scope: str) -> rbac_pb2.Permission:
    """waypost's scopes: the space-separated `scope` string when it is a string, else `scp`."""
    word = _scope_word(scope)
    scope_is_string = _metadata("scope", value_pb2.ValueMatcher(string_match=_regex("(?s).*")))
    in_scp = _metadata(
        "scp",
        value_pb2.ValueMatcher(
            list_match=value_pb2.ListMatcher(
                one_of=value_pb2.ValueMatcher(string_match=string_pb2.StringMatcher(exact=scope))
            )
        ),
    )
    return _or(
        [
            _metadata("scope", value_pb2.ValueMatcher(string_match=_regex(word))),
            _and([_not(scope_is_string), in_scp]),
        ]
    )


def _scope_word(scope: str) -> str:
    return rf"(?s)(^|.*\s){re.escape(scope)}(\s.*|$)"


def _metadata(claim: str, value: value_pb2.ValueMatcher) -> rbac_pb2.Permission:
    return rbac_pb2.Permission(
        sourced_metadata=rbac_pb2.SourcedMetadata(
            metadata_matcher=metadata_pb2.MetadataMatcher(
                filter=JWT_AUTHN_FILTER,
                path=[
                    metadata_pb2.MetadataMatcher.PathSegment(key=PAYLOAD_KEY),
                    metadata_pb2.MetadataMatcher.PathSegment(key=claim),
                ],
                value=value,
            ),
            metadata_source=rbac_pb2.MetadataSource.DYNAMIC,
        )
    )


def _regex(expression: str) -> string_pb2.StringMatcher:
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=expression))


def _header(name: str, value: str) -> rbac_pb2.Permission:
    return rbac_pb2.Permission(
        header=route_components_pb2.HeaderMatcher(
            name=name, string_match=string_pb2.StringMatcher(exact=value)
        )
    )


def _url_path(matcher: string_pb2.StringMatcher) -> rbac_pb2.Permission:
    return rbac_pb2.Permission(url_path=path_pb2.PathMatcher(path=matcher))


def _and(parts: Sequence[rbac_pb2.Permission]) -> rbac_pb2.Permission:
    if len(parts) == 1:
        return parts[0]
    return rbac_pb2.Permission(and_rules=rbac_pb2.Permission.Set(rules=list(parts)))


def _or(parts: Sequence[rbac_pb2.Permission]) -> rbac_pb2.Permission:
    if len(parts) == 1:
        return parts[0]
    return rbac_pb2.Permission(or_rules=rbac_pb2.Permission.Set(rules=list(parts)))


def _not(part: rbac_pb2.Permission) -> rbac_pb2.Permission:
    return rbac_pb2.Permission(not_rule=part)


def _policy(permission: rbac_pb2.Permission) -> rbac_pb2.Policy:
    return rbac_pb2.Policy(permissions=[permission], principals=[rbac_pb2.Principal(any=True)])


# --- Local replies ------------------------------------------------------------------------------

_JWT_REASONS: tuple[tuple[str, str], ...] = (
    ("Jwt_is_expired", "invalid token: expired"),
    ("Jwt_not_yet_valid", "invalid token: not yet valid"),
    ("Audiences_in_Jwt_are_not_allowed", "invalid token: wrong audience"),
    ("Jwt_issuer_is_not_configured", "invalid token: wrong issuer"),
    ("Jwt_verification_fails", "invalid token: bad signature"),
    ("Jwks_doesn't_have_key_to_match_kid_or_alg_from_Jwt", "invalid token: unknown signing key"),
    ("Jwt_header_[alg]_field_value_is_invalid", "invalid token: algorithm not allowed"),
    ("Jwt_header_[alg]_is_not_supported", "invalid token: algorithm not allowed"),
)
"""jwt_authn's failure (its status text, spaces as underscores) -> waypost's reason."""


def patch_hcm_native_replies(gateway: Gateway, hcm: hcm_pb2.HttpConnectionManager) -> None:
    """Rewrite jwt_authn and rbac refusals into waypost's outcomes, on gateways that have them."""
    if not any(f.name == JWT_AUTHN_FILTER for f in hcm.http_filters):
        return
    jwt_denied = "jwt_authn_access_denied"
    mappers = [
        _mapper(f'response.code_details == "{jwt_denied}{{Jwt_is_missing}}"', 401, "missing credentials")
    ]
    mappers += [
        _mapper(f'response.code_details == "{jwt_denied}{{{detail}}}"', 401, reason)
        for detail, reason in _JWT_REASONS
    ]
    # Every other token failure (bad base64, bad JSON, wrong number of segments): malformed.
    mappers.append(
        _mapper(f'response.code_details.startsWith("{jwt_denied}")', 401, "invalid token: malformed")
    )
    rbac_denied = "rbac_access_denied_matched_policy"
    for name, status, reason in (
        (NO_EXP, 401, 'invalid token: Token is missing the "exp" claim'),
        (NO_SUBJECT, 401, "invalid token: no subject"),
        (DENIED_BY_RULE, 403, "denied by rule"),
        (NO_RULE_ALLOWS, 403, "no rule allows this request"),
    ):
        mappers.append(_mapper(f'response.code_details == "{rbac_denied}[{name}]"', status, reason))
    hcm.local_reply_config.mappers.extend(mappers)


_ERRORS = {401: "unauthorized", 403: "forbidden"}


def _mapper(expression: str, status: int, reason: str) -> hcm_pb2.ResponseMapper:
    # The body is byte for byte the decision service's (waypost.filters.authz.decision.deny).
    body = f'{{"error": "{_ERRORS[status]}", "reason": {json.dumps(reason)}}}'
    mapper = hcm_pb2.ResponseMapper(
        filter=accesslog_pb2.AccessLogFilter(
            extension_filter=accesslog_pb2.ExtensionFilter(
                name="envoy.access_loggers.extension_filters.cel",
                typed_config=_pack(cel_pb2.ExpressionFilter(expression=expression)),
            )
        ),
        status_code=wrappers_pb2.UInt32Value(value=status),
        body_format_override=_text(body),
    )
    if status == 401:
        challenge = CHALLENGE if reason == "missing credentials" else CHALLENGE_ERROR
        mapper.headers_to_add.append(
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key="www-authenticate", value=challenge),
                append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
            )
        )
    return mapper


def _text(body: str) -> sfs_pb2.SubstitutionFormatString:
    # `%` would start a command operator; reasons here carry none.
    return sfs_pb2.SubstitutionFormatString(
        text_format_source=base_pb2.DataSource(inline_string=body), content_type="application/json"
    )
