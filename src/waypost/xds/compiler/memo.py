"""Per-resource memo across compiles: a reload recompiles only the resources its change affects.

:func:`~waypost.xds.compiler.compile_policy` is pure, so a resource whose inputs are the same
objects as last time is the same resource: it is reused, message object and all (which also lets
the snapshot encoder reuse its bytes, see :class:`~waypost.xds.snapshot.ResourceEncoder`). The
loader's :class:`~waypost.policies.load_cache.LoadCache` hands back the very same model objects
for unchanged documents, so identity is content here; an equal but new object only costs a
recompile, never a wrong result.

What each resource is keyed by (everything its compilation reads):

* a Gateway's listener, route table, secrets and own clusters: the Gateway, its Routes, the
  ``lb`` and ``protocol`` of the Services they name (all a route action reads of a Service), and
  the *context*: every AuthPolicy, Consumer, RateLimitPolicy and Gateway, and the referenced
  files' bytes (what the features bound to the policy read);
* a Service's cluster: the Service and, with upstream TLS, the files; its load assignment: the
  Service.

Only the last compile's entries are kept, so memory stays one version's worth.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, TypeVar, cast

from waypost.policies.model import PolicySet, Route, Service

__all__ = ["CompileMemo", "context_key", "service_view"]

T = TypeVar("T")


def _ids(objects: Any) -> tuple[int, ...]:
    return tuple(map(id, objects))


def context_key(policy: PolicySet) -> tuple[Hashable, ...]:
    return (
        tuple(policy.auth_policies),
        _ids(policy.auth_policies.values()),
        tuple(policy.consumers),
        _ids(policy.consumers.values()),
        tuple(policy.rate_limit_policies),
        _ids(policy.rate_limit_policies.values()),
        tuple(policy.gateways),
        _ids(policy.gateways.values()),
        tuple(sorted(policy.files.items())),
    )


def service_view(routes: list[Route], services: dict[str, Service] | Any) -> tuple[Hashable, ...]:
    """What a gateway's route table reads of the Services its Routes name."""
    names = sorted({name for route in routes for name in route.services})
    view = []
    for name in names:
        service = services.get(name)
        view.append((name, None, None) if service is None else (name, service.lb, service.protocol))
    return tuple(view)


class CompileMemo:
    """Results of the previous compile by (kind, name), each with the key it was built for."""

    def __init__(self) -> None:
        self._previous: dict[tuple[str, str], tuple[Hashable, Any, Any]] = {}
        self._current: dict[tuple[str, str], tuple[Hashable, Any, Any]] = {}
        self.built: list[tuple[str, str]] = []
        """What the last compile built anew (the rest was reused): for tests and benchmarks."""

    def begin(self) -> None:
        self._current = {}
        self.built = []

    def end(self) -> None:
        self._previous, self._current = self._current, {}

    def get(self, kind: str, name: str, key: Hashable, keep: Any, build: Callable[[], T]) -> T:
        """``build()``'s result, or the previous one for the same key. ``keep`` holds the objects
        whose ids are in ``key`` alive, so no new object can take an id over while cached."""
        found = self._previous.get((kind, name))
        if found is not None and found[0] == key:
            # Equal ids of live objects: the same objects, now held by this version's ``keep``
            # (so old versions are not kept alive through reused entries).
            self._current[(kind, name)] = (key, keep, found[2])
            return cast(T, found[2])
        value = build()
        self._current[(kind, name)] = (key, keep, value)
        self.built.append((kind, name))
        return value
