"""Positions and messages for a document checked against its kind's model.

:class:`DocumentSource` tells where a document, or any field path in it, was written (it
implements :class:`waypost.policies.validate.Source`). :func:`model_diagnostics` turns a pydantic
``ValidationError`` into :class:`~waypost.policies.diagnostics.Diagnostic` lines, each at the line
of the field concerned and worded for the person who wrote the YAML ("expected a string, got 5",
"unknown field 'prot' (did you mean 'port'?)"), keeping only the errors of the union member the
user meant. Pure: no I/O; values are shown by type or shortened, never a file's content.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from dataclasses import dataclass
from difflib import get_close_matches
from typing import Annotated, Any, Final, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from waypost.policies.diagnostics import Diagnostic
from waypost.policies.types import HEADER_NAME_PATTERN, NAME_PATTERN
from waypost.policies.validate import Loc
from waypost.policies.yaml_reader import YamlDocument, show_value

__all__ = ["DocumentSource", "at_field", "field_path", "model_diagnostics"]

# --- Positions: pydantic locations -> lines --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Walk:
    line: int
    path: tuple[str | int, ...]  # the parts of loc that are keys or indexes in the document
    branch_at: int | None  # len(path) where the first union/validator tag was skipped
    branch: str | None  # that tag: which union member the error is about


def _walk(document: YamlDocument, loc: Loc) -> _Walk:
    """Follow ``loc`` through the document; parts that are not keys (union tags) are skipped."""
    value, line = document.value, document.line
    path: list[str | int] = []
    branch_at: int | None = None
    branch: str | None = None
    for part in loc:
        kind = type(value)
        if (kind is dict and type(part) is str and part in value) or (
            kind is list and type(part) is int and 0 <= part < len(value)
        ):
            line = document.lines[id(value)][part]
            value = value[part]
            path.append(part)
        elif branch_at is None and part != "[key]":
            branch_at, branch = len(path), str(part)
    return _Walk(line, tuple(path), branch_at, branch)


@dataclass(slots=True)
class DocumentSource:
    """Where one document was written: implements :class:`waypost.policies.validate.Source`."""

    path: str
    document: YamlDocument
    name_line: int = 0
    """The line of ``name``, once asked for (0: not yet): every load asks, and the entry is
    reused across loads by the :class:`LoadCache`."""

    def line_of(self, loc: Loc) -> int:
        if loc == ("name",):
            if not self.name_line:
                self.name_line = _walk(self.document, loc).line
            return self.name_line
        return _walk(self.document, loc).line


def field_path(path: Loc) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def at_field(path: Loc, message: str) -> str:
    return f"{field_path(path)}: {message}" if path else message


# --- Model errors -> messages --------------------------------------------------------------------

_EXPECTED: Final = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "dataclass_type": "a mapping",
    "tuple_type": "a list",
    "list_type": "a list",
    "none_required": "null",
}
_BOUND_ERRORS: Final = frozenset({"greater_than_equal", "less_than_equal", "greater_than", "less_than"})


def _unwrap(annotation: Any, metadata: list[Any]) -> Iterator[tuple[Any, list[Any]]]:
    """The concrete types an annotation may hold, each with its constraints (Ge, Le, ...)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        base, *extra = get_args(annotation)
        found = list(metadata)
        for item in extra:
            found.extend(item.metadata if isinstance(item, FieldInfo) else [item])
        yield from _unwrap(base, found)
    elif origin is Union or origin is types.UnionType:
        for member in get_args(annotation):
            if member is not type(None):
                yield from _unwrap(member, metadata)
    else:
        yield annotation, metadata


def _types_at(model: type[BaseModel], path: Loc) -> list[tuple[Any, list[Any]]]:
    """What the model expects at ``path``: a list, since a union may allow several types."""
    current: list[tuple[Any, list[Any]]] = [(model, [])]
    for part in path:
        following: list[tuple[Any, list[Any]]] = []
        for annotation, _ in current:
            origin = get_origin(annotation)
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                info = annotation.model_fields.get(part) if isinstance(part, str) else None
                if info is not None:
                    following.extend(_unwrap(info.annotation, list(info.metadata)))
            elif origin in (tuple, list) and isinstance(part, int):
                following.extend(_unwrap(get_args(annotation)[0], []))
            elif origin is dict and isinstance(part, str):
                following.extend(_unwrap(get_args(annotation)[1], []))
        current = following
    return current


def _bounds(model: type[BaseModel], path: Loc) -> tuple[Any, Any]:
    low = high = None
    for _, metadata in _types_at(model, path):
        for item in metadata:
            if isinstance(item, annotated_types.Ge):
                low = item.ge
            elif isinstance(item, annotated_types.Le):
                high = item.le
    return low, high


def _pattern_message(value: Any, pattern: str, path: Loc) -> str:
    field_name = next((part for part in reversed(path) if isinstance(part, str)), "")
    if pattern == NAME_PATTERN:
        return (
            f"{show_value(value)} is not a valid name: use letters, digits, '-', '_' and '.', at most 63"
            " characters, starting and ending with a letter or digit"
        )
    if pattern == HEADER_NAME_PATTERN:
        return f"{show_value(value)} is not a valid header name"
    if pattern == "^/":
        return f"{show_value(value)} must start with '/'"
    if field_name == "api_keys":
        # Never echo the value: it may be a plaintext key pasted by mistake.
        return "expected 'sha256:' and 64 lowercase hex digits: commit key hashes, never keys"
    if field_name == "by":
        return f"{show_value(value)} must be consumer, client_ip, route or header:<name>"
    if field_name == "plugin":
        return f"{show_value(value)} must be 'module:function'"
    return f"{show_value(value)} does not match the pattern {pattern}"


@dataclass(slots=True)
class _ModelError:
    error: Any  # pydantic's ErrorDetails
    walk: _Walk
    path: Loc
    message: str | None = None


def _describe(item: _ModelError, model: type[BaseModel]) -> str:
    error, path = item.error, item.path
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    if kind == "missing":
        return f"field '{field_path(path)}' is required"
    if kind == "extra_forbidden":
        message = f"unknown field '{field_path(path)}'"
        allowed = [
            name
            for annotation, _ in _types_at(model, path[:-1])
            if isinstance(annotation, type) and issubclass(annotation, BaseModel)
            for name in annotation.model_fields
        ]
        guess = get_close_matches(str(path[-1]) if path else "", allowed, n=1, cutoff=0.75)
        return f"{message} (did you mean '{guess[0]}'?)" if guess else message
    if error["loc"] and error["loc"][-1] == "[key]":
        path = path[:-1]  # an invalid key of a mapping: name the mapping, show the key
        if kind == "string_pattern_mismatch":
            return at_field(path, _pattern_message(value, ctx.get("pattern", ""), path))
    if kind in _EXPECTED:
        text = f"expected {_EXPECTED[kind]}, got {show_value(value)}"
    elif kind == "literal_error":
        text = f"must be one of {ctx.get('expected')}, got {show_value(value)}"
    elif kind == "string_pattern_mismatch":
        text = _pattern_message(value, str(ctx.get("pattern", "")), path)
    elif kind in _BOUND_ERRORS:
        low, high = _bounds(model, path)
        if low is not None and high is not None:
            text = f"must be between {low} and {high}, got {show_value(value)}"
        elif low is not None:
            text = f"must be at least {low}, got {show_value(value)}"
        elif high is not None:
            text = f"must be at most {high}, got {show_value(value)}"
        else:
            text = error["msg"].replace("Input should be", "must be")
    elif kind == "too_short":
        minimum = ctx.get("min_length", 1)
        text = "must not be empty" if minimum == 1 else f"must have at least {minimum} items"
    elif kind == "too_long":
        text = f"must have at most {ctx.get('max_length')} items"
    elif kind in ("value_error", "assertion_error") and "error" in ctx:
        text = str(ctx["error"])
    else:
        text = error["msg"]
    return at_field(path, text)


def model_diagnostics(
    exc: ValidationError, model: type[BaseModel], source: DocumentSource, kind: str, name: str
) -> list[Diagnostic]:
    items: list[_ModelError] = []
    for error in exc.errors(include_url=False):
        loc = error["loc"]
        if error["type"] == "missing" and loc:
            # The missing field is not in the document: point at the mapping that lacks it.
            walk = _walk(source.document, loc[:-1])
            items.append(_ModelError(error, walk, (*walk.path, loc[-1])))
        else:
            walk = _walk(source.document, loc)
            items.append(_ModelError(error, walk, walk.path))
    # pydantic counts only the items that validated, so a list whose every item is wrong is also
    # "too short": noise next to the errors on its items.
    inner = {item.path[:depth] for item in items for depth in range(len(item.path))}
    items = [item for item in items if not (item.error["type"] == "too_short" and item.path in inner)]
    return [
        Diagnostic(source.path, item.walk.line, kind, name, item.message or _describe(item, model))
        for item in _prefer_union_member(items)
    ]


def _prefer_union_member(items: list[_ModelError]) -> list[_ModelError]:
    """Keep only the errors of the union member the user meant.

    For ``auth: Name | tuple[Name, ...]`` pydantic reports one error per member. A member whose
    error is "wrong type" at the union itself is not what the user wrote, so it is dropped; when
    every member says so, one "expected a string or a list" replaces them all.
    """
    groups: dict[Loc, list[_ModelError]] = {}
    for item in items:
        if item.walk.branch_at is not None:
            groups.setdefault(item.walk.path[: item.walk.branch_at], []).append(item)
    dropped: set[int] = set()
    for members in groups.values():
        rejected = {
            member.walk.branch
            for member in members
            if member.error["type"] in _EXPECTED and len(member.walk.path) == member.walk.branch_at
        }
        kept = [member for member in members if member.walk.branch not in rejected]
        if kept:
            dropped.update(id(member) for member in members if member.walk.branch in rejected)
            continue
        expected = " or ".join(dict.fromkeys(_EXPECTED[member.error["type"]] for member in members))
        first = members[0]
        first.message = at_field(
            first.path, f"expected {expected}, got {show_value(first.error.get('input'))}"
        )
        dropped.update(id(member) for member in members[1:])
    return [item for item in items if id(item) not in dropped]
