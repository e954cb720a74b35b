"""Run the portal: inside ``waypost serve --portal-port`` or alone (``waypost portal``).

The portal needs a git upstream to push to (the fleet pulls from it): ``--portal-repo`` names
it; by default it is the upstream of the policy checkout ``waypost serve`` serves, with the
policy directory at the same place inside it. The portal works in a clone of its own
(``--portal-workdir``, else a temporary directory), never in the served checkout.

Uvicorn runs in the caller's event loop on a socket bound here (so port 0 works and the port is
known), without its own signal handling: the caller decides when to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from waypost.filters.ratelimit.limiter import Limiter
from waypost.log import get_logger
from waypost.portal.app import create_app
from waypost.portal.options import SECRET_ENV, PortalOptions
from waypost.portal.repo import CommitFailed, PolicyRepo
from waypost.portal.service import PortalService

__all__ = ["RunningPortal", "repo_for", "start_portal"]

log = get_logger("waypost.portal")


def _git(directory: Path, *args: str) -> str | None:
    result = subprocess.run(
        ["git", *args], cwd=directory, capture_output=True, text=True, timeout=10, check=False
    )
    return result.stdout.strip() if result.returncode == 0 else None


def repo_for(options: PortalOptions) -> PolicyRepo:
    """The portal's repository, from the options or the served checkout; ValueError if neither."""
    repo, branch, subdir = options.repo, options.branch, options.subdir
    if options.policies is not None and (repo is None or branch is None or subdir is None):
        top = _git(options.policies, "rev-parse", "--show-toplevel")
        upstream = _git(options.policies, "rev-parse", "--abbrev-ref", "--symbolic-full-name", "@{u}")
        if top is None or upstream is None or "/" not in upstream:
            if repo is None:
                raise ValueError(
                    f"{options.policies} is not a git checkout with an upstream branch: "
                    "give --portal-repo (the git upstream the portal pushes to and the fleet pulls from)"
                )
        else:
            remote, _, upstream_branch = upstream.partition("/")
            url = _git(options.policies, "remote", "get-url", remote)
            if repo is None and url is not None:
                local = Path(top) / url
                repo = str(local.resolve()) if "://" not in url and local.exists() else url
            branch = branch or upstream_branch
            subdir = subdir or os.path.relpath(options.policies.resolve(), Path(top).resolve())
    if repo is None:
        raise ValueError("no git upstream for the portal: give --portal-repo")
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="waypost-portal-"))
    return PolicyRepo(repo, workdir, branch=branch or "main", subdir=subdir or ".")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # signals belong to the process that embeds the portal


@dataclass
class RunningPortal:
    server: uvicorn.Server
    task: asyncio.Task[None]
    port: int
    service: PortalService

    async def stop(self) -> None:
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def start_portal(
    options: PortalOptions, *, limiter: Limiter | None = None, owns_limiter: bool = False
) -> RunningPortal:
    """Clone the repository, then serve; raises ValueError / CommitFailed when it cannot.
    ``limiter`` is where usage is read (``owns_limiter``: the portal feeds it its policy)."""
    repo = repo_for(options)
    await asyncio.to_thread(repo.open)
    service = PortalService(repo, limiter, owns_limiter=owns_limiter)
    await service.policy(fresh=True)
    secret = options.secret or os.environ.get(SECRET_ENV)
    if secret is None:
        log.warning(f"no ${SECRET_ENV}: sessions are signed with a random secret (one replica only)")
    app = create_app(service, secret=secret, https_only=options.https_only)
    sock = socket.socket(socket.AF_INET6 if ":" in options.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((options.host, options.port))
    sock.listen(128)
    sock.setblocking(False)
    # X-Forwarded-Proto/For are trusted from a proxy on loopback only (uvicorn's default allow-list).
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", proxy_headers=True)
    server = _Server(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
            raise CommitFailed("the portal's web server stopped at start")
        await asyncio.sleep(0.02)
    port = sock.getsockname()[1]
    log.info("portal serving", portal_port=port, repo=repo.upstream, branch=repo.branch, subdir=repo.subdir)
    return RunningPortal(server, task, port, service)
