"""An endpoint-only change: the last loaded PolicySet with those Services swapped in.

Moving a Service's endpoints (a deploy, a scale-out) is the most frequent change to a large
policy, and nothing across documents reads endpoints once GrpcTargets, Teams and Sidecars are
out of the picture: the cross-document checks read a Service's name (references), never its
addresses; its own document was checked against its model when it was parsed. So when the only
documents that differ from the last successful load are Services of the same name, in the same
file, that differ in ``endpoints`` alone, the new set is the last one with those Services (and
their source lines) replaced, under the new version: what a full load returns, without its
passes over every document. Anything else (another kind, a renamed or added document, a
referenced file that changed, any problem) takes the full load.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from waypost.policies.model import PolicySet, Service, SourceRef
from waypost.policies.validate import Entry

__all__ = ["LastLoad", "fields_but_endpoints", "moved_endpoints", "only_services_differ", "patched"]

fields_but_endpoints: Callable[[Service], tuple[Any, ...]] = operator.attrgetter(
    *(name for name in Service.model_fields if name != "endpoints")
)
"""A Service's fields but its endpoints, as one tuple (one C call per Service)."""


@dataclass(frozen=True, slots=True)
class LastLoad:
    """A successful load: its entries as read from the files, and the set they made."""

    entries: tuple[Entry, ...]
    policy: PolicySet


def moved_endpoints(last: LastLoad | None, entries: Sequence[Entry]) -> list[tuple[Entry, Entry]] | None:
    """(before, now) for each Service whose endpoints alone changed, when nothing else did since
    ``last`` (an empty list: no document changed); None when anything else changed."""
    if last is None or len(last.entries) != len(entries):
        return None
    policy = last.policy
    if policy.teams or policy.sidecars or policy.grpc_targets:
        return None  # they read endpoints across documents (gRPC clients: IPs only; team scopes)
    moved = []
    for before, now in zip(last.entries, entries, strict=True):
        if before is now:  # the load cache hands back unchanged documents as the same objects
            continue
        old, new = before.document, now.document
        if (
            now.kind != "Service"
            or before.kind != "Service"
            or now.name != before.name
            or now.source.path != before.source.path
            or not isinstance(old, Service)
            or not isinstance(new, Service)
            or fields_but_endpoints(old) != fields_but_endpoints(new)
        ):
            return None
        moved.append((before, now))
    return moved


def patched(
    policy: PolicySet,
    moved: Sequence[tuple[Entry, Entry]],
    *,
    version: str,
    files: Mapping[str, bytes],
    source_of: Callable[[Entry], SourceRef],
) -> PolicySet:
    """``policy`` with the moved Services in place (same names, so the same order)."""
    services = dict(policy.services)
    sources: dict[tuple[str, str], SourceRef] | None = None
    for _, now in moved:
        assert isinstance(now.document, Service)
        services[now.name] = now.document
        where = source_of(now)
        if where != policy.sources.get((now.kind, now.name)):
            sources = sources if sources is not None else dict(policy.sources)
            sources[(now.kind, now.name)] = where
    return dataclasses.replace(
        policy,
        version=version,
        files=files,
        services=services,
        sources=policy.sources if sources is None else sources,
    )


_SHARED = tuple(
    item.name
    for item in dataclasses.fields(PolicySet)
    if item.name not in ("version", "services", "sources", "field_sources", "files")
)


def only_services_differ(before: PolicySet, now: PolicySet) -> bool:
    """Whether ``now`` is ``before`` with some Services swapped (what :func:`patched` makes): every
    other kind is the very same mapping, and the files are equal. What reads no Service (a
    Route's decision needs, a Gateway's listener) is then unchanged; a full load makes new
    mappings, so this never holds by accident."""
    return all(getattr(before, name) is getattr(now, name) for name in _SHARED) and before.files == now.files
