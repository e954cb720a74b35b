"""Read a policy set that is not being written: the commit of a checkout, or settled files.

In a git checkout (the default of ``waypost serve``) the policy is read from the tree of the
commit HEAD names, with git plumbing: a commit is immutable, so a checkout, a pull or an editor
saving in place is never seen half-done, and uncommitted edits are not served.

A plain directory (or ``--working-tree``) is read from disk, and applied only once every file
read stayed the same across the settle window: the files are read again a window after the load
read them (stat and sha256 of every file, the listing of every folder), and any difference
starts over; a file that changed while being read counts as a difference. A writer that pauses
longer than the window in the middle of a file can still be caught half-way:
write policy files atomically (write a temporary file, then rename it over the old one), as
``git``, ``kubectl`` ConfigMap mounts and most editors do.

The window stays after the read even when a file watcher saw the directory quiet before it: a
watcher learns of a write some time after it happens, so a quiet spell it reports may already
hold a writer's next line (a rewrite 40 ms a line was read half-done that way, in
tests/test_policy_sources.py).

The window is otherwise idle: :func:`load_settled` can start the work that follows a load
(``prepare``: the appliers compile and encode the version) inside it. That work only prepares;
its result is handed back once the files are known settled, and dropped when they were not, so
nothing read mid-write is ever committed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final, TypeVar

from waypost.log import get_logger
from waypost.policies.diagnostics import Diagnostic, PolicyError
from waypost.policies.load_cache import LoadCache
from waypost.policies.loader import load_policies
from waypost.policies.model import PolicySet
from waypost.policies.source import DirectorySource, GitTreeSource
from waypost.server.gitinfo import GitInfo

__all__ = ["MAX_SETTLE_SECONDS", "load_commit", "load_settled"]

log = get_logger("waypost.policy")

T = TypeVar("T")

MAX_SETTLE_SECONDS: Final = 30.0
"""Give up (the previous version keeps serving) when files keep changing for this long."""


async def load_commit(directory: Path, git: GitInfo, cache: LoadCache | None = None) -> PolicySet:
    """The policy as committed in ``git.commit`` (``cache``: see :func:`load_policies`)."""
    known = cache.blobs if cache is not None else None  # unchanged files are not read again
    source = GitTreeSource(directory, toplevel=git.toplevel, commit=git.commit, known=known)
    try:
        return await asyncio.to_thread(load_policies, source, cache)
    finally:
        if cache is not None:
            cache.blobs = source.blobs


async def load_settled(
    directory: Path,
    window: float,
    cache: LoadCache | None = None,
    prepare: Callable[[PolicySet], Awaitable[T]] | None = None,
) -> tuple[PolicySet, asyncio.Future[T] | None]:
    """The policy from disk, once unchanged across ``window`` seconds; raises PolicyError.

    With ``prepare``, it runs on the loaded policy during the window; the second value is its
    outcome (await it for the result or its exception), None without ``prepare``."""
    started = time.monotonic()
    while True:
        source = DirectorySource(directory)
        read_at = time.monotonic()
        try:
            policy: PolicySet | None = await asyncio.to_thread(load_policies, source, cache)
            error: PolicyError | None = None
        except PolicyError as exc:
            policy, error = None, exc
        work = asyncio.ensure_future(prepare(policy)) if prepare is not None and policy is not None else None
        # Read twice, a window apart, and compare stat and sha256 of everything read. Always:
        # file timestamps cannot decide it alone (a read racing a truncation can see the file
        # already empty and its mtime not yet updated).
        await asyncio.sleep(max(0.0, read_at + window - time.monotonic()))
        if work is not None:
            await asyncio.wait([work])  # its outcome (result or exception) stays in ``work``
        if await asyncio.to_thread(source.unchanged):
            break
        if work is not None and work.exception() is not None:
            log.debug(
                "dropped the preparation of files that were still changing", error=str(work.exception())
            )
        if time.monotonic() - started > MAX_SETTLE_SECONDS:
            message = (
                f"policy files kept changing for {MAX_SETTLE_SECONDS:g}s; not applied "
                "(write files atomically: a temporary file, then rename)"
            )
            raise PolicyError([Diagnostic(str(directory), 0, "", "", message)])
        log.debug("policy files still changing; reading again", directory=str(directory))
    if error is not None:
        raise error
    assert policy is not None
    return policy, work
