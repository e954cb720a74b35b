"""Load a policy directory into a validated :class:`~waypost.policies.model.PolicySet`.

Stage 1 of waypost (policy files -> typed model -> Envoy resources -> snapshot -> xDS): read every
``*.yaml``/``*.yml`` file, parse each YAML document keeping the line of every key and item, check
it against its kind's model, run the cross-document checks of :mod:`waypost.policies.validate`,
read the files the policies name (certificates, JWKS), and either return the whole set or raise
one :class:`~waypost.policies.diagnostics.PolicyError` listing every problem, each as
``path:line: Kind name: message``.

YAML is read with YAML 1.2 core-schema scalars: only ``true``/``false`` are booleans, so keys such
as ``on`` (in ``retries``) and values such as ``NO`` stay strings; ``017`` is 17; there are no
timestamps. Anchors, aliases and ``<<`` merge keys work.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import posixpath
import re
import types
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from difflib import get_close_matches
from typing import Annotated, Any, Final, Union, cast, get_args, get_origin
from urllib.parse import urlsplit

import annotated_types
import yaml
from google.protobuf import descriptor_pb2
from google.protobuf.message import DecodeError
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from yaml.events import (
    AliasEvent,
    DocumentEndEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)

from waypost.policies.diagnostics import MAX_REPORTED_PER_FILE, Diagnostic, PolicyError, capped
from waypost.policies.endpoint_patch import LastLoad, moved_endpoints, patched
from waypost.policies.load_cache import FileResult, LoadCache
from waypost.policies.model import (
    KINDS,
    Api,
    AuthPolicy,
    Document,
    Gateway,
    PolicySet,
    Route,
    Service,
    Sidecar,
    SourceRef,
)
from waypost.policies.pem import certificate_problem, key_mismatch_problem, private_key_problem
from waypost.policies.request_schemas import SchemaProblem, compile_validation
from waypost.policies.sidecars import expand_sidecar
from waypost.policies.source import (
    MAX_POLICY_FILE_BYTES,
    MAX_REFERENCED_FILE_BYTES,
    DirectorySource,
    PolicySource,
    SourceError,
)
from waypost.policies.teams import scope_teams, team_folders
from waypost.policies.types import HEADER_NAME_PATTERN, NAME_PATTERN, PrivateBytes
from waypost.policies.validate import Entry, Loc, per_entry, validate

__all__ = ["load_policies"]

MAX_DEPTH: Final = 64
"""Deepest nesting accepted in a document; real policies nest a handful of levels."""
MAX_NODES: Final = 1_000_000
"""Most values one document may hold once aliases are expanded (a bound against alias bombs)."""
MAX_FILE_BYTES: Final = MAX_POLICY_FILE_BYTES
"""Largest policy file read: one cap, enforced by the source (:mod:`.source`) before reading."""
MAX_DOCUMENTS: Final = 10_000
"""Most documents (`---`) read from one file; reading stops there with an error."""
MAX_ENTRIES: Final = 10_000
"""Most keys of one mapping, or items of one list, in a document (which is then not validated)."""

_KIND_ATTRIBUTES: Final = {
    "Gateway": "gateways",
    "Service": "services",
    "Route": "routes",
    "AuthPolicy": "auth_policies",
    "Consumer": "consumers",
    "RateLimitPolicy": "rate_limit_policies",
    "GrpcTarget": "grpc_targets",
    "Sidecar": "sidecars",
    "Api": "apis",
    "Portal": "portals",
    "Team": "teams",
}
_KNOWN_KINDS: Final = ", ".join(KINDS)


def load_policies(
    directory: str | os.PathLike[str] | PolicySource, cache: LoadCache | None = None
) -> PolicySet:
    """Load and validate every policy file under ``directory`` (a path, read with
    :class:`~waypost.policies.source.DirectorySource`, or any source, e.g. a git commit's tree).

    Raises :class:`PolicyError` listing every problem found; never any other exception for bad
    input. Paths in messages are ``directory`` as given joined with each file's relative path.
    With a ``cache`` (one per directory, kept across loads), unchanged documents are not parsed
    or validated again; the result is the same as without it.
    """
    source = DirectorySource(directory) if isinstance(directory, str | os.PathLike) else directory
    with _gc_paused():
        if cache is None:
            return _Load(source).run()
        cache.begin()
        try:
            return _Load(source, cache).run()
        finally:
            cache.end()


# --- YAML: events -> Python values, with the line of every key and item --------------------------
#
# Built straight from libyaml's event stream rather than with yaml.compose_all: the Cython
# composer recurses in C, so some 30,000 levels of nesting (an 80 kB file) crash the process, and
# composing alone, a node object per value, took longer than this whole loader on 6,000 documents.

_STR_TAG: Final = "tag:yaml.org,2002:str"
_MAP_TAGS: Final = frozenset({None, "!", "tag:yaml.org,2002:map"})
_SEQ_TAGS: Final = frozenset({None, "!", "tag:yaml.org,2002:seq"})
_NOT_SPECIAL: Final = object()
_PLAIN_SPECIAL: Final[dict[str, Any]] = {
    "": None,
    "~": None,
    "null": None,
    "Null": None,
    "NULL": None,
    "true": True,
    "True": True,
    "TRUE": True,
    "false": False,
    "False": False,
    "FALSE": False,
}
_NUMBER_START: Final = frozenset("0123456789+-.")
_INT_RE: Final = re.compile(r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+")
_FLOAT_RE: Final = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")
_FLOAT_SPECIAL: Final = {
    ".inf": float("inf"),
    "+.inf": float("inf"),
    "-.inf": float("-inf"),
    ".nan": float("nan"),
}

# Markers in a mapping frame's pending-key slot.
_NO_KEY: Final = object()
_BAD_KEY: Final = object()  # a rejected key: its value is read, then dropped
_MERGE: Final = object()  # a `<<` merge key


def _plain_scalar(text: str) -> Any:
    """A plain (unquoted) scalar under the YAML 1.2 core schema."""
    special = _PLAIN_SPECIAL.get(text, _NOT_SPECIAL)
    if special is not _NOT_SPECIAL:
        return special
    if text[0] in _NUMBER_START:  # most scalars are names and paths: skip the regexes for them
        if _INT_RE.fullmatch(text):
            try:
                if text.startswith(("0o", "0x")):
                    return int(text[2:], 8 if text[1] == "o" else 16)
                return int(text)
            except ValueError:  # more digits than int() converts: far out of any range anyway
                return float(text)
        if _FLOAT_RE.fullmatch(text):
            return float(text)
        return _FLOAT_SPECIAL.get(text.lower(), text)
    return text


def _tagged_scalar(tag: str, text: str) -> Any:
    """A scalar with an explicit standard tag (``!!int "5"``); ValueError when it does not fit."""
    value = _plain_scalar(text) if text else None
    expected = {
        "tag:yaml.org,2002:int": int,
        "tag:yaml.org,2002:float": float,
        "tag:yaml.org,2002:bool": bool,
        "tag:yaml.org,2002:null": type(None),
    }.get(tag)
    if expected is None:
        raise ValueError(f"unsupported tag '{tag}'")
    if expected is float and type(value) is int:
        return float(value)
    if type(value) is not expected:
        raise ValueError(f"{text!r} is not a valid {tag.rsplit(':', 1)[-1]}")
    return value


class _Frame:
    """A mapping or sequence being read."""

    __slots__ = ("anchor", "is_map", "key", "key_line", "line", "lines", "merges", "value")

    def __init__(self, value: dict[str, Any] | list[Any], lines: Any, line: int, anchor: str | None) -> None:
        self.value: Any = value  # Any: `is_map` says which, checked once per event in the hot loop
        self.lines: Any = lines  # {key: line} for a mapping, [line, ...] for a sequence
        self.line = line
        self.anchor = anchor
        self.is_map = type(value) is dict
        self.key: object = _NO_KEY
        self.key_line = line
        self.merges: list[dict[str, Any]] = []


@dataclass(slots=True)
class _Document:
    """One YAML document: its value, and the lines of everything in it."""

    line: int
    value: Any = None
    # id(container) -> {key: line} or [line, ...]: side tables, so the values stay plain
    # dicts/lists that pydantic validates directly; ids stay valid while `value` holds them.
    lines: dict[int, Any] = field(default_factory=dict)
    issues: list[tuple[int, Loc, str]] = field(default_factory=list)
    fatal: bool = False  # too deep or too large to hand to the model
    aliased: bool = False  # an alias repeats a mapping or list: check the expanded size


@dataclass(slots=True)
class _YamlProblem:
    line: int
    message: str


class _TooManyDocuments(Exception):
    def __init__(self, line: int) -> None:
        self.line = line


def _parse(data: bytes) -> tuple[list[_Document], _YamlProblem | None]:
    """Every complete document of ``data``, and the syntax error that stopped reading, if any."""
    parser = yaml.CSafeLoader(data)
    documents: list[_Document] = []
    try:
        _read_events(parser, documents)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.context_mark and mark is not exc.context_mark:
            problem += f" ({exc.context} at line {exc.context_mark.line + 1})"
        return documents, _YamlProblem(mark.line + 1 if mark else 1, f"invalid YAML: {problem}")
    except yaml.reader.ReaderError as exc:
        line = data.count(b"\n", 0, max(exc.position, 0)) + 1
        return documents, _YamlProblem(line, f"not valid UTF-8 or UTF-16 text: {exc.reason}")
    except yaml.YAMLError as exc:
        return documents, _YamlProblem(1, f"invalid YAML: {exc}")
    except _TooManyDocuments as exc:
        return documents, _YamlProblem(exc.line, f"more than {MAX_DOCUMENTS} documents in one file")
    finally:
        parser.dispose()
    return documents, None


def _shift(document: _Document, offset: int) -> None:
    """Move every line of ``document`` down by ``offset`` (it was parsed apart from its file)."""
    document.line += offset
    for key, lines in document.lines.items():
        if type(lines) is dict:
            document.lines[key] = {k: line + offset for k, line in lines.items()}
        else:
            document.lines[key] = [line + offset for line in lines]
    document.issues = [(line + offset, loc, message) for line, loc, message in document.issues]


def _expanded_size(value: Any, memo: dict[int, int]) -> int:
    """How many values ``value`` holds once aliases are expanded, each shared container counted
    at every use but walked once: linear in what was written, however big the expansion."""
    kind = type(value)
    if kind is not dict and kind is not list:
        return 1
    size = memo.get(id(value))
    if size is None:
        children = value.values() if kind is dict else value
        size = memo[id(value)] = 1 + sum(_expanded_size(child, memo) for child in children)
    return size


def _issue(document: _Document, stack: list[_Frame], frames: int, line: int, message: str) -> None:
    """Record a problem found while reading, under the field path of the outer ``frames``."""
    loc: list[str | int] = []
    for frame in stack[:frames]:
        if not frame.is_map:
            loc.append(len(frame.value))
        elif type(frame.key) is str:
            loc.append(frame.key)
    document.issues.append((line, tuple(loc), message))


def _read_events(parser: yaml.CSafeLoader, documents: list[_Document]) -> None:
    # The hot loop of loading (a few hundred thousand events for a large directory): locals are
    # cached and the frequent cases come first.
    get_event = parser.get_event
    plain_special, number_start, not_special = _PLAIN_SPECIAL, _NUMBER_START, _NOT_SPECIAL
    stack: list[_Frame] = []
    top: _Frame | None = None  # stack[-1]
    anchors: dict[str, Any] = {}
    document = _Document(line=1)
    value: Any

    while True:
        # Any: the branches below test ``type(event) is X`` (cheaper than isinstance in this loop),
        # which the type checker cannot narrow on.
        event: Any = get_event()
        event_type = type(event)
        if event_type is ScalarEvent:
            text: str = event.value
            line = event.start_mark.line + 1
            anchor = event.anchor
            tag = event.tag
            if tag is None:
                if event.implicit[0]:
                    value = plain_special.get(text, not_special)
                    if value is not_special:
                        value = _plain_scalar(text) if text[0] in number_start else text
                    if text == "<<" and top is not None and top.is_map and top.key is _NO_KEY:
                        top.key = _MERGE
                        continue
                else:
                    value = text
            elif tag == "!" or tag == _STR_TAG:
                value = text
            else:
                try:
                    value = _tagged_scalar(tag, text)
                except ValueError as exc:
                    _issue(document, stack, len(stack), line, str(exc))
                    value = text
        elif event_type is MappingStartEvent or event_type is SequenceStartEvent:
            line = event.start_mark.line + 1
            if event_type is MappingStartEvent:
                top = _Frame({}, {}, line, event.anchor)
                known_tag = event.tag in _MAP_TAGS
            else:
                top = _Frame([], [], line, event.anchor)
                known_tag = event.tag in _SEQ_TAGS
            if not known_tag:
                _issue(document, stack, len(stack), line, f"unsupported tag '{event.tag}'")
            document.lines[id(top.value)] = top.lines
            stack.append(top)
            if len(stack) == MAX_DEPTH + 1:
                _issue(document, stack, 1, line, f"nested more than {MAX_DEPTH} levels deep")
                document.fatal = True
            continue
        elif event_type is MappingEndEvent or event_type is SequenceEndEvent:
            frame = stack.pop()
            value, line, anchor = frame.value, frame.line, frame.anchor
            if len(value) > MAX_ENTRIES and not document.fatal:
                what = "keys" if frame.is_map else "items"
                _issue(document, stack, len(stack), line, f"more than {MAX_ENTRIES} {what}")
                document.fatal = True
            top = stack[-1] if stack else None
            if frame.merges:
                # Keys written in the mapping win over merged ones; earlier merges win over later.
                for merged in frame.merges:
                    merged_lines = document.lines[id(merged)]
                    for merged_key, item in merged.items():
                        if merged_key not in value:
                            value[merged_key] = item
                            frame.lines[merged_key] = merged_lines[merged_key]
        elif event_type is AliasEvent:
            line = event.start_mark.line + 1
            anchor = None
            if event.anchor in anchors:
                value = anchors[event.anchor]
                document.aliased = document.aliased or type(value) is dict or type(value) is list
            else:
                recursive = any(frame.anchor == event.anchor for frame in stack)
                what = "refers to the node that contains it" if recursive else "is not defined"
                _issue(document, stack, len(stack), line, f"alias '*{event.anchor}' {what}")
                document.fatal = True
                value = None
        elif event_type is DocumentStartEvent:
            if len(documents) >= MAX_DOCUMENTS:
                raise _TooManyDocuments(event.start_mark.line + 1)
            document = _Document(line=event.start_mark.line + 1)
            anchors = {}
            continue
        elif event_type is DocumentEndEvent:
            if document.aliased and not document.fatal and _expanded_size(document.value, {}) > MAX_NODES:
                _issue(
                    document,
                    stack,
                    0,
                    document.line,
                    f"more than {MAX_NODES} values once aliases are expanded",
                )
                document.fatal = True
            documents.append(document)
            continue
        elif event_type is StreamEndEvent or event is None:
            return
        else:  # StreamStartEvent
            continue

        if anchor is not None:
            anchors[anchor] = value
        if top is None:
            document.value, document.line = value, line
            continue
        if not top.is_map:
            top.value.append(value)
            top.lines.append(line)
            continue
        key = top.key
        if type(key) is str:
            container = top.value
            if key in container:
                first = top.lines[key]
                _issue(
                    document,
                    stack,
                    len(stack) - 1,
                    top.key_line,
                    f"duplicate key '{key}' (first at line {first})",
                )
            container[key] = value
            top.lines[key] = top.key_line
            top.key = _NO_KEY
        elif key is _NO_KEY:
            if type(value) is str:
                top.key, top.key_line = value, line
            else:
                _issue(document, stack, len(stack) - 1, line, f"key {_show(value)} is not a string")
                top.key = _BAD_KEY
        elif key is _MERGE:
            sources = value if type(value) is list else [value]
            if all(type(source) is dict for source in sources):
                top.merges.extend(sources)
            elif not document.fatal:  # when fatal, a bad alias here was reported already
                _issue(document, stack, len(stack) - 1, line, "'<<' merges a mapping or a list of mappings")
            top.key = _NO_KEY
        else:  # _BAD_KEY: the value of a rejected key is read, then dropped
            top.key = _NO_KEY


# --- Positions: pydantic locations -> lines --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Walk:
    line: int
    path: tuple[str | int, ...]  # the parts of loc that are keys or indexes in the document
    branch_at: int | None  # len(path) where the first union/validator tag was skipped
    branch: str | None  # that tag: which union member the error is about


def _walk(document: _Document, loc: Loc) -> _Walk:
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
class _Source:
    """Where one document was written: implements :class:`waypost.policies.validate.Source`."""

    path: str
    document: _Document
    name_line: int = 0
    """The line of ``name``, once asked for (0: not yet): every load asks, and the entry is
    reused across loads by the :class:`LoadCache`."""

    def line_of(self, loc: Loc) -> int:
        if loc == ("name",):
            if not self.name_line:
                self.name_line = _walk(self.document, loc).line
            return self.name_line
        return _walk(self.document, loc).line


def _field(path: Loc) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _at(path: Loc, message: str) -> str:
    return f"{_field(path)}: {message}" if path else message


def _show(value: Any) -> str:
    """A value as the user wrote it, short enough for one line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return f"'{value}'" if len(value) <= 60 else f"'{value[:57]}...'"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


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
            f"{_show(value)} is not a valid name: use letters, digits, '-', '_' and '.', at most 63"
            " characters, starting and ending with a letter or digit"
        )
    if pattern == HEADER_NAME_PATTERN:
        return f"{_show(value)} is not a valid header name"
    if pattern == "^/":
        return f"{_show(value)} must start with '/'"
    if field_name == "api_keys":
        # Never echo the value: it may be a plaintext key pasted by mistake.
        return "expected 'sha256:' and 64 lowercase hex digits: commit key hashes, never keys"
    if field_name == "by":
        return f"{_show(value)} must be consumer, client_ip, route or header:<name>"
    if field_name == "plugin":
        return f"{_show(value)} must be 'module:function'"
    return f"{_show(value)} does not match the pattern {pattern}"


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
        return f"field '{_field(path)}' is required"
    if kind == "extra_forbidden":
        message = f"unknown field '{_field(path)}'"
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
            return _at(path, _pattern_message(value, ctx.get("pattern", ""), path))
    if kind in _EXPECTED:
        text = f"expected {_EXPECTED[kind]}, got {_show(value)}"
    elif kind == "literal_error":
        text = f"must be one of {ctx.get('expected')}, got {_show(value)}"
    elif kind == "string_pattern_mismatch":
        text = _pattern_message(value, str(ctx.get("pattern", "")), path)
    elif kind in _BOUND_ERRORS:
        low, high = _bounds(model, path)
        if low is not None and high is not None:
            text = f"must be between {low} and {high}, got {_show(value)}"
        elif low is not None:
            text = f"must be at least {low}, got {_show(value)}"
        elif high is not None:
            text = f"must be at most {high}, got {_show(value)}"
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
    return _at(path, text)


def _model_diagnostics(
    exc: ValidationError, model: type[BaseModel], source: _Source, kind: str, name: str
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
        first.message = _at(first.path, f"expected {expected}, got {_show(first.error.get('input'))}")
        dropped.update(id(member) for member in members[1:])
    return [item for item in items if id(item) not in dropped]


# --- Files the policies refer to -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _FileRef:
    loc: Loc
    value: str
    what: str  # "certificate", "private key", "jwks", "descriptor", "openapi" or "schema"


_VALIDATION_FILES = ("json_schema", "openapi", "query_schema")


def validation_refs(route: Route) -> Iterator[_FileRef]:
    if route.validation is not None:
        for key in _VALIDATION_FILES:
            value = getattr(route.validation, key)
            if value is not None:
                yield _FileRef(("validation", key), value, "schema")


def validation_problem(route: Route, files: Mapping[str, bytes]) -> tuple[Loc, str] | None:
    """A validation file that does not compile, at the field naming it; compiled once (cached)."""
    if route.validation is None:
        return None
    try:
        compile_validation(route.validation, files)
    except SchemaProblem as exc:
        key = next(
            (k for k in _VALIDATION_FILES if str(exc).startswith(f"'{getattr(route.validation, k)}'")),
            "openapi" if route.validation.openapi is not None else "json_schema",
        )
        return ("validation", key), str(exc)
    return None


def _entry_file_refs(entry: Entry) -> tuple[_FileRef, ...]:
    return tuple(_file_refs(entry.document)) if entry.document is not None else ()


def _file_refs(document: Document) -> Iterator[_FileRef]:
    if isinstance(document, Gateway) and document.tls is not None:
        yield _FileRef(("tls", "cert"), document.tls.cert, "certificate")
        yield _FileRef(("tls", "key"), document.tls.key, "private key")
        if document.tls.client_ca is not None:
            yield _FileRef(("tls", "client_ca"), document.tls.client_ca, "certificate")
    elif isinstance(document, Service) and document.tls is not None:
        yield _FileRef(("tls", "ca"), document.tls.ca, "certificate")
        if document.tls.cert is not None and document.tls.key is not None:
            yield _FileRef(("tls", "cert"), document.tls.cert, "certificate")
            yield _FileRef(("tls", "key"), document.tls.key, "private key")
    elif isinstance(document, Route):
        if document.grpc_json is not None:
            yield _FileRef(("grpc_json", "descriptor"), document.grpc_json.descriptor, "descriptor")
        yield from validation_refs(document)
    elif isinstance(document, Api) and document.openapi is not None:
        yield _FileRef(("openapi",), document.openapi, "openapi")
    elif isinstance(document, AuthPolicy):
        for index, source in enumerate(document.identity):
            if source.jwt is not None:
                yield _FileRef(("identity", index, "jwt", "jwks"), source.jwt.jwks, "jwks")


def _content_problem(what: str, shown: str, data: bytes) -> str | None:
    if what == "jwks":
        try:
            parsed = json.loads(data)
        except (ValueError, RecursionError):
            parsed = None
        if not (isinstance(parsed, dict) and isinstance(parsed.get("keys"), list)):
            return f"{shown} is not a JWKS file: expected a JSON object with a 'keys' list"
        return None
    if what == "descriptor":
        return _descriptor_problem(shown, data)
    if what == "openapi":
        return _openapi_problem(shown, data)
    if what == "schema":
        return None  # parsed and compiled with the rest of the route's validation
    # Parsed as Envoy will parse them, so junk between PEM markers is a file:line error here.
    return private_key_problem(shown, data) if what == "private key" else certificate_problem(shown, data)


def _descriptor_problem(shown: str, data: bytes) -> str | None:
    descriptors = descriptor_pb2.FileDescriptorSet()
    try:
        descriptors.ParseFromString(data)
    except (DecodeError, RuntimeWarning, ValueError):
        descriptors.Clear()
    if not descriptors.file:
        return f"{shown} is not a protobuf descriptor set (protoc --include_imports --descriptor_set_out)"
    return None


def _openapi_problem(shown: str, data: bytes) -> str | None:
    # JSON is YAML 1.2, so one parser reads both forms; the portal renders what is found.
    try:
        parsed = yaml.safe_load(data)
    except (yaml.YAMLError, RecursionError):
        parsed = None
    if not (isinstance(parsed, dict) and ("openapi" in parsed or "swagger" in parsed)):
        return f"{shown} is not an OpenAPI document: expected a mapping with an 'openapi' key"
    return None


def _missing_grpc_services(route: Route, data: bytes) -> list[str]:
    descriptors = descriptor_pb2.FileDescriptorSet.FromString(data)
    defined = {
        f"{file.package}.{service.name}" if file.package else service.name
        for file in descriptors.file
        for service in file.service
    }
    return [name for name in (route.grpc_json.services if route.grpc_json else ()) if name not in defined]


# --- The load ------------------------------------------------------------------------------------


def _source_ref(entry: Entry) -> SourceRef:
    return SourceRef(entry.source.path, entry.source.line_of(("name",)))


@contextmanager
def _gc_paused() -> Iterator[None]:
    # Loading allocates hundreds of thousands of small acyclic objects, and the cyclic collector
    # keeps rescanning the growing heap: about a fifth of the load time at 6,000 documents.
    # Reference counting still frees everything; only the cycle scans wait until the end.
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _Load:
    """One load of one directory: collects entries, files and diagnostics as it goes."""

    def __init__(self, source: PolicySource, cache: LoadCache | None = None) -> None:
        self.source = source
        self.root = source.display
        self.cache = cache
        self.diagnostics: list[Diagnostic] = []
        self.entries: list[Entry] = []
        self.inputs: dict[str, bytes] = {}  # relative path -> bytes, for the version hash
        self.files: dict[str, bytes] = {}
        self.complete = True  # every file was read and parsed: missing targets really are missing
        self.reported: dict[str, int] = {}  # path -> diagnostics of its documents so far
        self.unchecked: dict[str, int] = {}  # path -> documents skipped after too many problems

    def display(self, relative: str) -> str:
        return self.root if relative == "." else os.path.join(self.root, relative)

    def relative(self, path: str) -> str:
        """A diagnostics path back to its path inside the directory (``/``-separated)."""
        return os.path.relpath(path, self.root).replace(os.sep, "/")

    def fail(self, path: str, line: int, message: str, kind: str = "", name: str = "") -> None:
        self.diagnostics.append(Diagnostic(path, line, kind, name, message))

    def run(self) -> PolicySet:
        try:
            files = self.source.policy_files()
        except SourceError as exc:
            raise PolicyError([Diagnostic(self.root, 0, "", "", str(exc))]) from None
        for relative, message in self.source.problems():
            self.complete = False
            self.fail(self.display(relative), 0, message)
        for relative in files:
            self.load_file(relative)
        self.report_unchecked()
        read = tuple(self.entries)
        last = self.cache.last if self.cache is not None else None
        if self.cache is not None:
            self.cache.last = None  # set again below, once this load succeeds
            self.cache.patched = False
        moved = moved_endpoints(last, read) if self.complete and not self.diagnostics else None
        if last is not None and moved is not None:
            policy = self.patch(last, moved)
            if policy is not None:
                if self.cache is not None:
                    self.cache.patched = True
                return self.remember(read, policy)
        self.expand_sidecars()
        self.entries, overstepped = scope_teams(self.entries, self.relative)
        self.diagnostics.extend(overstepped)
        self.diagnostics.extend(validate(self.entries, check_references=self.complete))
        self.read_referenced_files()
        if self.diagnostics:
            raise PolicyError(capped(self.diagnostics), team_folders=team_folders(self.entries))
        return self.remember(read, self.policy_set())

    def patch(self, last: LastLoad, moved: list[tuple[Entry, Entry]]) -> PolicySet | None:
        """The last set with Services whose endpoints alone moved (see :mod:`.endpoint_patch`);
        None, with this load's state as it was, when the referenced files say otherwise."""
        inputs, reported = dict(self.inputs), len(self.diagnostics)
        self.read_referenced_files()  # a certificate may have changed with the endpoints
        if len(self.diagnostics) == reported and self.files == last.policy.files:
            version = self.version()
            return patched(last.policy, moved, version=version, files=self.files, source_of=_source_ref)
        self.inputs, self.files = inputs, {}
        del self.diagnostics[reported:]
        return None

    def remember(self, read: tuple[Entry, ...], policy: PolicySet) -> PolicySet:
        if self.cache is not None:
            self.cache.last = LastLoad(read, policy)
        return policy

    def load_file(self, relative: str) -> None:
        path = self.display(relative)
        try:
            data = self.source.read(relative, limit=MAX_POLICY_FILE_BYTES)
        except SourceError as exc:
            self.complete = False
            self.fail(path, 0, str(exc))
            return
        self.inputs[relative] = data
        if self.cache is None:
            self.load_data(path, data)
            return
        loaded = self.cache.load(path, data, self.load_apart)
        self.entries.extend(loaded.entries)
        self.diagnostics.extend(loaded.diagnostics)
        self.complete &= loaded.complete

    def load_data(self, path: str, data: bytes, offset: int = 0) -> None:
        """Parse ``data`` and check each document against its kind's model; ``offset`` lines of
        the file come before ``data``."""
        documents, problem = _parse(data)
        if problem is not None:
            self.complete = False
            self.fail(path, problem.line + offset, problem.message)
        for document in documents:
            if offset:
                _shift(document, offset)
            self.load_document(path, document)

    def report_unchecked(self) -> None:
        """One line per file whose documents were skipped after too many problems."""
        for path, count in self.unchecked.items():
            self.complete = False  # a skipped document may define what others refer to
            message = f"{count} more document(s) not checked: the file has {MAX_REPORTED_PER_FILE}+ problems"
            self.fail(path, 0, message)
        self.unchecked.clear()

    def load_apart(self, path: str, data: bytes, offset: int) -> FileResult:
        """:meth:`load_data` into a result of its own, for the :class:`LoadCache`."""
        part = _Load(self.source)
        part.load_data(path, data, offset)
        part.report_unchecked()
        lines = tuple(cast(_Source, e.source).document.line for e in part.entries)
        return FileResult(tuple(part.entries), lines, tuple(part.diagnostics), part.complete)

    def load_document(self, path: str, document: _Document) -> None:
        if self.reported.get(path, 0) >= MAX_REPORTED_PER_FILE and document.value is not None:
            # Enough problems in this file to fail the load: the rest is not validated (each
            # unknown field costs a "did you mean" search), only counted.
            self.unchecked[path] = self.unchecked.get(path, 0) + 1
            return
        before = len(self.diagnostics)
        self._load_document(path, document)
        self.reported[path] = self.reported.get(path, 0) + len(self.diagnostics) - before

    def _load_document(self, path: str, document: _Document) -> None:
        value = document.value
        if value is None and not document.issues:
            return  # an empty document, e.g. a trailing `---`
        source = _Source(path, document)
        is_mapping = type(value) is dict
        raw_kind = value.get("kind") if is_mapping else None
        raw_name = value.get("name") if is_mapping else None
        model = KINDS.get(raw_kind) if type(raw_kind) is str else None
        kind = raw_kind if model is not None and isinstance(raw_kind, str) else ""
        name = raw_name if model is not None and isinstance(raw_name, str) else ""
        for line, loc, message in document.issues:
            self.fail(path, line, _at(loc, message), kind, name)
        if not is_mapping:
            if not document.fatal:
                # The value's type, never its text: a file that is not policy at all (a key, a
                # password file) must not have its first line printed.
                got = "a string" if isinstance(value, str) else _show(value)
                message = f"a policy document is a mapping with kind and name, got {got}"
                self.fail(path, document.line, message)
            return
        if model is None:
            self.fail(path, source.line_of(("kind",)), self.kind_problem(value))
            return
        try:
            checked: Document | None = None if document.fatal else model.model_validate(value)
        except ValidationError as exc:
            checked = None
            self.diagnostics.extend(_model_diagnostics(exc, model, source, kind, name))
        except Exception as exc:
            # A validator in the model let a non-ValueError escape: still the input's fault, and
            # the control plane must report it rather than crash on it.
            checked = None
            self.fail(path, document.line, f"invalid document: {exc}", kind, name)
        if name:
            self.entries.append(Entry(kind, name, source, checked))

    def expand_sidecars(self) -> None:
        """Each Sidecar's Gateways, Routes and Services join the entries, placed at its lines."""
        sidecars = [e for e in self.entries if isinstance(e.document, Sidecar)]
        by_name = {e.name: e.document for e in sidecars if isinstance(e.document, Sidecar)}
        for entry in sidecars:
            assert isinstance(entry.document, Sidecar)
            expansion = expand_sidecar(entry.document, by_name)
            for loc, message in expansion.problems:
                line = entry.source.line_of(loc)
                self.fail(entry.source.path, line, _at(loc, message), entry.kind, entry.name)
            self.entries.extend(Entry(d.kind, d.name, entry.source, d) for d in expansion.documents)

    @staticmethod
    def kind_problem(value: dict[str, Any]) -> str:
        raw_kind = value.get("kind")
        if "kind" not in value:
            return f"field 'kind' is required; known kinds: {_KNOWN_KINDS}"
        if type(raw_kind) is not str:
            return f"kind: expected a string, got {_show(raw_kind)}; known kinds: {_KNOWN_KINDS}"
        lowered = {known.lower(): known for known in KINDS}
        guess = get_close_matches(raw_kind.lower(), lowered, n=1, cutoff=0.6)
        hint = f" (did you mean '{lowered[guess[0]]}'?)" if guess else ""
        return f"unknown kind '{raw_kind}'{hint}; known kinds: {_KNOWN_KINDS}"

    def read_referenced_files(self) -> None:
        cache: dict[str, bytes | str] = {}  # normalized relative path -> bytes, or why not
        for entry in self.entries:
            document = entry.document
            if document is None:
                continue
            refs = per_entry(entry, "file refs", _entry_file_refs)
            if not refs and not (isinstance(document, Route) and document.validation is not None):
                continue  # most documents: nothing to read or compile
            failed = False
            for ref in refs:
                problem = self.read_reference(ref, cache)
                if problem is not None:
                    failed = True
                    line = entry.source.line_of(ref.loc)
                    self.fail(entry.source.path, line, _at(ref.loc, problem), entry.kind, entry.name)
                elif ref.what == "private key":
                    self.check_key_pair(entry, ref)
                elif ref.what == "descriptor" and isinstance(entry.document, Route):
                    # Envoy refuses a transcoder naming a service its descriptor lacks.
                    missing = _missing_grpc_services(entry.document, self.files[ref.value])
                    if missing:
                        loc = ("grpc_json", "services")
                        message = f"{', '.join(missing)} not in '{ref.value}'"
                        line = entry.source.line_of(loc)
                        self.fail(entry.source.path, line, _at(loc, message), entry.kind, entry.name)
            if not failed and isinstance(entry.document, Route) and entry.document.validation is not None:
                schema_problem = validation_problem(entry.document, self.files)
                if schema_problem is not None:
                    schema_loc, message = schema_problem
                    line = entry.source.line_of(schema_loc)
                    self.fail(entry.source.path, line, _at(schema_loc, message), entry.kind, entry.name)

    def check_key_pair(self, entry: Entry, key_ref: _FileRef) -> None:
        """Envoy refuses a key that is not its certificate's; `_file_refs` yields the cert first."""
        tls = getattr(entry.document, "tls", None)
        cert = self.files.get(getattr(tls, "cert", None) or "")
        key = self.files.get(key_ref.value)
        if cert is None or key is None:
            return
        problem = key_mismatch_problem(f"'{key_ref.value}'", bytes(cert), bytes(key))
        if problem is not None:
            line = entry.source.line_of(key_ref.loc)
            self.fail(entry.source.path, line, _at(key_ref.loc, problem), entry.kind, entry.name)

    def read_reference(self, ref: _FileRef, cache: dict[str, bytes | str]) -> str | None:
        shown = f"'{ref.value}'"
        if ref.what == "jwks" and "://" in ref.value:
            parts = urlsplit(ref.value)
            if parts.scheme != "https" or not parts.netloc:
                return f"{shown} must be an https:// URL or a file in the policy directory"
            return None
        if not ref.value or ref.value.startswith(("/", "\\")) or os.path.isabs(ref.value):
            return f"{shown} must be a path relative to the policy directory"
        normal = posixpath.normpath(ref.value.replace("\\", "/"))
        if normal == ".." or normal.startswith("../"):
            return f"{shown} is outside the policy directory"
        if normal not in cache:
            try:
                cache[normal] = self.source.read(normal, limit=MAX_REFERENCED_FILE_BYTES)
            except SourceError as exc:
                cache[normal] = str(exc)
        data = cache[normal]
        if isinstance(data, str):
            return data
        problem = _content_problem(ref.what, shown, data)
        if problem is None:
            self.inputs[normal] = data
            # One file used as both certificate and key stays redacted.
            secret = ref.what == "private key" or isinstance(self.files.get(ref.value), PrivateBytes)
            self.files[ref.value] = PrivateBytes(data) if secret else data
        return problem

    def version(self) -> str:
        # Length-prefixed (path, bytes) pairs in path order: the same files give the same hash on
        # every machine, wherever the directory is, and no two file sets share an encoding.
        digest = hashlib.sha256()
        for relative, data in sorted(self.inputs.items()):
            encoded = relative.encode()
            digest.update(len(encoded).to_bytes(8, "big"))
            digest.update(encoded)
            digest.update(len(data).to_bytes(8, "big"))
            digest.update(data)
        return digest.hexdigest()

    def policy_set(self) -> PolicySet:
        by_kind: dict[str, dict[str, Document]] = {kind: {} for kind in KINDS}
        sources: dict[tuple[str, str], SourceRef] = {}
        field_sources: dict[tuple[str, str, str], SourceRef] = {}
        # Grouped by kind, then each kind's names sorted (plain strings: the cheapest sort).
        entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        for entry in self.entries:
            entries[entry.kind][entry.name] = entry  # names are unique per kind (validated)
        for kind in sorted(entries):
            named = entries[kind]
            for name in sorted(named):
                entry = named[name]
                assert entry.document is not None  # any invalid document raised PolicyError above
                by_kind[kind][name] = entry.document
                memo = entry.memo
                source = memo.get("source")
                if source is None:
                    source = memo["source"] = _source_ref(entry)
                sources[(kind, name)] = source
                if kind == "AuthPolicy":
                    self.field_sources(entry, field_sources)
        attributes: dict[str, Any] = {_KIND_ATTRIBUTES[kind]: docs for kind, docs in by_kind.items()}
        return PolicySet(
            version=self.version(),
            files=self.files,
            sources=sources,
            field_sources=field_sources,
            **attributes,
        )

    @staticmethod
    def field_sources(entry: Entry, out: dict[tuple[str, str, str], SourceRef]) -> None:
        """Where fields checked after loading were written (see ``PolicySet.field_sources``)."""
        if not isinstance(entry.document, AuthPolicy):
            return
        for index, source in enumerate(entry.document.identity):
            if source.custom is not None:
                loc = ("identity", index, "custom", "plugin")
                where = SourceRef(entry.source.path, entry.source.line_of(loc))
                out[(entry.kind, entry.name, _field(loc))] = where
