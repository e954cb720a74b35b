"""Benchmark: the operator commands end to end on a large policy directory.

Times `waypost validate`, `waypost render` and `waypost diff` as a user runs them (a fresh
process each, interpreter start included) on the 1,000 Services + 5,000 Routes of
bench/compile.py, in a git checkout with two commits (the second changes one route). `validate`
runs twice side by side: stderr a pipe (no progress) and a pseudo-terminal (the progress line),
so the cost of the progress display is a ratio measured in one run.

    .venv/bin/python bench/cli.py [--services 1000] [--routes 5000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import pty
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compile import write_policies

SRC = Path(__file__).resolve().parents[1] / "src"
ENV = {
    **os.environ,
    "PYTHONPATH": str(SRC),
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@waypost.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@waypost.invalid",
}


def run(argv: list[str], cwd: Path, *, tty: bool = False) -> float:
    command = [sys.executable, "-m", "waypost", *argv]
    started = time.perf_counter()
    if tty:
        leader, follower = pty.openpty()
        proc = subprocess.Popen(command, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=follower)
        os.close(follower)
        while True:  # drain the terminal so the progress writes never block
            try:
                if not os.read(leader, 4096):
                    break
            except OSError:
                break
        os.close(leader)
        code = proc.wait()
    else:
        code = subprocess.run(command, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, check=False).returncode
    elapsed = time.perf_counter() - started
    if code not in (0, 1):
        raise SystemExit(f"waypost {' '.join(argv)} exited {code}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--routes", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        policies = repo / "policies"
        policies.mkdir()
        write_policies(policies, args.services, args.routes)
        git = ["git", "-c", "init.defaultBranch=main"]
        subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
        subprocess.run([*git, "add", "-A"], cwd=repo, check=True, env=ENV)
        subprocess.run([*git, "commit", "-qm", "a"], cwd=repo, check=True, env=ENV)
        routes = policies / "routes.yaml"
        routes.write_text(routes.read_text().replace("name: route7\n", "name: route7\n", 1) + "")
        text = routes.read_text().replace("match: {prefix: /v1/r7,", "match: {prefix: /v1/r7x,", 1)
        routes.write_text(text)
        subprocess.run([*git, "commit", "-qam", "b"], cwd=repo, check=True, env=ENV)

        cases = {
            "validate (pipe)": (["validate", "policies"], False),
            "validate (terminal)": (["validate", "policies"], True),
            "render one node": (["render", "policies", "--node-id", "n", "--node-cluster", "edge0"], False),
            "diff HEAD~1 HEAD": (["diff", "HEAD~1", "HEAD", "policies"], False),
        }
        timings: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.repeat):
            for name, (argv, tty) in cases.items():  # interleaved: noise hits every case alike
                timings[name].append(run(argv, repo, tty=tty))
    print(f"{args.services} services, {args.routes} routes; median of {args.repeat}, wall time per command")
    for name, values in timings.items():
        print(f"  {name:22} {statistics.median(values):6.2f} s")
    ratio = statistics.median(timings["validate (terminal)"]) / statistics.median(timings["validate (pipe)"])
    print(f"  progress display cost: terminal / pipe = {ratio:.2f}")


if __name__ == "__main__":
    main()
