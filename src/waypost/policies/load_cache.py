"""Memoized loading: a reload re-parses and re-validates only the YAML documents that changed.

:class:`LoadCache` sits between the loader's file reading and its per-document work (parse, check
against the kind's model). It is keyed by content, never by time stamps: a file whose bytes are
unchanged reuses its whole result; in a changed file, each document is cut out at its ``---``
line and reused when its own bytes and its position (the line it starts on, which every message
and source line carries) are unchanged. Only new or edited documents are parsed (each on its
own, its line numbers shifted to the file's) and validated again; a file with many changed
documents is parsed in one go and its results cut per document. Cross-document checks,
referenced files and the version hash are always recomputed by the loader, so a load with the
cache is exactly a load without it, byte for byte.

Cutting a file at its ``---`` lines is exact for YAML only when nothing spans documents or
counts lines differently from ``\\n``; files with directives (``%``), document-end markers
(``...``), lone ``\\r`` or Unicode line breaks, a byte-order mark past the start, or NUL bytes
(UTF-16) are parsed whole. A document whose parse fails sends its file down the whole-file path,
so syntax errors read exactly as without the cache.

Entries live as long as they are used: each load drops what it did not touch. One cache serves
one directory, from one thread at a time (the runtime's reloads are serialized).
"""

from __future__ import annotations

import bisect
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from waypost.policies.diagnostics import Diagnostic
from waypost.policies.validate import Entry

if TYPE_CHECKING:
    from waypost.policies.endpoint_patch import LastLoad

__all__ = ["FileResult", "LoadCache"]

_START: Final = re.compile(rb"^---(?=[ \t\r\n]|$)", re.MULTILINE)
_UNSAFE_ANYWHERE: Final = (b"\x00", b"\xc2\x85", b"\xe2\x80\xa8", b"\xe2\x80\xa9")
_UNSAFE_LINE_START: Final = re.compile(rb"^(?:%|\.\.\.(?:[ \t\r\n]|$))", re.MULTILINE)
_BOM: Final = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class FileResult:
    """What the per-document work made of some bytes: entries and diagnostics, in order."""

    entries: tuple[Entry, ...]
    entry_lines: tuple[int, ...]
    """The line each entry's document starts on."""
    diagnostics: tuple[Diagnostic, ...]
    complete: bool
    """False when the YAML could not be read to the end (a syntax error)."""

    def cut(self, bounds: list[int]) -> list[FileResult]:
        """This result as one per piece of the file (``bounds``: the line each piece starts on)."""
        parts: list[tuple[list[Entry], list[int], list[Diagnostic]]] = [([], [], []) for _ in bounds]
        for entry, line in zip(self.entries, self.entry_lines, strict=True):
            part = parts[bisect.bisect_right(bounds, line) - 1]
            part[0].append(entry)
            part[1].append(line)
        for diagnostic in self.diagnostics:
            parts[bisect.bisect_right(bounds, diagnostic.line) - 1][2].append(diagnostic)
        return [FileResult(tuple(e), tuple(n), tuple(d), True) for e, n, d in parts]


Parse = Callable[[str, bytes, int], FileResult]
"""(display path, bytes, lines before them in the file) -> result: the loader's per-file work."""

_ChunkKey = tuple[str, int, bytes]
"""(display path, line the document starts on, sha256 of its bytes)."""

_WHOLE_FILE_AT = 8
"""More changed documents than this in one file: parse the file in one go (one parser, not many)."""


class LoadCache:
    def __init__(self) -> None:
        self._files: dict[tuple[str, bytes], tuple[FileResult, list[_ChunkKey]]] = {}
        self._chunks: dict[_ChunkKey, FileResult] = {}
        self._used_files: set[tuple[str, bytes]] = set()
        self._used_chunks: set[_ChunkKey] = set()
        self.parsed_documents = 0
        """Documents parsed by the last load (the rest were reused): for tests and benchmarks."""
        self.last: LastLoad | None = None
        """The last successful load, for an endpoint-only change (see :mod:`.endpoint_patch`)."""
        self.blobs: dict[str, bytes] = {}
        """Git blobs the last load from a commit read, by object id (see ``GitTreeSource``)."""
        self.patched = False
        """The last load was such a change, made to the set before: for tests and benchmarks."""

    def begin(self) -> None:
        self._used_files.clear()
        self._used_chunks.clear()
        self.parsed_documents = 0

    def end(self) -> None:
        """Forget whatever the load that just ended did not use."""
        # Rebuilt only when something went unused (every key used is a key held).
        if len(self._used_files) < len(self._files):
            self._files = {k: v for k, v in self._files.items() if k in self._used_files}
        if len(self._used_chunks) < len(self._chunks):
            self._chunks = {k: v for k, v in self._chunks.items() if k in self._used_chunks}

    def load(self, path: str, data: bytes, parse: Parse) -> FileResult:
        key = (path, hashlib.sha256(data).digest())
        self._used_files.add(key)
        found = self._files.get(key)
        if found is None:
            found = self._files[key] = self._load_changed(path, data, parse)
        # The file's documents stay cached too: the next edit of this file reuses them.
        self._used_chunks.update(found[1])
        return found[0]

    def _load_changed(self, path: str, data: bytes, parse: Parse) -> tuple[FileResult, list[_ChunkKey]]:
        pieces = _split(data)
        if pieces is None:
            return self._parse(path, data, 0, parse), []
        keys = [(path, line, hashlib.sha256(piece).digest()) for line, piece in pieces]
        missing = [i for i, key in enumerate(keys) if key not in self._chunks]
        if len(missing) > _WHOLE_FILE_AT:
            whole = self._parse(path, data, 0, parse)
            if not whole.complete:
                return whole, []
            self._chunks.update(zip(keys, whole.cut([line for line, _ in pieces]), strict=True))
            return whole, keys
        for index in missing:
            line, piece = pieces[index]
            result = self._parse(path, piece, line - 1, parse)
            if not result.complete:
                return self._parse(path, data, 0, parse), []  # the error reads as without the cache
            self._chunks[keys[index]] = result
        results = [self._chunks[key] for key in keys]
        combined = FileResult(
            tuple(e for r in results for e in r.entries),
            tuple(n for r in results for n in r.entry_lines),
            tuple(d for r in results for d in r.diagnostics),
            True,
        )
        return combined, keys

    def _parse(self, path: str, data: bytes, offset: int, parse: Parse) -> FileResult:
        result = parse(path, data, offset)
        self.parsed_documents += len(result.entries)
        return result


def _split(data: bytes) -> list[tuple[int, bytes]] | None:
    """``data`` cut before each ``---`` line, with the 1-based line each piece starts on; None
    when cutting could change what the YAML means (module docstring)."""
    # Plain substring scans first (memchr speed); the regex runs only when a suspect byte is there.
    if any(marker in data for marker in _UNSAFE_ANYWHERE) or data.find(_BOM, 1) != -1:
        return None
    if b"\r" in data and data.count(b"\r") != data.count(b"\r\n"):
        return None  # a lone CR is a line break to YAML
    if (b"%" in data or b"..." in data) and _UNSAFE_LINE_START.search(data):
        return None
    starts = [match.start() for match in _START.finditer(data)]
    if not starts or starts[0] != 0:
        starts.insert(0, 0)
    pieces = []
    line = 1
    for index, start in enumerate(starts):
        end = starts[index + 1] if index + 1 < len(starts) else len(data)
        piece = data[start:end]
        pieces.append((line, piece))
        line += piece.count(b"\n")
    return pieces
