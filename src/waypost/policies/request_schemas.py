"""Compile a Route's ``validation`` files into request checks: JSON Schema or OpenAPI operations.

Pure functions from file bytes to compiled validators (jsonschema-rs), no I/O: the loader calls
:func:`compile_validation` to refuse a schema that does not compile (``file:line``), and the
decision service (:mod:`waypost.filters.protect`) calls it again for the same bytes, which the
cache makes free, so each schema compiles once per policy version and process. The result, a
:class:`~waypost.policies.request_checks.RequestSpec`, checks requests.

OpenAPI: operations are indexed by path template (concrete paths before templated ones), the path
of ``servers[0].url`` is stripped from requests first, local ``$ref``s are resolved (the whole
document is each schema's root), and 3.0's ``nullable`` is read as a ``null`` type.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import jsonschema_rs
import yaml

from waypost.policies.protect import Validate
from waypost.policies.request_checks import Operation, Param, PathTemplate, RequestSpec, Validator, group_name

__all__ = ["RequestSpec", "SchemaProblem", "compile_validation"]


class SchemaProblem(ValueError):
    """A validation file that cannot be used: not JSON/YAML, or a schema that does not compile."""


def _document(data: bytes, shown: str) -> Any:
    try:
        return yaml.load(data, Loader=yaml.CSafeLoader)  # JSON is YAML
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "unreadable"
        raise SchemaProblem(f"{shown} is neither JSON nor YAML: {problem}{where}") from None


def _compile(schema: Any, shown: str, where: str = "") -> Validator:
    if not isinstance(schema, dict | bool):
        raise SchemaProblem(f"{shown}{where}: a schema must be an object or a boolean")
    try:
        return jsonschema_rs.validator_for(schema)
    except (jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise SchemaProblem(f"{shown}{where} does not compile: {first}") from None


def compile_validation(validation: Validate, files: Mapping[str, bytes]) -> RequestSpec:
    """Compile a Route's validation block; raises :class:`SchemaProblem` naming the file."""
    return _compile_cached(
        validation,
        tuple((name, bytes(files[name])) for name in validation.files),
    )


@functools.lru_cache(maxsize=256)
def _compile_cached(validation: Validate, contents: tuple[tuple[str, bytes], ...]) -> RequestSpec:
    data = dict(contents)
    headers = tuple(h.lower() for h in validation.headers)
    if validation.openapi is not None:
        shown = f"'{validation.openapi}'"
        base, templates = _compile_openapi(_document(data[validation.openapi], shown), shown)
        return RequestSpec(required_headers=headers, templates=templates, base_path=base, openapi=True)
    assert validation.json_schema is not None
    shown = f"'{validation.json_schema}'"
    body = _compile(_document(data[validation.json_schema], shown), shown)
    query = None
    if validation.query_schema is not None:
        query_shown = f"'{validation.query_schema}'"
        query = _compile(_document(data[validation.query_schema], query_shown), query_shown)
    return RequestSpec(
        required_headers=headers, content_types=tuple(validation.content_types), body=body, query=query
    )


_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def _nullable_to_type(node: Any) -> Any:
    """OpenAPI 3.0's ``nullable: true`` as JSON Schema: ``null`` added to the type."""
    if isinstance(node, dict):
        out = {k: _nullable_to_type(v) for k, v in node.items()}
        if out.pop("nullable", False) is True and isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        return out
    if isinstance(node, list):
        return [_nullable_to_type(v) for v in node]
    return node


def _compile_openapi(doc: Any, shown: str) -> tuple[str, tuple[PathTemplate, ...]]:
    if not isinstance(doc, dict) or not str(doc.get("openapi", "")).startswith("3."):
        raise SchemaProblem(f"{shown} is not an OpenAPI 3 document (no 'openapi: 3.x' field)")
    if str(doc["openapi"]).startswith("3.0."):
        doc = _nullable_to_type(doc)
    paths = doc.get("paths")
    if not isinstance(paths, dict) or not paths:
        raise SchemaProblem(f"{shown} has no paths")
    servers = doc.get("servers") or [{}]
    base = urlsplit(str(servers[0].get("url", "")) if isinstance(servers[0], dict) else "").path.rstrip("/")

    def resolve(node: Any) -> Any:
        while isinstance(node, dict) and isinstance(node.get("$ref"), str):
            ref = node["$ref"]
            if not ref.startswith("#/"):
                raise SchemaProblem(f"{shown}: only local references are supported, not '{ref}'")
            node = doc
            for part in ref[2:].split("/"):
                part = part.replace("~1", "/").replace("~0", "~")
                if not isinstance(node, dict) or part not in node:
                    raise SchemaProblem(f"{shown}: reference '{ref}' does not exist")
                node = node[part]
        return node

    def schema_at(schema: Any, where: str) -> Validator:
        # The whole document is the root, so '#/components/...' references resolve.
        root = copy.copy(doc)
        root.pop("$id", None)
        if isinstance(schema, dict) and set(schema) == {"$ref"}:
            root["$ref"] = schema["$ref"]
            return _compile(root, shown, where)
        root["$defs_waypost"] = schema
        root["$ref"] = "#/$defs_waypost"
        return _compile(root, shown, where)

    templates = []
    for template, item in sorted(paths.items(), key=lambda kv: _template_order(kv[0])):
        item = resolve(item)
        if not isinstance(item, dict):
            raise SchemaProblem(f"{shown}: paths.{template} is not an object")
        shared = [resolve(p) for p in item.get("parameters", [])]
        operations = {}
        for method in _METHODS:
            if method not in item:
                continue
            op = resolve(item[method])
            where = f" paths.{template}.{method}"
            params = {(p.get("in"), p.get("name")): p for p in shared}
            params.update({(p.get("in"), p.get("name")): p for p in map(resolve, op.get("parameters", []))})
            compiled = tuple(
                _compile_param(p, functools.partial(schema_at, where=f"{where} parameter {name}"))
                for (place, name), p in sorted(params.items(), key=str)
                if place in ("path", "query", "header")
            )
            request_body = resolve(op.get("requestBody", {}))
            content = request_body.get("content", {}) if isinstance(request_body, dict) else {}
            bodies = {
                media.lower(): schema_at(spec["schema"], f"{where} requestBody {media}")
                if isinstance(spec, dict) and "schema" in spec
                else None
                for media, spec in content.items()
            }
            operations[method.upper()] = Operation(
                params=compiled, body_required=bool(request_body.get("required")), bodies=bodies
            )
        templates.append(PathTemplate(regex=_template_regex(template), operations=operations))
    return base, tuple(templates)


def _compile_param(param: dict[str, Any], compile_schema: Callable[[Any], Validator]) -> Param:
    schema = param.get("schema")
    kind = schema.get("type", "string") if isinstance(schema, dict) else "string"
    items = schema.get("items", {}) if isinstance(schema, dict) else {}
    return Param(
        name=str(param.get("name")),
        where=str(param.get("in")),
        required=bool(param.get("required")) or param.get("in") == "path",
        validator=compile_schema(schema) if schema is not None else None,
        kind=kind if isinstance(kind, str) else "string",
        item_kind=items.get("type", "string") if isinstance(items, dict) else "string",
    )


def _template_order(template: str) -> tuple[int, int, str]:
    # Concrete paths before templated ones (OpenAPI: /pets/mine wins over /pets/{id}).
    return (template.count("{"), -len(template), template)


def _template_regex(template: str) -> re.Pattern[str]:
    pattern = ""
    for literal, name in re.findall(r"([^{]*)(?:\{([^}]*)\})?", template):
        pattern += re.escape(literal)
        if name:
            pattern += f"(?P<{group_name(name)}>[^/]+)"
    return re.compile(f"^{pattern}$")
