"""Per-team last good: one team's refused change holds only that team back.

A reload is all or nothing for the platform. With Team documents, :class:`TeamLanes` narrows that:
when every problem of a refused directory lies in some teams' folders, the directory is loaded
again with just those folders as they last served (kept by :meth:`TeamLanes.remember` after every
applied version), so the platform and the other teams move on while the broken teams keep their
last good documents. A team with no good version yet (broken since start) serves nothing. If the
combined tree is refused too (the platform withdrew a grant the old version needs), the whole
change is refused as before: nothing unvalidated is ever served.

The combined tree is a copy on disk (platform files and healthy teams from what is served, held
teams from the kept copy) loaded by the ordinary loader; its version is the hash of exactly what
serves. "What is served" is given by the caller as a :data:`Materialize` function: the commit's
tree in a git checkout (:func:`~waypost.server.gitinfo.export_commit`, so uncommitted edits
elsewhere in the checkout change nothing), the files on disk otherwise. Copies are made only when
the policy has Teams; repositories without them never pay.

With a state directory (``serve --state-dir``) the kept copy lives there, named by
``teams/last-good.json`` (written atomically after the copy is complete, with the policy
directory it belongs to), so a restart while a team is broken still serves the team's last good
documents; without one it lives in a temporary directory and a restart forgets it (``/status``
``policy.teams_last_good`` says which). A kept copy is never trusted: the combined tree is
validated like any change before it serves.

Thread-safety: :meth:`remember` and :meth:`fallback` do blocking file I/O (run them in a thread)
and are called by the runtime one reload at a time; :attr:`held` is read by /status.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from waypost.log import get_logger
from waypost.policies.diagnostics import PolicyError
from waypost.policies.model import PolicySet
from waypost.policies.teams import in_folder, normal_folder

__all__ = ["HeldTeam", "Materialize", "TeamLanes", "copy_directory"]

log = get_logger("waypost.policy")


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


Materialize = Callable[[Path], None]
"""Writes the files being served (the whole policy directory) into an empty directory."""

_MANIFEST = "last-good.json"


def _ignore_hidden(_directory: str, names: list[str]) -> list[str]:
    return [name for name in names if name.startswith(".")]  # .git, editor files, ConfigMap `..data`


def copy_directory(directory: Path) -> Materialize:
    """The files on disk as what is served (a plain directory, or ``--working-tree``)."""

    def materialize(dest: Path) -> None:
        shutil.copytree(directory, dest, ignore=_ignore_hidden, symlinks=False, dirs_exist_ok=True)

    return materialize


class TeamLanes:
    """Keeps each team's last good folders and builds the combined tree when teams break."""

    def __init__(self, state_dir: Path | None = None, directory: Path | None = None) -> None:
        self._scratch: tempfile.TemporaryDirectory[str] | None = None  # made on first use
        self._kept: Path | None = None  # last good team folders, laid out as in the directory
        self.held: dict[str, HeldTeam] = {}
        self._state = state_dir / "teams" if state_dir is not None else None
        self._directory = str(directory.resolve()) if directory is not None else ""
        self.kept_version: str | None = None
        """The policy version the kept folders come from."""
        if self._state is not None:
            self._restore()

    @property
    def _work(self) -> Path:
        if self._scratch is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="waypost-teams-")
        return Path(self._scratch.name)

    def close(self) -> None:
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None
        if self._state is None:
            self._kept = None

    def _restore(self) -> None:
        assert self._state is not None
        try:
            manifest = json.loads((self._state / _MANIFEST).read_text())
            kept = self._state / str(manifest["kept"])
            directory, version = str(manifest["directory"]), str(manifest["version"])
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("team last good state unreadable; ignored", state=str(self._state), error=str(exc))
            return
        if directory != self._directory or kept.parent != self._state or not kept.is_dir():
            log.warning(
                "team last good state is another policy directory's; ignored",
                state=str(self._state),
                directory=directory,
            )
            return
        self._kept, self.kept_version = kept, version
        log.info("team last good restored", state=str(self._state), version=version)

    def remember(self, source: Path, policy: PolicySet) -> None:
        """Keep the team folders of ``source``, the tree ``policy`` was loaded from."""
        if not policy.teams:
            self._replace(None, None)
            return
        base = self._state if self._state is not None else self._work
        base.mkdir(parents=True, exist_ok=True)
        kept = Path(tempfile.mkdtemp(dir=base, prefix="kept-"))
        for team in policy.teams.values():
            for folder in filter(None, map(normal_folder, team.folders)):
                if (source / folder).is_dir():
                    shutil.copytree(source / folder, kept / folder, ignore=_ignore_hidden, symlinks=False)
        self._replace(kept, policy.version)

    def _replace(self, kept: Path | None, version: str | None) -> None:
        if self._state is not None:
            manifest = self._state / _MANIFEST
            if kept is None:
                manifest.unlink(missing_ok=True)
            else:  # the new copy is complete before the manifest names it: a crash keeps the old
                record = {
                    "directory": self._directory,
                    "kept": kept.name,
                    "version": version,
                    "at": time.time(),
                }
                partial = manifest.with_suffix(".tmp")
                partial.write_text(json.dumps(record))
                os.replace(partial, manifest)
        previous, self._kept, self.kept_version = self._kept, kept, version
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)

    def persistence(self) -> dict[str, Any]:
        """``policy.teams_last_good`` of /status: where the kept folders are, and from when."""
        return {"state_dir": str(self._state) if self._state else None, "version": self.kept_version}

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

    def tree(self, materialize: Materialize) -> Path:
        """A scratch copy of what is served (discard it with :meth:`discard`)."""
        tree = Path(tempfile.mkdtemp(dir=self._work, prefix="combined-"))
        try:
            materialize(tree)
        except BaseException:
            shutil.rmtree(tree, ignore_errors=True)
            raise
        return tree

    def fallback(
        self, directory: Path, error: PolicyError, load: Callable[[Path], PolicySet], materialize: Materialize
    ) -> tuple[PolicySet, Path, dict[str, HeldTeam]] | None:
        """The version to serve with the blamed teams held back, the tree it was loaded from, and
        who is held; None when the problems are not only teams' or the combined tree fails too.
        ``directory`` is the policy directory as diagnostics name it; ``materialize`` writes
        what is served (its refused version) into the combined tree."""
        blamed = self.blame(directory, error)
        if blamed is None:
            return None
        tree = self.tree(materialize)
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
