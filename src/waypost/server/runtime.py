"""The policy runtime: load -> prepare every applier -> commit every applier, all or nothing.

One runtime owns the current validated PolicySet of a process and hands each new version to
typed appliers (:class:`PolicyApplier`): the xDS snapshot cache, the ext_authz core, the
rate-limit table, whichever this process runs. Every applier prepares the version first (work off
the event loop; any of them may refuse it with file:line diagnostics); only when all have
prepared are they committed, one after another on the event loop without an await in between, so
a version is live everywhere or nowhere. Any failure, from a typo in a policy file to a compiler
bug, leaves the last good version serving and is kept for /status and /readyz.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from waypost.log import get_logger
from waypost.metrics import POLICY_INFO, POLICY_LOADS
from waypost.policies.diagnostics import PolicyError
from waypost.policies.load_cache import LoadCache
from waypost.policies.loader import load_policies
from waypost.policies.model import PolicySet
from waypost.server.gitinfo import GitInfo, export_commit, git_info
from waypost.server.heap import settle
from waypost.server.settle import load_commit, load_settled
from waypost.server.team_lanes import HeldTeam, Materialize, TeamLanes, copy_directory

__all__ = ["LoadFailure", "PolicyApplier", "PolicyRuntime"]

log = get_logger("waypost.policy")

T = TypeVar("T")


class PolicyApplier(Protocol[T]):
    """One consumer of policy versions. ``prepare`` may take its time (run heavy work in a
    thread) and may raise :class:`PolicyError` to refuse the version; ``commit`` runs on the event
    loop, must not fail, and makes the prepared state current."""

    name: str

    async def prepare(self, policy: PolicySet) -> T: ...

    def commit(self, prepared: T) -> None: ...


@dataclass(frozen=True)
class LoadFailure:
    at: float
    errors: tuple[str, ...]
    git: GitInfo | None = None
    """The commit that was refused, when the directory is in git."""


class PolicyRuntime:
    """Owns the reload cycle for one policy directory. Event loop only, one reload at a time."""

    def __init__(
        self,
        directory: Path,
        appliers: Sequence[PolicyApplier[Any]],
        *,
        working_tree: bool = False,
        settle: float = 0.25,
        state_dir: Path | None = None,
    ) -> None:
        self.directory = directory
        self.appliers = tuple(appliers)
        self.current: PolicySet | None = None
        self.working_tree = working_tree
        """Read the working files even in a git checkout (default: the commit HEAD names)."""
        self.settle = settle
        """Files read from disk are applied once unchanged for this long (see server/settle.py)."""
        self.last_failure: LoadFailure | None = None
        self.applied_at: float | None = None
        self.git: GitInfo | None = None
        """The commit of the applied version (None outside git)."""
        self.git_pull: dict[str, Any] | None = None
        """The last ``--git-pull`` result, written by :class:`~waypost.server.gitpull.GitPuller`."""
        self.lanes = TeamLanes(state_dir, directory)
        """Per-team last good versions: which teams are held back, and why (kept in ``state_dir``
        when given, so they survive a restart)."""
        self._lock = asyncio.Lock()
        self._on_applied: list[Callable[[PolicySet], None]] = []
        # Incremental reload: unchanged documents are not parsed or validated again (the result
        # is that of a full load; see policies/load_cache.py).
        self._load_cache = LoadCache()
        self._applied = 0

    def on_applied(self, callback: Callable[[PolicySet], None]) -> None:
        """Call ``callback`` after each version goes live (health status, reports)."""
        self._on_applied.append(callback)

    @property
    def version(self) -> str | None:
        return self.current.version if self.current is not None else None

    async def reload(self) -> bool:
        """Load the directory and apply it if valid and new; True when a new version went live."""
        async with self._lock:
            started = time.perf_counter()
            # Read before the files: a pull landing in between leaves the previous commit shown
            # with the new files at worst, and the reload the watcher then runs (same content,
            # new commit) corrects it.
            git = await asyncio.to_thread(git_info, self.directory, working_tree=self.working_tree)
            if git is not None and git.dirty and not git.working_tree and not (self.git and self.git.dirty):
                log.warning(
                    "uncommitted changes in the policy directory are not served "
                    "(commit them, or serve --working-tree)",
                    commit=git.short,
                )
            serving_commit = git is not None and not self.working_tree
            # Team lanes rebuild a tree from what is served: the commit's tree in a git checkout
            # (dirty or not: the working files are not read), the files on disk otherwise.
            materialize = (
                functools.partial(export_commit, self.directory, git)
                if git is not None and serving_commit
                else copy_directory(self.directory)
            )
            source = self.directory
            try:
                try:
                    if git is not None and serving_commit:
                        policy = await load_commit(self.directory, git, self._load_cache)
                    else:
                        policy = await load_settled(self.directory, self.settle, self._load_cache)
                    held: dict[str, HeldTeam] = {}
                except PolicyError as exc:
                    # Problems only in teams' folders: those teams keep their last good documents.
                    # (Loaded without the cache: its entries name the policy directory's paths.)
                    fallback = await self._fallback(exc, materialize)
                    if fallback is None:
                        raise
                    policy, source, held = fallback
                    self._hold(held, git)
                if self.current is not None and self.current.version == policy.version:
                    POLICY_LOADS.labels("unchanged").inc()
                    self.last_failure = None
                    self.lanes.held = held
                    if git != self.git:  # same files, new commit (e.g. one touching other paths)
                        self._set_git(git, policy)
                    self.lanes.discard(source)
                    return False
                prepared = [await applier.prepare(policy) for applier in self.appliers]
            except PolicyError as exc:
                self.lanes.discard(source)
                return self._fail([str(d) for d in exc.diagnostics], git)
            except Exception as exc:  # a compiler bug must not take the serving config down with it
                log.exception("policy preparation failed")
                self.lanes.discard(source)
                return self._fail([f"{self.directory}: internal error while preparing: {exc}"], git)
            # No await from here on: every applier switches within one turn of the loop.
            for applier, state in zip(self.appliers, prepared, strict=True):
                applier.commit(state)
            self.current = policy
            self._applied += 1
            settle(self._applied)  # the new version's heap out of the collector's way (heap.py)
            self.last_failure = None
            self.lanes.held = held
            self.applied_at = time.time()
            POLICY_LOADS.labels("applied").inc()
            self._set_git(git, policy)
            for callback in self._on_applied:
                try:
                    callback(policy)
                except Exception:  # a report's bug must not hide the version from the others
                    log.exception("policy callback failed", version=policy.version)
            log.info(
                "policy applied",
                version=policy.version,
                git=git.describe if git else None,
                appliers=[applier.name for applier in self.appliers],
                gateways=len(policy.gateways),
                services=len(policy.services),
                routes=len(policy.routes),
                ms=round((time.perf_counter() - started) * 1000, 1),
            )
            # After the switch: the team folders that now serve are each team's last good.
            try:
                if policy.teams and source == self.directory and serving_commit:
                    source = await asyncio.to_thread(self.lanes.tree, materialize)  # the commit's files
                await asyncio.to_thread(self.lanes.remember, source, policy)
            except OSError as exc:  # the version serves; only the teams' fallback is older
                log.error("team last good not kept", version=policy.version, error=str(exc))
            self.lanes.discard(source)
            return True

    async def _fallback(
        self, error: PolicyError, materialize: Materialize
    ) -> tuple[PolicySet, Path, dict[str, HeldTeam]] | None:
        try:
            return await asyncio.to_thread(
                self.lanes.fallback, self.directory, error, load_policies, materialize
            )
        except OSError as exc:  # git or the disk failed: refuse the change whole, saying why
            log.error("team fallback failed; the change is refused whole", error=str(exc))
            return None

    def _hold(self, held: dict[str, HeldTeam], git: GitInfo | None) -> None:
        for team, state in held.items():
            for error in state.errors:
                log.error(
                    "team change refused",
                    team=team,
                    error=error,
                    serving="last good" if state.serving_last_good else "nothing",
                    rejected_git=git.describe if git else None,
                )

    def _set_git(self, git: GitInfo | None, policy: PolicySet) -> None:
        self.git = git
        POLICY_INFO.info({"version": policy.version, "git": git.describe if git else ""})

    def git_status(self) -> dict[str, Any] | None:
        """``policy.git`` of /status: the applied commit, and the last pull when pulling."""
        if self.git is None and self.git_pull is None:
            return None
        status: dict[str, Any] = self.git.as_dict() if self.git is not None else {}
        if self.git_pull is not None:
            status["last_pull"] = self.git_pull
        return status

    def _fail(self, errors: list[str], git: GitInfo | None = None) -> bool:
        self.last_failure = LoadFailure(at=time.time(), errors=tuple(errors), git=git)
        POLICY_LOADS.labels("invalid").inc()
        for error in errors:
            log.error(
                "policy rejected",
                error=error,
                serving_version=self.version,
                serving_git=self.git.describe if self.git else None,
                rejected_git=git.describe if git else None,
            )
        return False
