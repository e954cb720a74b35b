"""The demo's policy repository: a git upstream the portal pushes to and waypost pulls from.

The portal's every change is a commit pushed to an upstream, and the fleet picks it up with
``--git-pull``; so the demo serves a clone of a bare repository seeded with a copy of the example
policies (fresh each run), never the policy directory of your checkout, which stays untouched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

__all__ = ["prepare_repo"]

_ENV = {
    "GIT_AUTHOR_NAME": "waypost demo",
    "GIT_AUTHOR_EMAIL": "demo@waypost.invalid",
    "GIT_COMMITTER_NAME": "waypost demo",
    "GIT_COMMITTER_EMAIL": "demo@waypost.invalid",
    "GIT_TERMINAL_PROMPT": "0",
}


def _git(*args: str, cwd: Path) -> None:
    result = subprocess.run(
        ["git", *args], cwd=cwd, env={**os.environ, **_ENV}, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {result.stderr.strip()}")


def prepare_repo(policies: Path, workdir: Path) -> Path:
    """Seed ``workdir/upstream.git`` with ``policies`` and return the served clone's policy dir
    (``workdir/repo/policies``). Raises RuntimeError when git is missing or fails."""
    if shutil.which("git") is None:
        raise RuntimeError("the demo's portal needs git on PATH")
    upstream, repo = workdir / "upstream.git", workdir / "repo"
    for old in (upstream, repo, workdir / "portal-clone"):
        shutil.rmtree(old, ignore_errors=True)
    upstream.mkdir(parents=True)
    _git("init", "--quiet", "--bare", "--initial-branch=main", cwd=upstream)
    _git("clone", "--quiet", str(upstream), str(repo), cwd=workdir)
    shutil.copytree(policies, repo / "policies", ignore=shutil.ignore_patterns(".*"))
    # The modelines point at ../schema: keep them working in the copy.
    schema = policies.parent / "schema"
    if schema.is_dir():
        shutil.copytree(schema, repo / "schema")
    _git("add", "-A", cwd=repo)
    _git("commit", "--quiet", "-m", "The example policies", cwd=repo)
    _git("push", "--quiet", "origin", "HEAD:main", cwd=repo)
    _git("branch", "--quiet", "--set-upstream-to=origin/main", cwd=repo)
    return repo / "policies"
