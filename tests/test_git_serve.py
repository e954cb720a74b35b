"""Git awareness: the applied commit everywhere, and `serve --git-pull` following upstream."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import EXAMPLE_POLICIES, WaypostProcess, wait_until
from support.gitrepo import GitRepo
from waypost.cli import main
from waypost.server.gitinfo import git_info, git_pull

NEW_ROUTE = """\
kind: Service
name: billing
endpoints: ["127.0.0.1:9103"]
---
kind: Route
name: billing
gateway: public
match: {prefix: /api/billing}
backend: billing
"""


@pytest.fixture
def upstream(tmp_path: Path) -> tuple[GitRepo, GitRepo]:
    """(a bare 'origin', a clone people push policy changes from), seeded with the examples."""
    origin = GitRepo.init(tmp_path / "origin.git", bare=True)
    author = GitRepo.clone(origin.path, tmp_path / "author")
    author.copy_tree(EXAMPLE_POLICIES, "policies")
    author.write("README.md", "policies for the edge fleet\n")
    author.commit_all("example policies")
    author.git("push", "--quiet", "origin", "HEAD:main")
    return origin, author


def test_git_info_and_dirty_only_inside_the_policy_directory(
    upstream: tuple[GitRepo, GitRepo], capsys: pytest.CaptureFixture[str]
) -> None:
    _, repo = upstream
    policies = repo.path / "policies"
    info = git_info(policies)
    assert info is not None
    assert info.commit == repo.head() and not info.dirty and info.branch == "main"
    assert info.describe == repo.head()[:12]

    repo.write("README.md", "edited outside the policy directory\n")
    assert git_info(policies).describe == repo.head()[:12]  # type: ignore[union-attr]
    repo.write("policies/extra.yaml", NEW_ROUTE)  # untracked counts: it is applied
    assert git_info(policies).describe == repo.head()[:12] + "-dirty"  # type: ignore[union-attr]

    assert main(["validate", str(policies)]) == 0
    assert f"(git {repo.head()[:12]}-dirty)" in capsys.readouterr().out
    assert git_info(repo.path.parent) is None  # not a checkout


def test_pull_refuses_to_merge_a_diverged_checkout(upstream: tuple[GitRepo, GitRepo], tmp_path: Path) -> None:
    origin, author = upstream
    server = GitRepo.clone(origin.path, tmp_path / "server")
    server.write("local.txt", "a local commit nobody pushed\n")
    server.commit_all("local")
    author.write("policies/extra.yaml", NEW_ROUTE)
    author.commit_all("billing")
    author.git("push", "--quiet", "origin", "HEAD:main")
    result = git_pull(server.path / "policies", timeout=30)
    assert not result.ok
    assert not (server.path / "policies" / "extra.yaml").exists()


@pytest.mark.e2e
def test_git_pull_applies_new_commits_and_refuses_invalid_ones(
    upstream: tuple[GitRepo, GitRepo], tmp_path: Path, start_waypost
) -> None:
    origin, author = upstream
    checkout = GitRepo.clone(origin.path, tmp_path / "server")
    waypost: WaypostProcess = start_waypost(checkout.path / "policies", args=["--git-pull", "0.3s"])

    status = waypost.status()["policy"]
    first = author.head()
    assert status["git"]["commit"] == first and status["git"]["describe"] == first[:12]
    first_version = status["version"]
    assert waypost.metric("waypost_policy_info", git=first[:12], version=first_version) == 1.0

    # A new commit upstream is pulled and applied within the interval (plus a reload).
    author.write("policies/billing.yaml", NEW_ROUTE)
    second = author.commit_all("billing route")
    author.git("push", "--quiet", "origin", "HEAD:main")
    applied = wait_until(
        lambda: (p := waypost.status()["policy"])["git"]["commit"] == second and p,
        timeout=20,
        message="the pulled commit to be applied",
    )
    assert applied["version"] != first_version
    assert applied["git"]["last_pull"]["ok"] and applied["git"]["last_pull"]["after"] == second
    assert applied["last_error"] is None
    assert "policy applied" in waypost.log_text() and second[:12] in waypost.log_text()

    # A commit with invalid policy is pulled (the checkout follows upstream) but refused:
    # the previous version keeps serving and /status names the refused commit and its errors.
    author.write("policies/billing.yaml", NEW_ROUTE.replace("backend: billing", "backend: biling"))
    third = author.commit_all("typo")
    author.git("push", "--quiet", "origin", "HEAD:main")
    refused = wait_until(
        lambda: (p := waypost.status()["policy"])["last_error"] and p,
        timeout=20,
        message="the invalid commit to be refused",
    )
    assert refused["version"] == applied["version"]
    assert refused["git"]["commit"] == second
    assert refused["last_error"]["git"]["commit"] == third
    assert any("billing.yaml" in e and "biling" in e for e in refused["last_error"]["errors"])
    assert waypost.readyz() == 200
