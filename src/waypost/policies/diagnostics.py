"""Problems found in a policy directory, and the exception that carries all of them.

A :class:`Diagnostic` is one problem at one place (``path:line``), worded for the person who wrote
the file. The loader collects every diagnostic of a directory and raises a single
:class:`PolicyError`, so a user fixes everything in one round instead of one error per reload.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["MAX_REPORTED_PER_FILE", "MAX_REPORTED_TOTAL", "Diagnostic", "PolicyError", "capped"]

MAX_REPORTED_PER_FILE = 20
"""Problems shown per file; the rest are counted in one closing line ("... N more")."""
MAX_REPORTED_TOTAL = 200
"""Problems shown for a whole directory: a generated file cannot flood a terminal or /status."""


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One problem: where it is, which document it belongs to, and what is wrong.

    ``kind`` and ``name`` are empty when the document is not known (a YAML syntax error, a
    document without a kind); ``line`` is 0 when the problem is about a whole file or directory.
    """

    path: str
    line: int
    kind: str
    name: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line > 0 else self.path
        who = " ".join(part for part in (self.kind, self.name) if part)
        return f"{where}: {who}: {self.message}" if who else f"{where}: {self.message}"


class PolicyError(Exception):
    """A policy directory is invalid; ``diagnostics`` lists every problem, by file and line."""

    diagnostics: tuple[Diagnostic, ...]

    def __init__(self, diagnostics: Iterable[Diagnostic]) -> None:
        # A stable sort: problems on one line keep the order they were found in.
        self.diagnostics = tuple(sorted(diagnostics, key=lambda d: (d.path, d.line)))
        super().__init__("\n".join(str(d) for d in self.diagnostics))

    def __str__(self) -> str:
        return "\n".join(str(d) for d in self.diagnostics)

    def __reduce__(self) -> tuple[type[PolicyError], tuple[tuple[Diagnostic, ...]]]:
        # Rebuilt from the diagnostics, not from the message (pickling, multiprocessing).
        return (type(self), (self.diagnostics,))


def capped(diagnostics: Iterable[Diagnostic]) -> list[Diagnostic]:
    """The first problems of each file (in file and line order), then one line per file saying how
    many more there are, and at most :data:`MAX_REPORTED_TOTAL` lines in all."""
    ordered = sorted(diagnostics, key=lambda d: (d.path, d.line))
    shown: list[Diagnostic] = []
    hidden: dict[str, int] = {}
    per_file: dict[str, int] = {}
    for diagnostic in ordered:
        count = per_file[diagnostic.path] = per_file.get(diagnostic.path, 0) + 1
        if count <= MAX_REPORTED_PER_FILE and len(shown) < MAX_REPORTED_TOTAL:
            shown.append(diagnostic)
        else:
            hidden[diagnostic.path] = hidden.get(diagnostic.path, 0) + 1
    for path, count in hidden.items():
        message = f"only the first {per_file[path] - count} problems of this file are shown ({count} more)"
        shown.append(Diagnostic(path, 0, "", "", message))
    return shown
