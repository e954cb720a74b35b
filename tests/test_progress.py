"""Progress on a terminal: shown for slow steps on a TTY, never on a pipe, never on stdout."""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys
import time
from pathlib import Path

from support import EXAMPLE_POLICIES, REPO_ROOT
from waypost.progress import SHOW_AFTER, count_policy_files, progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_shows_step_files_and_time() -> None:
    out = _Terminal()
    with progress("loading policies/", count_files=EXAMPLE_POLICIES, stream=out):
        time.sleep(SHOW_AFTER + 0.3)
    text = out.getvalue()
    files = count_policy_files(EXAMPLE_POLICIES)
    assert files >= 3
    assert f"loading policies/ ({files} files)" in text
    assert text.endswith("s\n") and f"✓ loading policies/ ({files} files) " in text


def test_no_progress_on_a_pipe_or_for_quick_steps() -> None:
    pipe = io.StringIO()
    with progress("loading", stream=pipe):
        time.sleep(SHOW_AFTER + 0.1)
    assert pipe.getvalue() == ""
    terminal = _Terminal()
    with progress("quick", stream=terminal):
        pass
    assert terminal.getvalue() == ""


def test_count_policy_files_skips_hidden(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.yaml").write_text("")
    (tmp_path / "a.yaml").write_text("")
    (tmp_path / "b.yml").write_text("")
    (tmp_path / "notes.txt").write_text("")
    assert count_policy_files(tmp_path) == 2


def test_validate_on_a_terminal_keeps_stdout_clean(tmp_path: Path) -> None:
    """stderr a terminal, stdout a pipe: the result line alone on stdout."""
    leader, follower = pty.openpty()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "waypost", "validate", str(EXAMPLE_POLICIES)],
            stdout=subprocess.PIPE,
            stderr=follower,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")},
            timeout=60,
            check=False,
        )
    finally:
        os.close(follower)
        os.close(leader)
    assert result.returncode == 0
    lines = result.stdout.decode().splitlines()
    assert len(lines) == 1 and ": valid (" in lines[0]
