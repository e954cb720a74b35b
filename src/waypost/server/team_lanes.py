"""Per-team last good: one team's refused change holds only that team back.

A reload is all or nothing for the platform. With Team documents, :class:`TeamLanes` narrows that:
when every problem of a refused directory lies in some teams' folders, the directory is loaded
again with just those folders as they last served (kept by :meth:`TeamLanes.remember` after every
applied version), so the platform and the other teams move on while the broken teams keep their
last good documents. A team with no good version yet (broken since start) serves nothing. If the
combined tree is refused too (the platform withdrew a grant the old version needs), the whole
change is refused as before: nothing unvalidated is ever served.

The combined tree is a copy on disk (platform files and healthy teams from the directory, held
teams from the kept copy) loaded by the ordinary loader; its version is the hash of exactly what
serves. Copies are made only when the policy has Teams; repositories without them never pay.

Thread-safety: :meth:`remember` and :meth:`fallback` do blocking file I/O (run them in a thread)
and are called by the runtime one reload at a time; :attr:`held` is read by /status.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from waypost.policies.diagnostics import PolicyError
from waypost.policies.model import PolicySet
from waypost.policies.teams import in_folder, normal_folder

__all__ = ["HeldTeam", "TeamLanes"]


@dataclass(frozen=True)
class HeldTeam:
    """A team whose latest change is refused: its last good documents serve (or none, if never)."""

    since: float
    errors: tuple[str, ...]
    serving_last_good: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": "held" if self.serving_last_good else "not serving",
            "since": self.since,
            "errors": list(self.errors),
        }


def _ignore_hidden(_directory: str, names: list[str]) -> list[str]:
    return [name for name in names if name.startswith(".")]  # .git, editor files, ConfigMap `..data`


class TeamLanes:
    """Keeps each team's last good folders and builds the combined tree when teams break."""

    def __init__(self) -> None:
        self._scratch: tempfile.TemporaryDirectory[str] | None = None  # made on first use
        self._kept: Path | None = None  # last good team folders, laid out as in the directory
        self.held: dict[str, HeldTeam] = {}

    @property
    def _work(self) -> Path:
        if self._scratch is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="waypost-teams-")
        return Path(self._scratch.name)

    def close(self) -> None:
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None
        self._kept = None

    def remember(self, source: Path, policy: PolicySet) -> None:
        """Keep the team folders of ``source``, the tree ``policy`` was loaded from."""
        if not policy.teams:
            if self._kept is not None:
                shutil.rmtree(self._kept, ignore_errors=True)
            self._kept = None
            return
        kept = Path(tempfile.mkdtemp(dir=self._work, prefix="kept-"))
        for team in policy.teams.values():
            for folder in filter(None, map(normal_folder, team.folders)):
                if (source / folder).is_dir():
                    shutil.copytree(source / folder, kept / folder, ignore=_ignore_hidden, symlinks=False)
        previous, self._kept = self._kept, kept
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)

    def blame(self, directory: Path, error: PolicyError) -> dict[str, list[str]] | None:
        """Team -> its problems when every problem is in a team folder; None when any is not."""
        folders = error.team_folders
        found: dict[str, list[str]] = {}
        for diagnostic in error.diagnostics:
            relative = os.path.relpath(diagnostic.path, directory).replace(os.sep, "/")
            owner = next(
                (team for team, fs in folders.items() if any(in_folder(relative, f) for f in fs)),
                None,
            )
            if owner is None or relative.startswith("../"):
                return None
            found.setdefault(owner, []).append(str(diagnostic))
        return found or None

    def fallback(
        self, directory: Path, error: PolicyError, load: Callable[[Path], PolicySet]
    ) -> tuple[PolicySet, Path, dict[str, HeldTeam]] | None:
        """The version to serve with the blamed teams held back, the tree it was loaded from, and
        who is held; None when the problems are not only teams' or the combined tree fails too."""
        blamed = self.blame(directory, error)
        if blamed is None:
            return None
        tree = Path(tempfile.mkdtemp(dir=self._work, prefix="combined-"))
        shutil.copytree(directory, tree, ignore=_ignore_hidden, symlinks=False, dirs_exist_ok=True)
        now = time.time()
        held: dict[str, HeldTeam] = {}
        for team in blamed:
            kept_any = False
            for folder in error.team_folders[team]:
                shutil.rmtree(tree / folder, ignore_errors=True)
                if self._kept is not None and (self._kept / folder).is_dir():
                    shutil.copytree(self._kept / folder, tree / folder)
                    kept_any = True
            since = self.held[team].since if team in self.held else now
            held[team] = HeldTeam(since=since, errors=tuple(blamed[team]), serving_last_good=kept_any)
        try:
            policy = load(tree)
        except PolicyError:
            shutil.rmtree(tree, ignore_errors=True)
            return None
        return policy, tree, held

    def discard(self, tree: Path) -> None:
        """Remove a combined tree once loaded (never the policy directory itself)."""
        if self._scratch is not None and Path(self._scratch.name) in tree.parents:
            shutil.rmtree(tree, ignore_errors=True)

    def status(self, teams: Mapping[str, Any]) -> dict[str, Any]:
        """``policy.teams`` of /status: every team of the serving version, and the held ones."""
        result: dict[str, Any] = {
            name: {"state": "serving", "owners": list(t.owners)} for name, t in teams.items()
        }
        for name, held in self.held.items():
            result.setdefault(name, {"owners": []}).update(held.as_dict())
        return result
