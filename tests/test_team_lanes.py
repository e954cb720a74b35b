"""Per-team last good in a git checkout: kept across restarts (``--state-dir``), and rebuilt from
the commit's tree however dirty the checkout is (the policy runtime, without appliers)."""

from __future__ import annotations

from pathlib import Path

from support.gitrepo import GitRepo
from test_teams import PLATFORM, team_docs
from waypost.server.runtime import PolicyRuntime

BROKEN = team_docs("payments", "9", "api.example.com", "/payments")  # outside its upstreams


def checkout(tmp_path: Path) -> GitRepo:
    git = GitRepo.init(tmp_path / "repo")
    git.write("policies/platform.yaml", PLATFORM)
    git.write(
        "policies/teams/payments/policy.yaml", team_docs("payments", "1", "api.example.com", "/payments")
    )
    git.write("policies/teams/search/policy.yaml", team_docs("search", "2", "api.example.com", "/search"))
    git.commit_all("teams")
    return git


def search_moves(git: GitRepo) -> None:
    moved = team_docs("search", "2", "api.example.com", "/search").replace("10.2.0.5", "10.2.0.6")
    git.write("policies/teams/search/policy.yaml", moved)


async def test_a_dirty_checkout_holds_the_broken_team_from_the_commits_tree(tmp_path: Path) -> None:
    git = checkout(tmp_path)
    runtime = PolicyRuntime(git.path / "policies", [])
    assert await runtime.reload()
    git.write("policies/teams/payments/policy.yaml", BROKEN)
    search_moves(git)
    git.commit_all("payments breaks, search moves")
    # Uncommitted edits: a new platform file and search moving again. Neither is served.
    git.write("policies/teams/search/policy.yaml", "garbage: [")
    git.write("policies/extra.yaml", "kind: Service\nname: wip\nendpoints: ['10.0.0.1:1']\n")
    assert await runtime.reload()
    assert runtime.git is not None and runtime.git.dirty
    current = runtime.current
    assert current is not None
    assert current.services["payments~orders"].endpoints[0].host == "10.1.0.5"  # its last good
    assert current.services["search~orders"].endpoints[0].host == "10.2.0.6"  # the commit's
    assert "wip" not in current.services
    assert runtime.lanes.status(current.teams)["payments"]["state"] == "held"
    runtime.lanes.close()


async def test_a_restart_while_a_team_is_broken_serves_its_last_good(tmp_path: Path) -> None:
    git = checkout(tmp_path)
    state = tmp_path / "state"
    first = PolicyRuntime(git.path / "policies", [], state_dir=state)
    assert await first.reload()
    git.write("policies/teams/payments/policy.yaml", BROKEN)
    git.commit_all("payments breaks")
    assert not await first.reload()  # the same documents serve: nothing new to apply
    assert first.lanes.held["payments"].serving_last_good
    first.lanes.close()

    second = PolicyRuntime(git.path / "policies", [], state_dir=state)  # the restart
    assert await second.reload()
    current = second.current
    assert current is not None
    assert current.services["payments~orders"].endpoints[0].host == "10.1.0.5"
    assert second.lanes.status(current.teams)["payments"]["state"] == "held"
    assert second.lanes.persistence()["state_dir"] == str(state / "teams")
    second.lanes.close()

    # Without the state (in memory only, or another directory's state), the team serves nothing.
    other = PolicyRuntime(git.path / "policies", [], state_dir=tmp_path / "empty")
    assert await other.reload()
    assert other.current is not None and "payments~orders" not in other.current.services
    assert other.lanes.status(other.current.teams)["payments"]["state"] == "not serving"
    other.lanes.close()
    elsewhere = tmp_path / "elsewhere"
    GitRepo.init(elsewhere)
    (elsewhere / "platform.yaml").write_text(PLATFORM)
    foreign = PolicyRuntime(elsewhere, [], state_dir=state)
    assert foreign.lanes.persistence()["version"] is None
    foreign.lanes.close()
