"""The policy runtime: load -> compile -> prepare -> commit, all or nothing.

Loading, compiling and encoding run off the event loop, so live xDS streams never stall behind a
large reload; only the final swap runs on the loop. Any failure, from a typo in a policy file to
a compiler bug, leaves the last good version serving and is kept for /status and /readyz.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from waypost.log import get_logger
from waypost.metrics import POLICY_INFO, POLICY_LOADS
from waypost.policies.diagnostics import PolicyError
from waypost.policies.loader import load_policies
from waypost.policies.model import PolicySet
from waypost.policies.types import Endpoint
from waypost.server.gitinfo import GitInfo, git_info
from waypost.xds.cache import SnapshotCache
from waypost.xds.compiler import CompiledPolicy, compile_policy

__all__ = ["LoadFailure", "PolicyRuntime"]

log = get_logger("waypost.policy")


@dataclass(frozen=True)
class LoadFailure:
    at: float
    errors: tuple[str, ...]
    git: GitInfo | None = None
    """The commit that was refused, when the directory is in git."""


class PolicyRuntime:
    """Owns the reload cycle for one policy directory. Event loop only, one reload at a time."""

    def __init__(self, directory: Path, cache: SnapshotCache, *, collector: Endpoint | None = None) -> None:
        self.directory = directory
        self.cache = cache
        self.collector = collector
        """Where Envoys reach the analytics collector (compiled into each version), if served."""
        self.last_failure: LoadFailure | None = None
        self.applied_at: float | None = None
        self.git: GitInfo | None = None
        """The commit of the applied version (None outside git)."""
        self.git_pull: dict[str, Any] | None = None
        """The last ``--git-pull`` result, written by :class:`~waypost.server.gitpull.GitPuller`."""
        self._lock = asyncio.Lock()
        self._listeners: list[Callable[[CompiledPolicy], None]] = []

    def add_listener(self, listener: Callable[[CompiledPolicy], None]) -> None:
        """Call ``listener`` with every version applied from now on (and the current one, if any).

        Listeners run on the event loop right after the commit, so decision services swap to a
        version at the moment Envoy starts receiving it.
        """
        self._listeners.append(listener)
        if self.current is not None:
            listener(self.current)

    @property
    def current(self) -> CompiledPolicy | None:
        return self.cache.compiled

    async def reload(self) -> bool:
        """Load the directory and apply it if valid and new; True when a new version went live."""
        async with self._lock:
            started = time.perf_counter()
            # Read before the files: a pull landing in between leaves the previous commit shown
            # with the new files at worst, and the reload the watcher then runs (same content,
            # new commit) corrects it.
            git = await asyncio.to_thread(git_info, self.directory)
            try:
                policy = await asyncio.to_thread(load_policies, self.directory)
                current = self.cache.compiled
                if current is not None and current.version == policy.version:
                    POLICY_LOADS.labels("unchanged").inc()
                    self.last_failure = None
                    if git != self.git:  # same files, new commit (e.g. one touching other paths)
                        self._set_git(git, policy)
                    return False
                if self.collector is None:
                    compiled = await asyncio.to_thread(compile_policy, policy)
                else:
                    compiled = await asyncio.to_thread(compile_policy, policy, collector=self.collector)
                prepared = await asyncio.to_thread(self.cache.prepare, compiled)
            except PolicyError as exc:
                return self._fail([str(d) for d in exc.diagnostics], git)
            except Exception as exc:  # a compiler bug must not take the serving config down with it
                log.exception("policy compilation failed")
                return self._fail([f"{self.directory}: internal error while compiling: {exc}"], git)
            self.cache.commit(prepared)
            for listener in self._listeners:
                try:
                    listener(compiled)
                except Exception:  # one consumer's bug must not hide the version from the others
                    log.exception("policy listener failed", version=compiled.version)
            self.last_failure = None
            self.applied_at = time.time()
            POLICY_LOADS.labels("applied").inc()
            self._set_git(git, policy)
            log.info(
                "policy applied",
                version=compiled.version,
                git=git.describe if git else None,
                gateways=len(policy.gateways),
                services=len(policy.services),
                routes=len(policy.routes),
                ms=round((time.perf_counter() - started) * 1000, 1),
            )
            return True

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
        serving = self.cache.compiled.version if self.cache.compiled else None
        for error in errors:
            log.error(
                "policy rejected",
                error=error,
                serving_version=serving,
                serving_git=self.git.describe if self.git else None,
                rejected_git=git.describe if git else None,
            )
        return False
