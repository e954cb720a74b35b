"""Watch the policy directory (watchdog) and ask for a debounced reload on any change.

A ``git pull`` or an editor's save touches several files in quick succession; the debounce
turns that burst into one reload of the final state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from waypost.log import get_logger

__all__ = ["PolicyWatcher"]

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
    ) -> None:
        self._directory = directory.resolve()
        self._reload = reload
        self._loop = loop
        self._debounce = debounce
        self._timer: asyncio.TimerHandle | None = None
        self._running: asyncio.Task[None] | None = None
        self._again = False
        self._observer = Observer()

    def start(self) -> None:
        self._observer.schedule(self, str(self._directory), recursive=True)
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
        try:
            relative = Path(path).resolve().relative_to(self._directory)
        except ValueError:
            return True
        # Hidden entries (.git, editor swap files) are not policy; the loader skips them too.
        return any(part.startswith(".") for part in relative.parts)

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
