"""Benchmark: a repository of many teams; a full load, one team's change, one team's broken change.

Generates N teams (default 50) of 20 Services and 100 Routes each, every team under its own
folder with a Team document granting it a path prefix on one of 10 Gateways, then times through
the policy runtime (load + validate + compile + prepare + commit, as `waypost serve` does):

- full load, no Teams: the same documents as plain platform files (the baseline);
- full load: the first load of the whole directory;
- one team's change: one team's Route file edited (a new prefix); applied as a new version;
- one team broken: the same team's Service pointed outside its upstreams while another team
  changes a Route file; the runtime holds the broken team at its last good folder and applies the
  rest (the fallback: a failed load, a copy of the tree, a second load, compile and prepare).
- the last two again in a git checkout served by commit (``serve``'s default), each change a
  commit and the checkout left dirty: the team folders kept and the fallback's tree come from
  the commit (``git archive``) rather than the working files.

All three are measured side by side in one run: compare them with each other, not across runs.

    .venv/bin/python bench/teams.py [--teams 50] [--services 20] [--routes 100] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from waypost.policies.model import PolicySet
from waypost.server.runtime import PolicyRuntime
from waypost.xds.cache import SnapshotCache
from waypost.xds.compiler import compile_policy
from waypost.xds.compiler.memo import CompileMemo


class XdsApplier:
    """The xDS side of a reload (compile with serve's memo, prepare, commit), no decision plane."""

    name = "xds"

    def __init__(self) -> None:
        self.cache = SnapshotCache()
        self.memo = CompileMemo()

    async def prepare(self, policy: PolicySet) -> Any:
        return self.cache.prepare(compile_policy(policy, memo=self.memo))

    def commit(self, prepared: Any) -> None:
        self.cache.commit(prepared)


def team_routes(t: int, services: int, routes: int, prefix: str = "r") -> str:
    return "".join(
        f"---\nkind: Route\nname: {prefix}{r}\ngateway: gw{t % 10}\nhosts: [api.example.com]\n"
        f"match: {{prefix: /t{t}/{prefix}{r}, methods: [GET, POST]}}\nbackend: svc{r % services}\n"
        "timeout: 5s\nretries: {attempts: 2, on: [5xx, reset]}\n"
        for r in range(routes)
    )


def team_services(t: int, services: int, net: int | None = None) -> str:
    net = t if net is None else net
    return "".join(
        f"---\nkind: Service\nname: svc{s}\nendpoints: ['10.{net}.{s}.1:8080', '10.{net}.{s}.2:8080']\n"
        "connect_timeout: 1s\nhealth_check: {path: /healthz, interval: 5s}\n"
        for s in range(services)
    )


def write_policies(directory: Path, teams: int, services: int, routes: int) -> None:
    platform = "".join(f"---\nkind: Gateway\nname: gw{g}\nport: {10000 + g}\n" for g in range(10))
    for t in range(teams):
        platform += (
            f"---\nkind: Team\nname: team{t}\nfolders: [teams/team{t}]\nowners: ['@acme/team{t}']\n"
            f"gateways: [{{gateway: gw{t % 10}, hosts: [{{host: api.example.com, path_prefix: /t{t}/}}]}}]\n"
            f"upstreams: [10.{t}.0.0/16]\nlimits: {{routes: {routes + 10}}}\n"
        )
        folder = directory / "teams" / f"team{t}"
        folder.mkdir(parents=True)
        (folder / "services.yaml").write_text(team_services(t, services))
        (folder / "routes.yaml").write_text(team_routes(t, services, routes))
    (directory / "platform.yaml").write_text(platform)


def write_plain(directory: Path, teams: int, services: int, routes: int) -> None:
    """The same documents without Team documents or folders' scoping (names made unique by
    hand): the baseline that shows what teams add to a reload."""
    platform = "".join(f"---\nkind: Gateway\nname: gw{g}\nport: {10000 + g}\n" for g in range(10))
    (directory / "platform.yaml").write_text(platform)
    for t in range(teams):
        text = team_services(t, services) + team_routes(t, services, routes)
        text = text.replace("name: svc", f"name: t{t}-svc").replace("backend: svc", f"backend: t{t}-svc")
        (directory / f"team{t}.yaml").write_text(text.replace("name: r", f"name: t{t}-r"))


async def run(args: argparse.Namespace) -> dict[str, list[float]]:
    timings: dict[str, list[float]] = {
        "full load, no Teams": [],
        "full load": [],
        "one team's change": [],
        "one team broken": [],
        "one team's change, git": [],
        "one team broken, git": [],
    }
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            write_plain(Path(tmp), args.teams, args.services, args.routes)
            runtime = PolicyRuntime(Path(tmp), [XdsApplier()])
            started = time.perf_counter()
            assert await runtime.reload()
            timings["full load, no Teams"].append(time.perf_counter() - started)
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp)
            write_policies(directory, args.teams, args.services, args.routes)
            runtime = PolicyRuntime(directory, [XdsApplier()])
            started = time.perf_counter()
            assert await runtime.reload()
            timings["full load"].append(time.perf_counter() - started)

            team = directory / "teams" / "team7"
            (team / "routes.yaml").write_text(team_routes(7, args.services, args.routes, prefix="v"))
            started = time.perf_counter()
            assert await runtime.reload()
            timings["one team's change"].append(time.perf_counter() - started)

            (team / "services.yaml").write_text(team_services(7, args.services, net=200))
            (team / "routes.yaml").write_text(team_routes(7, args.services, args.routes, prefix="w"))
            other = directory / "teams" / "team8" / "routes.yaml"
            other.write_text(team_routes(8, args.services, args.routes, prefix="w"))
            started = time.perf_counter()
            applied = await runtime.reload()
            timings["one team broken"].append(time.perf_counter() - started)
            assert applied and set(runtime.lanes.held) == {"team7"}, runtime.lanes.held
            runtime.lanes.close()
        with tempfile.TemporaryDirectory() as tmp:
            await _git_changes(Path(tmp), args, timings)
    return timings


def _commit(directory: Path, message: str) -> None:
    for argv in (["add", "-A"], ["-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", message]):
        subprocess.run(["git", *argv], cwd=directory, check=True)


async def _git_changes(directory: Path, args: argparse.Namespace, timings: dict[str, list[float]]) -> None:
    subprocess.run(["git", "init", "-q", str(directory)], check=True)
    write_policies(directory, args.teams, args.services, args.routes)
    _commit(directory, "teams")
    runtime = PolicyRuntime(directory, [XdsApplier()])
    assert await runtime.reload()
    (directory / "wip.txt").write_text("uncommitted")  # a dirty checkout
    team = directory / "teams" / "team7"
    (team / "routes.yaml").write_text(team_routes(7, args.services, args.routes, prefix="v"))
    _commit(directory, "team7 changes")
    started = time.perf_counter()
    assert await runtime.reload()
    timings["one team's change, git"].append(time.perf_counter() - started)
    (team / "services.yaml").write_text(team_services(7, args.services, net=200))
    (team / "routes.yaml").write_text(team_routes(7, args.services, args.routes, prefix="w"))
    (directory / "teams" / "team8" / "routes.yaml").write_text(
        team_routes(8, args.services, args.routes, "w")
    )
    _commit(directory, "team7 breaks, team8 changes")
    started = time.perf_counter()
    applied = await runtime.reload()
    timings["one team broken, git"].append(time.perf_counter() - started)
    assert applied and set(runtime.lanes.held) == {"team7"}, runtime.lanes.held
    runtime.lanes.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teams", type=int, default=50)
    parser.add_argument("--services", type=int, default=20)
    parser.add_argument("--routes", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    timings = asyncio.run(run(args))
    print(
        f"{args.teams} teams x {args.services} Services x {args.routes} Routes "
        f"({args.teams * args.services} Services, {args.teams * args.routes} Routes)"
    )
    for key, values in timings.items():
        runs = ", ".join(f"{v:.3f}" for v in values)
        print(f"  {key:24s} median {statistics.median(values):.3f} s   (runs: {runs})")


if __name__ == "__main__":
    main()
