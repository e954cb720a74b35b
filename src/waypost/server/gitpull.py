"""``waypost serve --git-pull INTERVAL``: follow the checkout's upstream branch on a timer.

A fleet of replicas then tracks ``main`` without a CI hook: each pulls (fast-forward only), and a
pull that changed anything is applied through the same reload as any edit, so a commit with an
invalid policy is refused like any invalid change (the last good version keeps serving, and
/status shows the refused commit's errors). The watcher sees the pulled files too; the reload is
idempotent (content hash), so the second trigger finds nothing new.
"""

from __future__ import annotations

import asyncio
import contextlib

from waypost.log import get_logger
from waypost.server.gitinfo import GitInfo, git_info, git_pull
from waypost.server.runtime import PolicyRuntime

__all__ = ["GitPuller"]

log = get_logger("waypost.git")


class GitPuller:
    """Pulls every ``interval`` seconds in a worker thread (``git pull`` has its own timeout)."""

    def __init__(self, runtime: PolicyRuntime, interval: float, *, timeout: float | None = None) -> None:
        self._runtime = runtime
        self._interval = interval
        # A pull slower than the interval would pile up; cap it, but give slow remotes a chance.
        self._timeout = timeout if timeout is not None else max(10.0, min(120.0, interval * 4))
        self._task: asyncio.Task[None] | None = None
        self._seen: GitInfo | None = runtime.git

    def start(self) -> bool:
        """Start pulling; False (with an error logged) when the directory is not in git."""
        if git_info(self._runtime.directory) is None:
            log.error(
                "--git-pull: the policy directory is not in a git checkout; not pulling",
                directory=str(self._runtime.directory),
            )
            self._runtime.git_pull = {"ok": False, "message": "not a git checkout"}
            return False
        self._task = asyncio.get_running_loop().create_task(self._loop())
        return True

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def pull_once(self) -> None:
        result = await asyncio.to_thread(git_pull, self._runtime.directory, timeout=self._timeout)
        self._runtime.git_pull = result.as_dict()
        if not result.ok:
            log.error("git pull failed", error=result.message)
            return
        if result.changed:
            log.info("git pull", message=result.message, commit=result.after)
        # Reload when the checkout moved: a pull, or HEAD / the dirty state changing without one
        # (a local commit or reset leaves the files, but the commit shown as applied must follow).
        # Once per state, so a refused commit is reported once, not at every interval.
        info = await asyncio.to_thread(git_info, self._runtime.directory)
        if info is not None and info != self._seen:
            self._seen = info
            await self._runtime.reload()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.pull_once()
            except Exception:  # the loop must survive anything one pull does
                log.exception("git pull failed")
