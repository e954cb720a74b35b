"""Compile a Route's ``validation`` files into request checks: JSON Schema or OpenAPI operations.

Pure functions from file bytes to compiled validators (jsonschema-rs), no I/O: the loader calls
:func:`compile_validation` to refuse a schema that does not compile (``file:line``), and the
decision service (:mod:`waypost.filters.protect`) calls it again for the same bytes, which the
cache makes free, so each schema compiles once per policy version and process.

A :class:`RequestSpec` answers :meth:`RequestSpec.problems` for one request: every failing
location (``header content-type``, ``query limit``, ``path petId``, ``body /items/0/qty``) with
a message. OpenAPI: the operation is found by method and path template (``/pets/{petId}``), the
path of ``servers[0].url`` stripped first; path, query and header parameters are checked against
their schemas (values coerced to the schema's type first: ``?limit=5`` is the integer 5); 3.0's
``nullable`` is read as a ``null`` type.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import jsonschema_rs
import yaml

from waypost.policies.protect import Validate

__all__ = ["Problem", "RequestSpec", "SchemaProblem", "compile_validation"]

_MAX_PROBLEMS = 20
_JSON_TYPES = re.compile(r"^application/(?:[\w.+-]*\+)?json$")


class SchemaProblem(ValueError):
    """A validation file that cannot be used: not JSON/YAML, or a schema that does not compile."""


@dataclass(frozen=True, slots=True)
class Problem:
    where: str  # "body", "query", "path", "header"
    at: str  # a JSON pointer in the body, or a parameter or header name
    message: str

    def as_json(self) -> dict[str, str]:
        return {"in": self.where, "at": self.at, "message": self.message}


Validator = Any  # jsonschema_rs validators have no common public base class


@dataclass(frozen=True)
class _Param:
    name: str
    where: str  # path, query, header
    required: bool
    validator: Validator | None
    kind: str  # the schema's type, for coercion: integer, number, boolean, array, string
    item_kind: str


@dataclass(frozen=True)
class _Operation:
    params: tuple[_Param, ...]
    body_required: bool
    bodies: Mapping[str, Validator | None]  # media type -> body validator (None: any body)


@dataclass(frozen=True)
class _PathTemplate:
    regex: re.Pattern[str]
    operations: Mapping[str, _Operation]  # by upper-case method


@dataclass(frozen=True)
class RequestSpec:
    """Compiled checks of one route. Immutable; safe to share between requests and threads."""

    required_headers: tuple[str, ...] = ()
    content_types: tuple[str, ...] = ("application/json",)
    body: Validator | None = None
    query: Validator | None = None
    templates: tuple[_PathTemplate, ...] = ()
    base_path: str = ""
    openapi: bool = False

    def problems(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> list[Problem]:
        found: list[Problem] = [
            Problem("header", name, "required header is missing")
            for name in self.required_headers
            if name not in headers
        ]
        parts = urlsplit(path)
        query = _query(parts.query)
        if self.openapi:
            found.extend(self._openapi_problems(method.upper(), unquote(parts.path), query, headers, body))
        else:
            if self.query is not None:
                found.extend(_schema_problems(self.query, _query_object(query), "query", by_name=True))
            if body or headers.get("content-type"):
                found.extend(_body_problems(self.content_types, self.body, headers, body, required=False))
        return found[:_MAX_PROBLEMS]

    def _openapi_problems(
        self, method: str, path: str, query: Mapping[str, list[str]], headers: Mapping[str, str], body: bytes
    ) -> list[Problem]:
        if self.base_path and path.startswith(self.base_path):
            path = path[len(self.base_path) :] or "/"
        for template in self.templates:
            match = template.regex.match(path)
            if match is None:
                continue
            operation = template.operations.get(method)
            if operation is None:
                allowed = ", ".join(sorted(template.operations))
                return [
                    Problem("path", path, f"method {method} is not an operation here (allowed: {allowed})")
                ]
            return _operation_problems(operation, match.groupdict(), query, headers, body)
        return [Problem("path", path, "no operation of the API matches this path")]


def _query(raw: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for key, value in parse_qsl(raw, keep_blank_values=True):
        values.setdefault(key, []).append(value)
    return values


def _query_object(query: Mapping[str, list[str]]) -> dict[str, Any]:
    return {k: v[0] if len(v) == 1 else v for k, v in query.items()}


def _pointer(path: Sequence[str | int]) -> str:
    return "/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in path) if path else "/"


def _schema_problems(
    validator: Validator, instance: Any, where: str, *, by_name: bool = False
) -> list[Problem]:
    if validator.is_valid(instance):  # the common case, without building error objects
        return []
    found = []
    for error in validator.iter_errors(instance):
        path = list(error.instance_path)
        if by_name and path:
            found.append(Problem(where, str(path[0]), error.message))
        else:
            found.append(Problem(where, _pointer(path), error.message))
        if len(found) >= _MAX_PROBLEMS:
            break
    return found


def _media_type(headers: Mapping[str, str]) -> str:
    return headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _body_problems(
    accepted: Sequence[str],
    validators: Validator | Mapping[str, Validator | None] | None,
    headers: Mapping[str, str],
    body: bytes,
    *,
    required: bool,
) -> list[Problem]:
    if not body:
        return [Problem("body", "/", "a request body is required")] if required else []
    media = _media_type(headers)
    if media not in accepted:
        want = ", ".join(accepted)
        return [Problem("header", "content-type", f"'{media or '(none)'}' is not accepted; send {want}")]
    validator = validators.get(media) if isinstance(validators, Mapping) else validators
    if validator is None or not _JSON_TYPES.match(media):
        return []
    try:
        instance = json.loads(body)
    except (ValueError, RecursionError) as exc:
        return [Problem("body", "/", f"not valid JSON: {exc}")]
    return _schema_problems(validator, instance, "body")


def _coerce(value: str, kind: str) -> Any:
    try:
        if kind == "integer":
            return int(value)
        if kind == "number":
            return float(value)
    except ValueError:
        return value
    if kind == "boolean" and value in ("true", "false"):
        return value == "true"
    return value


def _operation_problems(
    operation: _Operation,
    path_values: Mapping[str, str],
    query: Mapping[str, list[str]],
    headers: Mapping[str, str],
    body: bytes,
) -> list[Problem]:
    found: list[Problem] = []
    for param in operation.params:
        if param.where == "path":
            value_in_path = path_values.get(_group_name(param.name))
            raw: list[str] | None = None if value_in_path is None else [unquote(value_in_path)]
        elif param.where == "query":
            raw = query.get(param.name)
        else:
            header = headers.get(param.name.lower())
            raw = None if header is None else [header]
        if raw is None:
            if param.required:
                found.append(Problem(param.where, param.name, "required parameter is missing"))
            continue
        if param.validator is None:
            continue
        if param.kind == "array":
            items = raw if len(raw) > 1 or param.where == "query" else raw[0].split(",")
            value: Any = [_coerce(v, param.item_kind) for v in items]
        else:
            value = _coerce(raw[0], param.kind)
        found.extend(
            Problem(param.where, param.name, p.message) for p in _schema_problems(param.validator, value, "")
        )
    if operation.bodies or operation.body_required:
        accepted = tuple(operation.bodies)
        found.extend(
            _body_problems(accepted, operation.bodies, headers, body, required=operation.body_required)
        )
    return found


# --- compiling -----------------------------------------------------------------------------------


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


def _compile_openapi(doc: Any, shown: str) -> tuple[str, tuple[_PathTemplate, ...]]:
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
            operations[method.upper()] = _Operation(
                params=compiled, body_required=bool(request_body.get("required")), bodies=bodies
            )
        templates.append(_PathTemplate(regex=_template_regex(template), operations=operations))
    return base, tuple(templates)


def _compile_param(param: dict[str, Any], compile_schema: Callable[[Any], Validator]) -> _Param:
    schema = param.get("schema")
    kind = schema.get("type", "string") if isinstance(schema, dict) else "string"
    items = schema.get("items", {}) if isinstance(schema, dict) else {}
    return _Param(
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
            pattern += f"(?P<{_group_name(name)}>[^/]+)"
    return re.compile(f"^{pattern}$")


def _group_name(name: str) -> str:
    return "p_" + re.sub(r"\W", "_", name)
