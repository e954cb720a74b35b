"""The portal's two ways to run: ``waypost portal`` alone, and ``waypost serve --portal-port``
(which must keep serving the fleet, with a clear log line, when the portal cannot start)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from support import WaypostProcess, free_port, wait_until
from support.gitrepo import GitRepo
from support.portal import seed_upstream
from support.procs import SRC_DIR


def test_waypost_portal_alone(tmp_path: Path) -> None:
    upstream, _ = seed_upstream(tmp_path)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(SRC_DIR), "WAYPOST_PORTAL_SECRET": "shared-by-replicas"}
    argv = [
        sys.executable,
        "-m",
        "waypost",
        "portal",
        "--repo",
        str(upstream.path),
        "--subdir",
        "policies",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workdir",
        str(tmp_path / "clone"),
    ]
    with open(tmp_path / "portal.log", "w") as log:
        process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/api/apis").status_code == 200, timeout=30)
            assert [a["name"] for a in httpx.get(f"http://127.0.0.1:{port}/api/apis").json()] == ["orders"]
        finally:
            process.terminate()
            assert process.wait(15) == 0
    assert "no $WAYPOST_PORTAL_SECRET" not in (tmp_path / "portal.log").read_text()


def test_waypost_portal_needs_a_repository() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "waypost", "portal", "--port", "0"],
        env={**os.environ, "PYTHONPATH": str(SRC_DIR)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "--repo" in result.stderr


def test_serve_follows_the_checkout_upstream_and_survives_a_portal_that_cannot_start(
    tmp_path: Path, start_waypost: Callable[..., WaypostProcess]
) -> None:
    upstream, _ = seed_upstream(tmp_path)
    served = GitRepo.clone(upstream.path, tmp_path / "served")
    port = free_port()
    start_waypost(served.path / "policies", args=["--portal-port", str(port)])
    apis = httpx.get(f"http://127.0.0.1:{port}/api/apis")
    assert apis.status_code == 200 and apis.json()[0]["name"] == "orders"

    lonely = tmp_path / "not-in-git"
    (lonely / "x").mkdir(parents=True)
    shutil.copy(served.path / "policies" / "catalog.yaml", lonely / "x" / "catalog.yaml")
    waypost = start_waypost(lonely / "x", args=["--portal-port", str(free_port())], wait=False)
    wait_until(lambda: "portal not started" in waypost.log_text(), timeout=30)
    assert "give --portal-repo" in waypost.log_text()
    assert waypost.running


@pytest.mark.parametrize("flag", ["--portal-repo", "--portal-branch", "--portal-subdir", "--portal-workdir"])
def test_serve_lists_the_portal_flags(flag: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "waypost", "serve", "--help"],
        env={**os.environ, "PYTHONPATH": str(SRC_DIR)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert flag in result.stdout
