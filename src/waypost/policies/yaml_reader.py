"""YAML bytes -> plain Python values, with the line of every key and item.

Policy files are read with YAML 1.2 core-schema scalars: only ``true``/``false`` are booleans, so
keys such as ``on`` (in ``retries``) and values such as ``NO`` stay strings; ``017`` is 17; there
are no timestamps. Anchors, aliases and ``<<`` merge keys work.

:func:`parse_documents` returns every complete document of a file as a :class:`YamlDocument`:
its value (plain dicts, lists and scalars, which pydantic validates directly), side tables of
lines keyed by container id, and the problems found while reading (duplicate keys, bad tags,
undefined aliases), each with its line and field path. It never raises for bad input: a syntax
error ends reading and comes back as a :class:`YamlProblem`. Documents too deep or too large
(the ``MAX_*`` caps) are marked ``fatal`` and must not be handed to the model. No I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Final

import yaml
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

from waypost.policies.validate import Loc

__all__ = [
    "MAX_DEPTH",
    "MAX_DOCUMENTS",
    "MAX_ENTRIES",
    "MAX_NODES",
    "YamlDocument",
    "YamlProblem",
    "parse_documents",
    "shift_lines",
    "show_value",
]

MAX_DEPTH: Final = 64
"""Deepest nesting accepted in a document; real policies nest a handful of levels."""
MAX_NODES: Final = 1_000_000
"""Most values one document may hold once aliases are expanded (a bound against alias bombs)."""
MAX_DOCUMENTS: Final = 10_000
"""Most documents (`---`) read from one file; reading stops there with an error."""
MAX_ENTRIES: Final = 10_000
"""Most keys of one mapping, or items of one list, in a document (which is then not validated)."""

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
class YamlDocument:
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
class YamlProblem:
    line: int
    message: str


class _TooManyDocuments(Exception):
    def __init__(self, line: int) -> None:
        self.line = line


def parse_documents(data: bytes) -> tuple[list[YamlDocument], YamlProblem | None]:
    """Every complete document of ``data``, and the syntax error that stopped reading, if any."""
    parser = yaml.CSafeLoader(data)
    documents: list[YamlDocument] = []
    try:
        _read_events(parser, documents)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.context_mark and mark is not exc.context_mark:
            problem += f" ({exc.context} at line {exc.context_mark.line + 1})"
        return documents, YamlProblem(mark.line + 1 if mark else 1, f"invalid YAML: {problem}")
    except yaml.reader.ReaderError as exc:
        line = data.count(b"\n", 0, max(exc.position, 0)) + 1
        return documents, YamlProblem(line, f"not valid UTF-8 or UTF-16 text: {exc.reason}")
    except yaml.YAMLError as exc:
        return documents, YamlProblem(1, f"invalid YAML: {exc}")
    except _TooManyDocuments as exc:
        return documents, YamlProblem(exc.line, f"more than {MAX_DOCUMENTS} documents in one file")
    finally:
        parser.dispose()
    return documents, None


def shift_lines(document: YamlDocument, offset: int) -> None:
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


def _issue(document: YamlDocument, stack: list[_Frame], frames: int, line: int, message: str) -> None:
    """Record a problem found while reading, under the field path of the outer ``frames``."""
    loc: list[str | int] = []
    for frame in stack[:frames]:
        if not frame.is_map:
            loc.append(len(frame.value))
        elif type(frame.key) is str:
            loc.append(frame.key)
    document.issues.append((line, tuple(loc), message))


def _read_events(parser: yaml.CSafeLoader, documents: list[YamlDocument]) -> None:
    # The hot loop of loading (a few hundred thousand events for a large directory): locals are
    # cached and the frequent cases come first.
    get_event = parser.get_event
    plain_special, number_start, not_special = _PLAIN_SPECIAL, _NUMBER_START, _NOT_SPECIAL
    stack: list[_Frame] = []
    top: _Frame | None = None  # stack[-1]
    anchors: dict[str, Any] = {}
    document = YamlDocument(line=1)
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
            document = YamlDocument(line=event.start_mark.line + 1)
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
                _issue(document, stack, len(stack) - 1, line, f"key {show_value(value)} is not a string")
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


def show_value(value: Any) -> str:
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
