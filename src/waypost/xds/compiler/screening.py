"""Route.screen -> injection screening Envoy enforces itself: an RBAC filter configured per route.

Each category of :mod:`waypost.policies.screening` (``sqli``, ``xss``, ``traversal``, ``command``) becomes
one DENY policy, named for it, whose rules are one RE2 pattern per place: the ``:path`` (path and
query, percent-encoded forms included) and each screened header. One pattern per category rather
than per rule: Envoy scans each value four times instead of twenty-odd (measured in
bench/threat.py); the decision service, which screens bodies, names the exact rule. ``mode: block``
puts the policies in ``rules`` (403); ``mode: log`` in ``shadow_rules`` (counted and logged, the
request goes on). Routes without ``screen`` carry no per-route config and pass untouched.

Counted by Envoy per rule (``track_per_rule_stats``): ``http.<gateway>.rbac.screen.policy.<category>.denied``
(block) and ``...shadow_denied`` (log). Logged once per match by :func:`patch_hcm_screen_log`: one
JSON line on Envoy's stdout naming the rule, the route and the client.
"""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import substitution_format_string_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.type.matcher.v3 import metadata_pb2, regex_pb2, string_pb2, value_pb2
from google.protobuf import struct_pb2, wrappers_pb2

from waypost.policies.model import Gateway, Route, Screen
from waypost.policies.screening import native_regex, rules_for
from waypost.xds.compiler.pb import pack

__all__ = [
    "SCREEN_FILTER",
    "SCREEN_STAT_PREFIX",
    "ScreenFeature",
    "build_screen_rbac",
    "patch_hcm_screen_log",
]

SCREEN_FILTER = "waypost.screen"
SCREEN_STAT_PREFIX = "screen."
_RBAC_METADATA = "envoy.filters.http.rbac"
# Envoy prefixes its RBAC metadata keys with the stat prefixes.
_ENFORCED_KEY = f"{SCREEN_STAT_PREFIX}enforced_effective_policy_id"
_SHADOW_KEY = f"{SCREEN_STAT_PREFIX}shadow_effective_policy_id"


def _regex_header(name: str, pattern: str) -> rbac_pb2.Permission:
    matcher = string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=pattern))
    return rbac_pb2.Permission(header=route_components_pb2.HeaderMatcher(name=name, string_match=matcher))


def build_screen_rbac(screen: Screen) -> rbac_pb2.RBAC:
    """One DENY policy per category, each matching the path or any screened header."""
    headers = sorted({h.lower() for h in screen.headers})
    policies: dict[str, rbac_pb2.Policy] = {}
    for category in screen.rules:
        rules = rules_for((category,))
        places = [_regex_header(":path", native_regex(rules, "path"))]
        header_pattern = native_regex(rules, "header")
        places.extend(_regex_header(name, header_pattern) for name in headers)
        policies[category] = rbac_pb2.Policy(
            permissions=[rbac_pb2.Permission(or_rules=rbac_pb2.Permission.Set(rules=places))],
            principals=[rbac_pb2.Principal(any=True)],
        )
    return rbac_pb2.RBAC(action=rbac_pb2.RBAC.DENY, policies=policies)


def _filter_config(screen: Screen | None) -> rbac_filter_pb2.RBAC:
    config = rbac_filter_pb2.RBAC(
        rules_stat_prefix=SCREEN_STAT_PREFIX,
        shadow_rules_stat_prefix=SCREEN_STAT_PREFIX,
        track_per_rule_stats=True,
    )
    if screen is not None:
        rules = build_screen_rbac(screen)
        (config.rules if screen.mode == "block" else config.shadow_rules).CopyFrom(rules)
    return config


class ScreenFeature:
    filter_name = SCREEN_FILTER

    def applies(self, gateway: Gateway, routes: Sequence[Route]) -> bool:
        return any(route.screen is not None for route in routes)

    def http_filter(self, gateway: Gateway, routes: Sequence[Route]) -> hcm_pb2.HttpFilter:
        # No rules at the filter level: routes without `screen` pass untouched.
        return hcm_pb2.HttpFilter(name=SCREEN_FILTER, typed_config=pack(_filter_config(None)))

    def patch_route(self, route: Route, xds_route: route_components_pb2.Route) -> None:
        if route.screen is not None:
            per_route = rbac_filter_pb2.RBACPerRoute(rbac=_filter_config(route.screen))
            xds_route.typed_per_filter_config[SCREEN_FILTER].CopyFrom(pack(per_route))


def _present(key: str) -> accesslog_pb2.AccessLogFilter:
    return accesslog_pb2.AccessLogFilter(
        metadata_filter=accesslog_pb2.MetadataFilter(
            matcher=metadata_pb2.MetadataMatcher(
                filter=_RBAC_METADATA,
                path=[metadata_pb2.MetadataMatcher.PathSegment(key=key)],
                value=value_pb2.ValueMatcher(present_match=True),
            ),
            match_if_key_not_found=wrappers_pb2.BoolValue(value=False),
        )
    )


def _screen_log() -> accesslog_pb2.AccessLog:
    fields = {
        "event": "screen",
        "blocked_rule": f"%DYNAMIC_METADATA({_RBAC_METADATA}:{_ENFORCED_KEY})%",
        "logged_rule": f"%DYNAMIC_METADATA({_RBAC_METADATA}:{_SHADOW_KEY})%",
        "route": "%ROUTE_NAME%",
        "client": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
        "method": "%REQ(:METHOD)%",
        "path": "%REQ(:PATH):256%",
        "status": "%RESPONSE_CODE%",
        "request_id": "%REQ(X-REQUEST-ID)%",
    }
    json_format = struct_pb2.Struct()
    json_format.update(fields)
    logger = stream_pb2.StdoutAccessLog(
        log_format=substitution_format_string_pb2.SubstitutionFormatString(json_format=json_format)
    )
    return accesslog_pb2.AccessLog(
        name="envoy.access_loggers.stdout",
        filter=accesslog_pb2.AccessLogFilter(
            or_filter=accesslog_pb2.OrFilter(filters=[_present(_ENFORCED_KEY), _present(_SHADOW_KEY)])
        ),
        typed_config=pack(logger),
    )


def patch_hcm_screen_log(gateway: Gateway, hcm: hcm_pb2.HttpConnectionManager) -> None:
    """Gateways that screen log every match once (a metadata lookup per request); others: nothing."""
    if any(f.name == SCREEN_FILTER for f in hcm.http_filters):
        hcm.access_log.append(_screen_log())
