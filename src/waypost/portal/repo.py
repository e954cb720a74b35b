"""The portal's private clone of the policy repository: every change a commit, pushed upstream.

One :class:`PolicyRepo` per portal replica, each with its own work tree (``workdir``), all
pushing to the same upstream. A change is a function of the tree (:data:`Edit`), never a patch:
:meth:`PolicyRepo.commit` fetches, resets to the branch's upstream tip, applies the edit,
validates the whole policy directory, commits as the user and pushes. When another replica
pushed first the push is refused (not a fast-forward); the edit is then re-applied on top of the
new tip, up to :data:`ATTEMPTS` times. So two replicas committing at once both land, in some
order, and neither loses its change; a push that keeps failing raises :class:`PushFailed` (the
caller shows the request as failed) and leaves nothing half-done upstream.

Contracts: methods are blocking (git runs as a subprocess) and serialised by one lock per
instance; callers in an event loop use ``asyncio.to_thread``. Nothing secret passes through git:
edits write key hashes only.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from waypost.log import get_logger
from waypost.policies.diagnostics import PolicyError
from waypost.policies.loader import load_policies
from waypost.policies.model import PolicySet

__all__ = [
    "ATTEMPTS",
    "REVIEW_PREFIX",
    "Author",
    "CommitFailed",
    "Edit",
    "InvalidChange",
    "PolicyRepo",
    "PushFailed",
    "Request",
    "ReviewRequest",
]

log = get_logger("waypost.portal.git")

ATTEMPTS: Final = 5
REVIEW_PREFIX: Final = "portal/review/"
"""Review branches: one per request waiting for an admin (``portal/review/<id>``)."""
TRAILER: Final = "Waypost-Request: "
_GIT_TIMEOUT: Final = 30.0


@dataclass(frozen=True, slots=True)
class Author:
    name: str
    email: str

    def __str__(self) -> str:
        return f"{self.name} <{self.email}>"


Request = dict[str, Any]
"""What a user asked for, as plain JSON data: kept in the commit message so an admin's approval
re-applies the request itself on the served branch, whatever changed there in between."""

Edit = Callable[[Path], None]
"""Changes files under the policy directory it is given; raises ValueError when it cannot."""


class CommitFailed(Exception):
    """The change could not be made (git failed); nothing was pushed."""


class PushFailed(CommitFailed):
    """Every push attempt was refused or failed; the change is not upstream."""


class InvalidChange(CommitFailed):
    """The change would make the policy directory invalid; ``errors`` are ``file:line`` lines."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class ReviewRequest:
    branch: str
    commit: str
    author: str
    date: str
    subject: str
    request: Request


class PolicyRepo:
    """A work tree of ``upstream`` at ``workdir``, serving ``branch``; policies under ``subdir``."""

    def __init__(self, upstream: str, workdir: Path, *, branch: str = "main", subdir: str = ".") -> None:
        self.upstream = upstream
        self.workdir = workdir
        self.branch = branch
        self.subdir = subdir
        self._lock = threading.Lock()
        self._env = {
            **os.environ,
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_COMMITTER_NAME": "waypost portal",
            "GIT_COMMITTER_EMAIL": "portal@waypost.invalid",
        }

    @property
    def policy_dir(self) -> Path:
        return self.workdir / self.subdir

    # --- plumbing -------------------------------------------------------------------------------

    def _git(
        self, *args: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["git", *args],
            cwd=self.workdir,
            env=self._env,
            input=input,
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT,
            check=False,
        )
        if check and result.returncode != 0:
            raise CommitFailed(f"git {args[0]} failed: {result.stderr.strip()[:500]}")
        return result

    def open(self) -> None:
        """Clone (or re-use) the work tree; raises CommitFailed when the upstream is unreachable."""
        with self._lock:
            if not (self.workdir / ".git").exists():
                self.workdir.mkdir(parents=True, exist_ok=True)
                result = subprocess.run(
                    ["git", "clone", "--quiet", "--branch", self.branch, self.upstream, str(self.workdir)],
                    env=self._env,
                    capture_output=True,
                    text=True,
                    timeout=_GIT_TIMEOUT * 4,
                    check=False,
                )
                if result.returncode != 0:
                    raise CommitFailed(f"cannot clone {self.upstream}: {result.stderr.strip()[:500]}")
            self._sync()

    def _sync(self) -> str:
        self._git("fetch", "--quiet", "--prune", "origin")
        self._git("checkout", "--quiet", "--force", "-B", self.branch, f"origin/{self.branch}")
        self._git("clean", "-fdq")
        return self._git("rev-parse", "HEAD").stdout.strip()

    def load(self) -> tuple[PolicySet, str]:
        """The served branch's policies as upstream has them now, and its commit."""
        with self._lock:
            commit = self._sync()
            return load_policies(self.policy_dir), commit

    # --- changes --------------------------------------------------------------------------------

    def commit(
        self,
        edit: Edit,
        *,
        author: Author,
        message: str,
        request: Request | None = None,
        branch: str | None = None,
        delete_branch: str | None = None,
    ) -> str:
        """Apply ``edit`` on the tip of ``self.branch`` and push it there, or to a new review
        ``branch`` (``portal/review/...``). ``delete_branch`` is removed upstream in the same push
        (an approval or rejection closes its review branch atomically). Returns the commit id."""
        body = message if request is None else f"{message}\n\n{TRAILER}{json.dumps(request, sort_keys=True)}"
        with self._lock:
            last = ""
            for attempt in range(1, ATTEMPTS + 1):
                self._sync()
                edit(self.policy_dir)
                self._validate()
                self._git("add", "--all", "--", self.subdir)
                self._git("commit", "--quiet", "--allow-empty", f"--author={author}", "-F", "-", input=body)
                commit = self._git("rev-parse", "HEAD").stdout.strip()
                refspecs = [f"HEAD:refs/heads/{branch or self.branch}"]
                if delete_branch is not None:
                    refspecs.append(f":refs/heads/{delete_branch}")
                pushed = self._git(
                    "push", "--quiet", "--atomic", "--porcelain", "origin", *refspecs, check=False
                )
                if pushed.returncode == 0:
                    log.info(
                        "portal commit pushed",
                        commit=commit[:12],
                        branch=branch or self.branch,
                        author=author.name,
                    )
                    return commit
                last = pushed.stderr.strip()[:500] or pushed.stdout.strip()[:500]
                log.warning("portal push refused; re-applying on the new tip", attempt=attempt, error=last)
            raise PushFailed(f"push failed after {ATTEMPTS} attempts: {last}")

    def _validate(self) -> None:
        try:
            load_policies(self.policy_dir)
        except PolicyError as exc:
            self._git("checkout", "--quiet", "--force", self.branch)
            self._git("clean", "-fdq")
            raise InvalidChange([str(d) for d in exc.diagnostics]) from None

    # --- review branches ------------------------------------------------------------------------

    def reviews(self) -> list[ReviewRequest]:
        """Open review branches (not yet merged into the served branch), oldest first."""
        with self._lock:
            self._git("fetch", "--quiet", "--prune", "origin")
            refs = self._git(
                "for-each-ref",
                "--sort=committerdate",
                "--format=%(refname:strip=3)",
                f"refs/remotes/origin/{REVIEW_PREFIX}",
            ).stdout.split()
            found = []
            for branch in refs:
                merged = self._git(
                    "merge-base", "--is-ancestor", f"origin/{branch}", f"origin/{self.branch}", check=False
                )
                if merged.returncode == 0:
                    continue  # merged by hand: it landed, nothing to review
                shown = self._git(
                    "log", "-1", "--format=%H%x00%an <%ae>%x00%aI%x00%s%x00%B", f"origin/{branch}"
                ).stdout
                commit, author, date, subject, body = shown.split("\x00", 4)
                request = _trailer(body)
                if request is not None:
                    found.append(ReviewRequest(branch, commit, author, date, subject, request))
            return found

    def log(self, limit: int = 50) -> list[dict[str, str]]:
        """Who did what: the served branch's latest commits touching the policy directory."""
        with self._lock:
            out = self._git(
                "log",
                f"-{limit}",
                "--format=%h%x00%an%x00%aI%x00%s",
                f"origin/{self.branch}",
                "--",
                self.subdir,
            ).stdout
        entries = []
        for line in out.splitlines():
            commit, author, date, subject = line.split("\x00", 3)
            entries.append({"commit": commit, "author": author, "date": date, "subject": subject})
        return entries


def _trailer(body: str) -> Request | None:
    for line in body.splitlines():
        if line.startswith(TRAILER):
            try:
                value = json.loads(line[len(TRAILER) :])
            except ValueError:
                return None
            return value if isinstance(value, dict) else None
    return None
