"""The JSON Schema of policy documents, generated from the pydantic model.

One schema accepts a document of any kind, discriminated by ``kind``, so editors
(yaml-language-server, via the ``# yaml-language-server: $schema=...`` modeline of each example
file) complete and check every document of a multi-document file. It is committed at
``schema/waypost.schema.json``; a test fails when the model changes and the file does not
(regenerate with ``waypost schema > schema/waypost.schema.json``).

The schema checks each document on its own; what spans documents (references, duplicates,
conflicting routes) and the rules written as validators (exactly one of ``prefix``/``path``/
``regex``...) are left to ``waypost validate``, which names the file and line.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter

from waypost.policies.model import KINDS
from waypost.policies.types import format_duration

__all__ = ["SCHEMA_ID", "policy_schema", "schema_text"]

SCHEMA_ID = "https://waypost.dev/schema/waypost.schema.json"


def policy_schema() -> dict[str, Any]:
    kinds = tuple(KINDS.values())
    document = Annotated[Union[kinds], Field(discriminator="kind")]  # type: ignore[valid-type]  # noqa: UP007
    schema = TypeAdapter(document).json_schema(mode="validation")
    for kind in KINDS:
        # `kind` has a default in the model (the loader picks the model by it), but in a file
        # it is what tells documents apart: required, so editors complete it first.
        definition = schema["$defs"][kind]
        definition["required"] = ["kind", *(f for f in definition.get("required", []) if f != "kind")]
    _durations_as_written(schema)
    # pydantic writes the union as `oneOf` + an OpenAPI `discriminator`, which JSON Schema
    # validators ignore: a document with one typo then fails "not valid under any of the given
    # schemas". `if kind == X then X` gives the editor (and jsonschema) the one precise error.
    schema.pop("oneOf", None)
    schema.pop("discriminator", None)
    schema.update(
        {
            "type": "object",
            "required": ["kind", "name"],
            "properties": {"kind": {"enum": list(KINDS), "description": "What this document is."}},
            "allOf": [
                {
                    "if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]},
                    "then": {"$ref": f"#/$defs/{kind}"},
                }
                for kind in KINDS
            ],
        }
    )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "waypost policy document",
        "description": "One YAML document of a waypost policy directory: "
        + ", ".join(KINDS)
        + ", chosen by `kind`. Generated from the model by `waypost schema`.",
        **schema,
    }


def schema_text() -> str:
    return json.dumps(policy_schema(), indent=2, sort_keys=False, ensure_ascii=False) + "\n"


def _is_duration(schema: dict[str, Any]) -> bool:
    options = schema.get("anyOf", [schema])
    return any(isinstance(o, dict) and o.get("type") == "string" and "examples" in o for o in options)


def _durations_as_written(node: Any) -> None:
    """Duration defaults are held as milliseconds; show them as a user writes them ("5s")."""
    if isinstance(node, dict):
        if type(node.get("default")) is int and _is_duration(node):
            node["default"] = format_duration(node["default"])
        for value in node.values():
            _durations_as_written(value)
    elif isinstance(node, list):
        for value in node:
            _durations_as_written(value)
