"""Imports run one way: policies <- shared names <- {compiler, decision services} <- server (and
the portal) <- cli.

Scans every module's imports (``import`` statements anywhere in the file, lazy ones included) and
fails on any that points up or sideways: the compiler and the decision services never import each
other, nothing below the server imports it, and the policy model imports nothing above it.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "waypost"

# Layer of each top-level area; a module may import its own layer or a lower one, except that the
# two layers of rank 2 (compiler, decision services) may not import each other.
LAYERS: dict[str, tuple[int, str]] = {
    "waypost.log": (0, "base"),
    "waypost.metrics": (0, "base"),
    "waypost.progress": (0, "base"),
    "waypost.peers": (0, "base"),
    "waypost.policies": (0, "policies"),
    "waypost.contract": (1, "shared names"),
    "waypost.h2grpc": (1, "gRPC transport"),  # the decision ports' server: below both services
    "waypost.xds": (2, "compiler"),
    "waypost.filters": (2, "decision services"),
    "waypost.analytics": (2, "analytics"),
    "waypost.server": (3, "server"),
    # The developer portal: a web app over the policy repository that reads the rate-limit
    # counters (decision services); `waypost serve` may host it, so it sits beside the server.
    "waypost.portal": (3, "portal"),
    "waypost.gitdiff": (4, "cli"),
    "waypost.gitdiff_help": (4, "cli"),
    "waypost.cli": (4, "cli"),
    "waypost.demo": (4, "cli"),
    "waypost.__main__": (4, "cli"),
    "waypost": (4, "cli"),
}


def layer_of(module: str) -> tuple[int, str]:
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return LAYERS[prefix]
    raise AssertionError(f"{module}: no layer; add it to LAYERS")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name == "waypost" or name.startswith("waypost.")}


def test_imports_run_one_way() -> None:
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        module = module_name(path)
        rank, area = layer_of(module)
        for target in sorted(imported(path)):
            if target == "waypost":
                continue
            try:
                target_rank, target_area = layer_of(target)
            except AssertionError:
                continue  # `from waypost.x import name`: the module itself is checked as well
            upward = target_rank > rank
            sideways = target_rank == rank == 2 and target_area != area
            if upward or sideways:
                problems.append(f"{module} ({area}) imports {target} ({target_area})")
    assert not problems, "\n".join(problems)


def test_every_module_has_a_layer() -> None:
    for path in SRC.rglob("*.py"):
        layer_of(module_name(path))


def test_standalone_decision_services_never_compile_envoy_config() -> None:
    """`waypost authz --workers N` and `waypost ratelimit` follow the policy through the runtime
    with their own applier only: no compiler, no snapshot cache in their process wiring."""
    for name in ("authz.py", "ratelimit.py", "runtime.py"):
        xds = sorted(t for t in imported(SRC / "server" / name) if t.startswith("waypost.xds"))
        assert not xds, f"server/{name} imports {xds}"
