"""Checking one request against a Route's compiled validation: every failing location.

A :class:`RequestSpec` (built by :mod:`waypost.policies.request_schemas`) answers
:meth:`RequestSpec.problems` for one request: every failing location (``header content-type``,
``query limit``, ``path petId``, ``body /items/0/qty``) with a message. OpenAPI routes find the
operation by method and path template first; parameter values are coerced to their schema's type
(``?limit=5`` is the integer 5) before validation. Pure, immutable, thread-safe.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = ["Operation", "Param", "PathTemplate", "Problem", "RequestSpec", "Validator", "group_name"]

_MAX_PROBLEMS = 20
_JSON_TYPES = re.compile(r"^application/(?:[\w.+-]*\+)?json$")


@dataclass(frozen=True, slots=True)
class Problem:
    where: str  # "body", "query", "path", "header"
    at: str  # a JSON pointer in the body, or a parameter or header name
    message: str

    def as_json(self) -> dict[str, str]:
        return {"in": self.where, "at": self.at, "message": self.message}


Validator = Any  # jsonschema_rs validators have no common public base class


@dataclass(frozen=True)
class Param:
    name: str
    where: str  # path, query, header
    required: bool
    validator: Validator | None
    kind: str  # the schema's type, for coercion: integer, number, boolean, array, string
    item_kind: str


@dataclass(frozen=True)
class Operation:
    params: tuple[Param, ...]
    body_required: bool
    bodies: Mapping[str, Validator | None]  # media type -> body validator (None: any body)


@dataclass(frozen=True)
class PathTemplate:
    regex: re.Pattern[str]
    operations: Mapping[str, Operation]  # by upper-case method


@dataclass(frozen=True)
class RequestSpec:
    """Compiled checks of one route. Immutable; safe to share between requests and threads."""

    required_headers: tuple[str, ...] = ()
    content_types: tuple[str, ...] = ("application/json",)
    body: Validator | None = None
    query: Validator | None = None
    templates: tuple[PathTemplate, ...] = ()
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
    operation: Operation,
    path_values: Mapping[str, str],
    query: Mapping[str, list[str]],
    headers: Mapping[str, str],
    body: bytes,
) -> list[Problem]:
    found: list[Problem] = []
    for param in operation.params:
        if param.where == "path":
            value_in_path = path_values.get(group_name(param.name))
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


def group_name(name: str) -> str:
    return "p_" + re.sub(r"\W", "_", name)
