"""Temporary git repositories for tests of the git-aware features (diff, --git-pull).

Identity and config come from the environment of each call, so neither the developer's
~/.gitconfig nor a missing one changes what the tests see.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

__all__ = ["GitRepo"]

_ENV = {
    "GIT_AUTHOR_NAME": "waypost tests",
    "GIT_AUTHOR_EMAIL": "tests@waypost.invalid",
    "GIT_COMMITTER_NAME": "waypost tests",
    "GIT_COMMITTER_EMAIL": "tests@waypost.invalid",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
}


class GitRepo:
    """A work tree at ``path``: ``GitRepo.init(path)`` or ``GitRepo.clone(url, path)``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def init(cls, path: Path, *, bare: bool = False) -> GitRepo:
        path.mkdir(parents=True, exist_ok=True)
        repo = cls(path)
        repo.git("init", "--quiet", "--initial-branch=main", *(["--bare"] if bare else []))
        return repo

    @classmethod
    def clone(cls, source: Path, path: Path) -> GitRepo:
        subprocess.run(
            ["git", "clone", "--quiet", str(source), str(path)],
            check=True,
            env={**os.environ, **_ENV},
            capture_output=True,
        )
        return cls(path)

    def git(self, *args: str) -> str:
        result = subprocess.run(
            ["git", *args], cwd=self.path, env={**os.environ, **_ENV}, capture_output=True, text=True
        )
        if result.returncode != 0:
            raise AssertionError(f"git {' '.join(args)} failed: {result.stderr}")
        return result.stdout.strip()

    def write(self, relative: str, text: str) -> Path:
        path = self.path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def copy_tree(self, source: Path, relative: str) -> None:
        shutil.copytree(source, self.path / relative, dirs_exist_ok=True)

    def commit_all(self, message: str) -> str:
        """Stage everything, commit, and return the new commit id."""
        self.git("add", "-A")
        self.git("commit", "--quiet", "-m", message)
        return self.head()

    def head(self) -> str:
        return self.git("rev-parse", "HEAD")
