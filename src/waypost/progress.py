"""Progress on a terminal for long CLI commands: a spinner line on stderr with elapsed time.

Only when stderr is a terminal (a pipe or CI log gets nothing), and only once a step has taken
longer than a moment, so quick commands print exactly what they printed before. stdout is never
touched: ``waypost render > out.yaml`` stays clean.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

__all__ = ["count_policy_files", "progress"]

SHOW_AFTER = 0.3
"""Seconds before the spinner appears; quicker steps stay silent."""
_FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


def count_policy_files(directory: Path | str) -> int:
    """How many policy files a load will read (the loader's rule: non-hidden *.yaml/*.yml)."""
    count = 0
    for _, directories, names in os.walk(directory):
        directories[:] = [name for name in directories if not name.startswith(".")]
        count += sum(1 for name in names if not name.startswith(".") and name.endswith((".yaml", ".yml")))
    return count


@contextmanager
def progress(
    what: str, *, count_files: Path | str | None = None, stream: TextIO | None = None
) -> Iterator[None]:
    """Show ``what`` with a spinner while the block runs, then its duration."""
    out = stream if stream is not None else sys.stderr
    if not _is_terminal(out):
        yield
        return
    started = time.monotonic()
    done = threading.Event()
    shown = False
    label = what

    def spin() -> None:
        nonlocal shown, label
        if done.wait(SHOW_AFTER):
            return
        if count_files is not None:
            label = f"{what} ({count_policy_files(count_files):,} files)"
        frame = 0
        while not done.is_set():
            shown = True
            out.write(f"\r\033[K{_FRAMES[frame % len(_FRAMES)]} {label} {time.monotonic() - started:.1f}s")
            out.flush()
            frame += 1
            done.wait(0.2)  # 5 frames a second: smooth enough, and no GIL contention to speak of

    thread = threading.Thread(target=spin, name="waypost-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        if shown:
            out.write(f"\r\033[K✓ {label} {time.monotonic() - started:.1f}s\n")
            out.flush()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
