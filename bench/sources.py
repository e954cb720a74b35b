"""Benchmark: loading the same policy from disk and from a git commit.

Writes the policy of ``bench/compile.py`` (1,000 Services and 5,000 Routes over 10 Gateways),
commits it into a temporary repository, then times side by side, in one process: the load from
the files (``DirectorySource``, what a plain directory or ``--working-tree`` reads) and from the
commit (``GitTreeSource``: ``git ls-tree`` + one ``git cat-file --batch``, what a checkout serves).

    .venv/bin/python bench/sources.py [--services 1000] [--routes 5000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from compile import write_policies

from waypost.policies.loader import load_policies
from waypost.policies.source import DirectorySource, GitTreeSource
from waypost.server.gitinfo import git_info


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--routes", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        policies = repo / "policies"
        policies.mkdir()
        write_policies(policies, args.services, args.routes)
        env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b"}
        env["GIT_COMMITTER_EMAIL"] = "b@b"
        for command in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "bench"]):
            subprocess.run(["git", *command], cwd=repo, check=True, env=env)
        info = git_info(policies, working_tree=False)
        assert info is not None
        times: dict[str, list[float]] = {"files": [], "commit": []}
        versions = set()
        for _ in range(args.repeat):
            for name in ("files", "commit"):
                source = (
                    DirectorySource(policies)
                    if name == "files"
                    else GitTreeSource(policies, toplevel=info.toplevel, commit=info.commit)
                )
                started = time.perf_counter()
                versions.add(load_policies(source).version)
                times[name].append(time.perf_counter() - started)
        assert len(versions) == 1, "both sources must give the same version"
        for name, samples in times.items():
            runs = ", ".join(f"{t:.3f}" for t in samples)
            print(f"{name:7} median {statistics.median(samples):.3f} s  (runs: {runs})")


if __name__ == "__main__":
    main()
