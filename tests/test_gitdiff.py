"""`waypost diff REV_A REV_B DIR` on a temporary git repository: node groups and resource diffs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from support import REPO_ROOT
from support.gitrepo import GitRepo
from waypost.cli import main
from waypost.gitdiff import NodeProfile, node_profiles
from waypost.policies.loader import load_policies

SELECTORS = REPO_ROOT / "tests" / "golden" / "selectors" / "in"


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    repo = GitRepo.init(tmp_path / "repo")
    repo.copy_tree(SELECTORS, "policies")
    repo.write("README.md", "policy repository\n")
    repo.commit_all("initial policies")
    return repo


def _diff(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["diff", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_node_groups_follow_the_selectors() -> None:
    policy = load_policies(SELECTORS)
    profiles = node_profiles([policy])
    from waypost.xds.compiler import compile_policy

    compiled = compile_policy(policy)
    groups = {compiled.select_gateways(p.cluster, dict(p.labels)) for p in profiles}
    assert groups == {
        (),  # a node no selector names gets nothing here
        ("edge",),
        ("edge", "zoned-edge"),
        ("zone-b",),
        ("edge", "zone-b"),  # cluster edge + label zone=b: two selectors together
        ("mesh",),
        ("mesh", "zone-b"),
    }
    assert NodeProfile("edge", (("zone", "a"),)).merge(NodeProfile("", (("zone", "b"),))) is None


def test_diff_shows_only_the_groups_a_change_reaches(
    repo: GitRepo, capsys: pytest.CaptureFixture[str]
) -> None:
    before = repo.head()
    routes = repo.path / "policies" / "policy.yaml"
    routes.write_text(
        routes.read_text().replace(
            "name: zoned\ngateway: zoned-edge\nmatch: {prefix: /}\n",
            "name: zoned\ngateway: zoned-edge\nmatch: {prefix: /}\ntimeout: 3s\n",
        )
    )
    after = repo.commit_all("zoned route: 3s timeout")

    code, out, err = _diff(capsys, before, after, str(repo.path / "policies"), "--exit-code")
    assert code == 1, err
    assert out.startswith(f"1 of 6 node groups change between {before} and {after}\n")
    assert "  changed    cluster=edge, labels zone=a: gateways edge, zoned-edge\n" in out
    assert "  unchanged  cluster=edge: gateways edge\n" in out
    assert "             ~routes/zoned-edge\n" in out
    assert "=== node group cluster=edge, labels zone=a: gateways edge, zoned-edge" in out
    assert f"--- {before}:routes/zoned-edge\n+++ {after}:routes/zoned-edge\n" in out
    assert "+      timeout: 3s\n" in out
    assert out.count("\n+ ") == 1 and out.count("\n- ") == 0, out

    # Without --exit-code a change is not a failure; --stat lists groups only.
    code, out, _ = _diff(capsys, before, after, str(repo.path / "policies"), "--stat")
    assert code == 0
    assert "===" not in out


def test_diff_without_policy_change_exits_0(repo: GitRepo, capsys: pytest.CaptureFixture[str]) -> None:
    before = repo.head()
    repo.write("README.md", "policy repository, documented\n")
    after = repo.commit_all("docs only")
    code, out, _ = _diff(capsys, before, after, str(repo.path / "policies"), "--exit-code")
    assert code == 0
    assert out.startswith("0 of 6 node groups change")


def test_diff_new_gateway_and_directory_at_the_top(repo: GitRepo, capsys: pytest.CaptureFixture[str]) -> None:
    before = repo.head()
    repo.write(
        "policies/admin.yaml",
        "kind: Gateway\nname: admin\nport: 9000\nnodes: {cluster: ops}\n---\n"
        "kind: Route\nname: admin\ngateway: admin\nmatch: {prefix: /}\nbackend: internal\n",
    )
    after = repo.commit_all("ops gateway")
    # Run from inside the policy directory, as a CI job would; DIR defaults to '.'.
    result = subprocess.run(
        [sys.executable, "-m", "waypost", "diff", "HEAD~1", "HEAD", "--exit-code"],
        cwd=repo.path / "policies",
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO_ROOT / "src"), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 1, result.stderr
    assert "  changed    cluster=ops: gateways (none) -> admin\n" in result.stdout
    assert "+clusters/internal +endpoints/internal +listeners/admin +routes/admin" in result.stdout
    assert "--- /dev/null\n+++ HEAD:listeners/admin\n" in result.stdout
    assert "+++ HEAD:routes/admin\n" in result.stdout
    assert before != after


def test_diff_refuses_an_invalid_revision(repo: GitRepo, capsys: pytest.CaptureFixture[str]) -> None:
    before = repo.head()
    repo.write(
        "policies/broken.yaml",
        "kind: Route\nname: broken\ngateway: edge\nmatch: {prefix: /}\nbackend: nope\n",
    )
    after = repo.commit_all("broken")
    code, out, err = _diff(capsys, before, after, str(repo.path / "policies"), "--exit-code")
    assert code == 2
    assert out == ""
    assert f"the policy at {after} is invalid:" in err
    assert f"{after}:policies/broken.yaml:5: Route broken:" in err

    code, _, err = _diff(capsys, "no-such-rev", after, str(repo.path / "policies"))
    assert code == 2
    assert "unknown revision 'no-such-rev'" in err


def test_diff_outside_git(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "p").mkdir()
    code, _, err = _diff(capsys, "HEAD~1", "HEAD", str(tmp_path / "p"))
    assert code == 2
    assert "waypost diff:" in err


def test_a_shared_resource_diff_is_printed_once(repo: GitRepo, capsys: pytest.CaptureFixture[str]) -> None:
    before = repo.head()
    policy = repo.path / "policies" / "policy.yaml"
    policy.write_text(policy.read_text().replace('"10.0.0.3:80"', '"10.0.0.3:80", "10.0.0.4:80"'))
    after = repo.commit_all("internal: second endpoint")
    code, out, _ = _diff(capsys, before, after, str(repo.path / "policies"), "--exit-code")
    assert code == 1
    # `internal` serves zone-b and mesh: every group with either changes, the diff shows once.
    assert out.startswith("4 of 6 node groups change")
    assert out.count(f"+++ {after}:endpoints/internal\n") == 1
    assert "(endpoints/internal: the same change as in node group any cluster, labels zone=b)" in out
