"""Loading ``custom`` identity plugins (``module:function``), with file:line errors.

A plugin is imported when the decision service prepares a policy version; one that cannot be
imported (no such module, an import-time exception, no such function, not callable) refuses the
whole version there, like any invalid policy, instead of failing the first request with a 500.
`waypost validate` runs the same check, so it reports an unimportable plugin when it runs where
the plugin lives (the decision service's environment).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from waypost.policies.diagnostics import Diagnostic, PolicyError
from waypost.policies.model import PolicySet

__all__ = ["PluginUnavailable", "load_plugin", "load_plugins", "plugin_problems"]


class PluginUnavailable(Exception):
    """The plugin cannot be loaded; the message says why, for a person."""


def load_plugin(spec: str) -> Callable[..., Any]:
    module_name, _, function_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise PluginUnavailable(f"cannot import module '{module_name}': {exc}") from None
    except Exception as exc:  # the plugin's own import-time failure
        raise PluginUnavailable(f"importing '{module_name}' failed: {type(exc).__name__}: {exc}") from None
    function: object = getattr(module, function_name, None)
    if function is None:
        raise PluginUnavailable(f"module '{module_name}' has no '{function_name}'")
    if not callable(function):
        raise PluginUnavailable(f"'{spec}' is not callable")
    return function


def load_plugins(policy: PolicySet) -> dict[str, Callable[..., Any]]:
    """Every plugin ``policy`` names, by spec; PolicyError (file:line each) if any cannot load."""
    loaded: dict[str, Callable[..., Any]] = {}
    problems: list[Diagnostic] = []
    for name, auth in sorted(policy.auth_policies.items()):
        for index, source in enumerate(auth.identity):
            if source.custom is None:
                continue
            spec = source.custom.plugin
            try:
                if spec not in loaded:
                    loaded[spec] = load_plugin(spec)
            except PluginUnavailable as exc:
                field = f"identity[{index}].custom.plugin"
                where = policy.where("AuthPolicy", name, field)
                problems.append(Diagnostic(where.path, where.line, "AuthPolicy", name, f"{field}: {exc}"))
    if problems:
        raise PolicyError(problems)
    return loaded


def plugin_problems(policy: PolicySet) -> list[Diagnostic]:
    """What :func:`load_plugins` would refuse, as diagnostics (for `waypost validate`)."""
    try:
        load_plugins(policy)
    except PolicyError as exc:
        return list(exc.diagnostics)
    return []
