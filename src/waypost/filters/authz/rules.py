"""AuthPolicy rules, compiled once per policy version and matched per request: methods, paths,
roles, scopes and a CEL ``when`` expression; and the path normalization rules are matched on.

Contracts: :func:`compile_rule` runs at prepare time (a CEL expression is compiled there, once).
:meth:`CompiledRule.matches` is pure apart from a warning log line: a CEL expression that fails at
run time never widens access (an allow does not match, a deny does). :func:`normalize_path` is a
pure function of the raw request path.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from waypost.filters.authz.decision import AuthRequest, Identity
from waypost.log import get_logger
from waypost.policies.cel_env import compile_expression
from waypost.policies.model import Rule, RuleMatch

__all__ = ["CompiledRule", "compile_rule", "normalize_path"]

log = get_logger("waypost.authz")


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
class CompiledRule:
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


def compile_rule(rule: Rule) -> CompiledRule:
    match: RuleMatch = rule.allow if rule.allow is not None else rule.deny  # type: ignore[assignment]
    return CompiledRule(
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
