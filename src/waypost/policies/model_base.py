"""The base of the policy model: the block and document base classes and the field types shared by
several kinds of document.

Data only, no I/O. Every block is a frozen pydantic model that refuses unknown keys; field names
are the YAML keys users write, so a validation error's location is also the path a user sees in
their file. The kinds themselves live in the ``model_*`` family modules and are gathered, with
the ``KINDS`` registry, in :mod:`waypost.policies.model`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from waypost.policies.types import Name

__all__ = [
    "Document",
    "HttpMethod",
    "NodeSelector",
    "NonNegativeInt",
    "Percent",
    "PositiveInt",
    "Spec",
    "StringMap",
]


HttpMethod = Literal["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]


PositiveInt = Annotated[StrictInt, Field(ge=1)]
NonNegativeInt = Annotated[StrictInt, Field(ge=0)]
StringMap = dict[StrictStr, StrictStr]
Percent = Annotated[float, Field(strict=True, ge=0, le=100, allow_inf_nan=False)]


class Spec(BaseModel):
    """Base of every block: unknown keys are errors, values are immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Document(Spec):
    """Fields every policy document carries."""

    kind: StrictStr
    name: Name


class NodeSelector(Spec):
    """Which Envoy nodes get a Gateway: node.cluster and/or node metadata labels, all must match."""

    cluster: StrictStr | None = None
    labels: StringMap = Field(default_factory=dict)

    def matches(self, node_cluster: str, node_labels: Mapping[str, str]) -> bool:
        if self.cluster is not None and self.cluster != node_cluster:
            return False
        return all(node_labels.get(key) == value for key, value in self.labels.items())
