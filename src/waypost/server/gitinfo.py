"""Git awareness of a policy directory: which commit is applied, and pulling its upstream.

When the policy directory sits in a git checkout, people name policy versions by commit, not by
content hash: ``/status``, the "policy applied" log line, the ``waypost_policy`` metric and
``waypost validate`` all show ``<commit>``. ``waypost serve`` serves what is committed (the tree
of HEAD, see :class:`~waypost.policies.source.GitTreeSource`), so uncommitted changes are not
applied and the version stays ``<commit>`` (``dirty`` says they exist); with ``--working-tree``,
and in ``waypost validate``, the working files are what is read and the version is
``<commit>-dirty`` when they differ from the commit. The content hash stays the xDS version: two
replicas on the same files agree on it whatever their checkouts look like.

Every git call is a subprocess with a timeout and no prompt, so a hung remote or a credential
prompt can never stall the control plane; any failure means "not in git" (``None``) or a failed
:class:`PullResult`, never an exception.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["GitInfo", "PullResult", "export_commit", "git_dirs", "git_info", "git_pull"]

GIT_TIMEOUT = 10.0
"""Seconds for a local git query; a pull gets its own, longer timeout."""

# No pager, no prompt for credentials (a pull on a timer has nobody to answer it), no locale
# surprises in the messages shown on /status.
_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_PAGER": "cat", "LC_ALL": "C", "GIT_OPTIONAL_LOCKS": "0"}


@dataclass(frozen=True)
class GitInfo:
    """The commit a policy directory is at."""

    commit: str
    """The full commit id of HEAD."""
    dirty: bool
    """Uncommitted (or untracked) changes inside the policy directory."""
    branch: str | None
    """The checked-out branch; None on a detached HEAD."""
    toplevel: str
    working_tree: bool = True
    """The working files are what is read (``--working-tree``, ``validate``); False: the commit."""

    @property
    def short(self) -> str:
        return self.commit[:12]

    @property
    def describe(self) -> str:
        """``<short commit>``, or ``<short commit>-dirty`` when uncommitted changes are read."""
        return f"{self.short}-dirty" if self.dirty and self.working_tree else self.short

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "short": self.short, "describe": self.describe}


def _git(directory: Path | str, *args: str, timeout: float = GIT_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", *args],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **_ENV},
        stdin=subprocess.DEVNULL,
        check=False,
    )


def git_info(directory: Path | str, *, working_tree: bool = True) -> GitInfo | None:
    """The commit ``directory`` is at, or None when it is not in a git checkout (or git is
    missing, or the checkout is unreadable, e.g. owned by another user)."""
    try:
        head = _git(directory, "rev-parse", "--show-toplevel", "HEAD")
        if head.returncode != 0:
            return None
        lines = head.stdout.split()
        if len(lines) != 2:
            return None
        toplevel, commit = lines
        # `-- .` limits the check to the policy directory: an edited README elsewhere in the
        # repository does not make the applied policy "dirty".
        status = _git(directory, "status", "--porcelain", "--untracked-files=normal", "--", ".")
        if status.returncode != 0:
            return None
        branch = _git(directory, "symbolic-ref", "--quiet", "--short", "HEAD")
    except (OSError, subprocess.TimeoutExpired):
        return None
    return GitInfo(
        commit=commit,
        dirty=bool(status.stdout.strip()),
        branch=branch.stdout.strip() or None if branch.returncode == 0 else None,
        toplevel=toplevel,
        working_tree=working_tree,
    )


def export_commit(directory: Path | str, git: GitInfo, dest: Path) -> None:
    """Write the policy directory as committed in ``git.commit`` into ``dest`` (``git archive``),
    whatever the working files hold: the tree the per-team fallback rebuilds from in a dirty
    checkout. Raises OSError when git fails (the caller refuses the change as if no fallback)."""
    real = os.path.realpath(os.fspath(directory))
    prefix = os.path.relpath(real, os.path.realpath(git.toplevel)).replace(os.sep, "/")
    treeish = git.commit if prefix == "." else f"{git.commit}:{prefix}"
    try:
        result = subprocess.run(
            ["git", "archive", "--format=tar", treeish],
            cwd=git.toplevel,
            capture_output=True,
            timeout=GIT_TIMEOUT * 3,
            env={**os.environ, **_ENV},
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise OSError(f"git archive {git.short} timed out") from exc
    if result.returncode != 0:
        raise OSError(f"git archive {git.short}: {result.stderr.decode(errors='replace').strip()[:300]}")
    with tarfile.open(fileobj=io.BytesIO(result.stdout)) as archive:
        # The "data" filter refuses absolute paths, links out of ``dest`` and device files.
        archive.extractall(dest, filter="data")


def git_dirs(directory: Path | str) -> list[Path]:
    """The git directories whose ``HEAD`` and refs say which commit ``directory`` is at (a linked
    worktree has its own ``HEAD`` and shares the refs of the main one); [] outside git."""
    try:
        result = _git(directory, "rev-parse", "--absolute-git-dir", "--git-common-dir")
    except (OSError, subprocess.TimeoutExpired):
        return []
    if result.returncode != 0:
        return []
    found: list[Path] = []
    for line in result.stdout.splitlines():
        path = (Path(directory) / line.strip()).resolve()
        if path not in found:
            found.append(path)
    return found


@dataclass(frozen=True)
class PullResult:
    """One ``git pull --ff-only``: what happened, for /status and the log."""

    at: float
    ok: bool
    before: str | None
    after: str | None
    message: str

    @property
    def changed(self) -> bool:
        return self.ok and self.before != self.after

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "changed": self.changed}


def _head(directory: Path | str) -> str | None:
    result = _git(directory, "rev-parse", "HEAD")
    return result.stdout.strip() or None if result.returncode == 0 else None


def git_pull(directory: Path | str, *, timeout: float = 60.0) -> PullResult:
    """Fast-forward the checkout to its upstream. Never merges or rebases: a diverged checkout
    (someone committed on the server) fails here and is reported, and the files stay as they are."""
    started = time.time()
    try:
        before = _head(directory)
        result = _git(directory, "pull", "--ff-only", "--quiet", "--no-rebase", timeout=timeout)
        after = _head(directory)
    except subprocess.TimeoutExpired:
        return PullResult(started, False, None, None, f"git pull timed out after {timeout:g}s")
    except OSError as exc:
        return PullResult(started, False, None, None, f"cannot run git: {exc}")
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip() or f"git pull exited {result.returncode}"
        return PullResult(started, False, before, after, message)
    if before == after:
        return PullResult(started, True, before, after, "already up to date")
    message = f"fast-forwarded {(before or '')[:12]}..{(after or '')[:12]}"
    return PullResult(started, True, before, after, message)
