"""What triggers a policy reload: file events (watchdog), a new commit, and SIGHUP.

A ``git pull`` or an editor's save touches several files in quick succession; the debounce
turns that burst into one reload of the final state. When the policy is read from a commit, the
checkout's ``HEAD`` and refs are watched too (a commit, checkout or pull moves them). SIGHUP asks
for a reload, as with nginx and Kong, instead of ending the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from waypost.log import get_logger
from waypost.server.gitinfo import git_dirs

if TYPE_CHECKING:
    from waypost.server.runtime import PolicyRuntime

__all__ = ["PolicyWatcher", "reload_on_sighup"]

log = get_logger("waypost.watch")


class PolicyWatcher(FileSystemEventHandler):
    """Calls ``reload`` (on the event loop) ``debounce`` seconds after the last change."""

    def __init__(
        self,
        directory: Path,
        reload: Callable[[], Awaitable[object]],
        *,
        loop: asyncio.AbstractEventLoop,
        debounce: float = 0.25,
        git_dirs: Sequence[Path] = (),
    ) -> None:
        self._directory = directory.resolve()
        self._git_dirs = [path.resolve() for path in git_dirs]
        self._reload = reload
        self._loop = loop
        self._debounce = debounce
        self._timer: asyncio.TimerHandle | None = None
        self._running: asyncio.Task[None] | None = None
        self._again = False
        self._observer = Observer()

    @classmethod
    def for_runtime(
        cls, runtime: PolicyRuntime, *, loop: asyncio.AbstractEventLoop, debounce: float = 0.25
    ) -> PolicyWatcher:
        """A watcher reloading ``runtime``: its directory, and its checkout's refs when it reads
        the committed policy."""
        # Only for a checkout (known from the first load): no extra git process otherwise.
        seen = runtime.git or (runtime.last_failure.git if runtime.last_failure else None)
        dirs = git_dirs(runtime.directory) if seen is not None and not runtime.working_tree else []
        return cls(runtime.directory, runtime.reload, loop=loop, debounce=debounce, git_dirs=dirs)

    def start(self) -> None:
        self._observer.schedule(self, str(self._directory), recursive=True)
        for git_dir in self._git_dirs:
            if not git_dir.is_relative_to(self._directory):
                self._observer.schedule(self, str(git_dir), recursive=True)
        self._observer.start()

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=5)
        if self._timer is not None:
            self._timer.cancel()

    def on_any_event(self, event: FileSystemEvent) -> None:  # watchdog's thread
        if event.event_type in ("opened", "closed_no_write"):
            return
        paths = [event.src_path, getattr(event, "dest_path", "")]
        if all(self._ignored(str(p)) for p in paths if p):
            return
        self._loop.call_soon_threadsafe(self._schedule)

    def _ignored(self, path: str) -> bool:
        # Events name paths under the resolved directories watched (start()): string prefixes
        # classify them without a realpath per event, which a commit writing hundreds of
        # objects would pay on the watchdog thread while the reload needs the GIL.
        for git_dir in self._git_dirs:
            prefix = f"{git_dir}{os.sep}"
            if path.startswith(prefix) or path == str(git_dir):
                # Only what says which commit is checked out; objects and the index are noise.
                name = path[len(prefix) :].replace(os.sep, "/").removesuffix(".lock")
                return not (name in ("HEAD", "packed-refs") or name.startswith("refs/"))
        prefix = f"{self._directory}{os.sep}"
        if not path.startswith(prefix):
            resolved = str(Path(path).resolve())  # not under a watched path as given: rare
            if resolved == path or not (resolved.startswith(prefix) or self._in_git(resolved)):
                return True
            return self._ignored(resolved)
        # Hidden entries (.git, editor swap files) are not policy; the loader skips them too.
        return any(part.startswith(".") for part in path[len(prefix) :].split(os.sep))

    def _in_git(self, path: str) -> bool:
        return any(path.startswith(f"{git_dir}{os.sep}") for git_dir in self._git_dirs)

    def _schedule(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(self._debounce, self._fire)

    def _fire(self) -> None:
        self._timer = None
        if self._running is not None and not self._running.done():
            self._again = True
            return
        self._running = self._loop.create_task(self._run())

    async def _run(self) -> None:
        while True:
            self._again = False
            try:
                await self._reload()
            except Exception:
                log.exception("reload failed")
            if not self._again:
                return


def reload_on_sighup(loop: asyncio.AbstractEventLoop, reload: Callable[[], Awaitable[object]]) -> None:
    """Reload on SIGHUP (``kill -HUP``, ``systemctl reload``) instead of dying; a reload already
    running finishes first (the runtime serializes them)."""
    tasks: set[asyncio.Task[object]] = set()

    async def run() -> object:
        try:
            return await reload()
        except Exception:
            log.exception("reload failed")
            return None

    def on_signal() -> None:
        log.info("SIGHUP: reloading the policy")
        task = loop.create_task(run())
        tasks.add(task)  # keep a reference until done: the loop holds tasks weakly
        task.add_done_callback(tasks.discard)

    with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
        loop.add_signal_handler(signal.SIGHUP, on_signal)
