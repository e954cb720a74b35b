"""Per-resource memo across compiles: a reload recompiles only the resources its change affects.

:func:`~waypost.xds.compiler.compile_policy` is pure, so a resource whose inputs are the same
objects as last time is the same resource: it is reused, message object and all (which also lets
the snapshot encoder reuse its bytes, see :class:`~waypost.xds.snapshot.ResourceEncoder`). The
loader's :class:`~waypost.policies.load_cache.LoadCache` hands back the very same model objects
for unchanged documents, so identity is content here; an equal but new object only costs a
recompile, never a wrong result.

What each resource is keyed by (everything its compilation reads):

* a Gateway's listener, route table, secrets and own clusters: the Gateway, its Routes, every
  Service's fields but its endpoints (a route action reads ``lb`` and ``protocol``, admission
  control its settings), the decision clusters its routes need, and the *context*: every
  document of the other kinds (AuthPolicy, Consumer, RateLimitPolicy, ...), every Gateway, and
  the referenced files' bytes (what the features bound to the policy read);
* a Service's cluster and load assignment: the Service and, with upstream TLS, the files. A
  Service whose only change is its IP endpoints keeps its cluster object (an EDS cluster does not
  carry its endpoints): an endpoint change re-encodes one load assignment, and no cluster;
* a decision service's cluster: where its endpoints are.

Only the last compile's entries are kept, so memory stays one version's worth.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Mapping
from typing import Any, TypeVar, cast

from waypost.policies.endpoint_patch import fields_but_endpoints
from waypost.policies.model import PolicySet

__all__ = ["CompileMemo", "context_key", "service_view"]

T = TypeVar("T")


def _ids(objects: Any) -> tuple[int, ...]:
    return tuple(map(id, objects))


_PER_RESOURCE = frozenset({"gateways", "routes", "services", "files", "sources", "field_sources", "version"})


def context_key(policy: PolicySet) -> tuple[Hashable, ...]:
    """Everything besides a gateway's own documents that compiling it may read: every document
    of every other kind (AuthPolicies, Consumers, RateLimitPolicies, and kinds added later, taken
    from the PolicySet's fields so none is forgotten), every Gateway, and the files' bytes."""
    key: list[Hashable] = []
    for item in dataclasses.fields(policy):
        value = getattr(policy, item.name)
        if item.name not in _PER_RESOURCE and isinstance(value, Mapping):
            key.append((item.name, tuple(value), _ids(value.values())))
    key.append((tuple(policy.gateways), _ids(policy.gateways.values())))
    key.append(tuple(sorted(policy.files.items())))
    return tuple(key)


def service_view(policy: PolicySet) -> tuple[Hashable, ...]:
    """What gateways read of Services: every field but the endpoints (a route action reads
    ``lb`` and ``protocol``, admission control its settings, ...), so an endpoint change recompiles
    no gateway. One view for every gateway (walking each gateway's routes for the names they use
    costs more than comparing); compared with ``==``, never hashed."""
    fields = fields_but_endpoints
    return tuple((name, fields(service)) for name, service in policy.services.items())


class CompileMemo:
    """Results of the previous compile by (kind, name), each with the key it was built for."""

    def __init__(self) -> None:
        self._previous: dict[tuple[str, str], tuple[Hashable, Any, Any]] = {}
        self._current: dict[tuple[str, str], tuple[Hashable, Any, Any]] = {}
        self.built: list[tuple[str, str]] = []
        """What the last compile built anew (the rest was reused): for tests and benchmarks."""
        self.last: tuple[Any, Any, Any] | None = None
        """(compiled policy, decision endpoints, collector) of the last compile, for one that only
        moved endpoints (see :mod:`.services`)."""

    def begin(self) -> None:
        self._current = {}
        self.built = []

    def end(self) -> None:
        self._previous, self._current = self._current, {}

    def intern(self, name: str, value: T | None) -> T:
        """``value``, or the equal value the previous compile used: equal keys built from it then
        compare by identity, not element by element. None: the caller knows it is that value."""
        found = self._previous.get(("intern", name))
        if found is not None and (value is None or found[2] == value):
            value = found[2]
        assert value is not None
        self._current[("intern", name)] = ((), None, value)
        return value

    def of_kind(self, kind: str) -> dict[tuple[str, str], tuple[Hashable, Any, Any]]:
        """This compile's entries of one kind, to :meth:`carry` into a later one whole."""
        return {key: entry for key, entry in self._current.items() if key[0] == kind}

    def carry(self, entries: Mapping[tuple[str, str], tuple[Hashable, Any, Any]]) -> None:
        """Keep entries of the previous compile (from :meth:`of_kind`) for the next."""
        self._current.update(entries)

    def previous(self, kind: str, name: str) -> Any:
        """What the previous compile built for (kind, name), whatever its key; None if nothing."""
        found = self._previous.get((kind, name))
        return found[2] if found is not None else None

    def carry_over(self) -> None:
        """Keep every entry of the previous compile for the next (a compile that reused it all)."""
        self._current = dict(self._previous)

    def put(self, kind: str, name: str, key: Hashable, keep: Any, value: Any) -> None:
        """Record what was built for (kind, name) outside :meth:`get`."""
        self._current[(kind, name)] = (key, keep, value)
        self.built.append((kind, name))

    def get(self, kind: str, name: str, key: Hashable, keep: Any, build: Callable[..., T], *args: Any) -> T:
        """``build(*args)``, or the previous result for the same key. ``keep`` holds the objects
        whose ids are in ``key`` alive, so no new object can take an id over while cached."""
        found = self._previous.get((kind, name))
        if found is not None and found[0] == key:
            # Equal ids of live objects: the same objects, now held by this version's ``keep``
            # (so old versions are not kept alive through reused entries).
            self._current[(kind, name)] = (key, keep, found[2])
            return cast(T, found[2])
        value = build(*args)
        self._current[(kind, name)] = (key, keep, value)
        self.built.append((kind, name))
        return value
