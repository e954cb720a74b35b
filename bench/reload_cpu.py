"""Benchmark: the CPU one change costs at 10,000 Services + 10,000 Routes, without Envoy.

The policy of ``bench/reload.py``, loaded, compiled and prepared in one process with the caches
``waypost serve`` keeps (load cache, compile memo, snapshot cache), then changed again and again:
a Route appended (``route``) or one Service's endpoint moved (``eds``). Prints this process's CPU
time per stage of each reload (load, decision needs, compile, prepare, the settle re-read,
commit): steadier than wall time on a shared machine, and what grows with the directory.

    .venv/bin/python bench/reload_cpu.py route|eds [--changes 7]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from reload import write_policies

from waypost.policies.load_cache import LoadCache
from waypost.policies.loader import load_policies
from waypost.policies.source import DirectorySource
from waypost.server.heap import settle
from waypost.xds.cache import SnapshotCache
from waypost.xds.compiler import CompileMemo, compile_policy
from waypost.xds.compiler.decisions import decision_needs

STAGES = ("load", "needs", "compile", "prepare", "re-read", "commit")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("change", choices=["route", "eds"])
    parser.add_argument("--changes", type=int, default=7)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp())
    write_policies(directory, 10_000, 10_000, "127.0.0.1:9", [10_000 + i for i in range(10)])
    load_cache, memo, cache = LoadCache(), CompileMemo(), SnapshotCache()

    def reload(applied: int) -> dict[str, float]:
        marks = [time.process_time()]
        source = DirectorySource(directory)
        policy = load_policies(source, load_cache)
        marks.append(time.process_time())
        decision_needs(policy)
        marks.append(time.process_time())
        compiled = compile_policy(policy, memo=memo)
        marks.append(time.process_time())
        prepared = cache.prepare(compiled)
        marks.append(time.process_time())
        source.unchanged()
        marks.append(time.process_time())
        cache.commit(prepared)
        settle(applied)
        marks.append(time.process_time())
        return {stage: b - a for stage, a, b in zip(STAGES, marks[:-1], marks[1:], strict=True)}

    reload(1)
    services = (directory / "services0.yaml").read_text()
    totals = []
    for i in range(args.changes):
        if args.change == "route":
            with open(directory / "routes-gw1.yaml", "a") as out:
                out.write(f"---\nkind: Route\nname: added{i}\ngateway: gw1\nbackend: svc1\n")
                out.write(f"match: {{prefix: /added{i}}}\n")
        else:
            (directory / "services0.yaml").write_text(services.replace("127.0.0.1:9", f"127.0.0.1:{10 + i}"))
        stages = reload(i + 2)
        totals.append(sum(stages.values()))
        print(" ".join(f"{k} {v * 1000:.0f} ms" for k, v in stages.items()))
    print(f"{args.change}: median CPU per change {statistics.median(totals) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
