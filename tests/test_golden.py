"""Golden tests: each tests/golden/NAME/in/ policy directory renders to the files in out/.

A valid case renders one YAML file per resource type for the node in NAME/case.yaml (default:
cluster `edge`, no labels; `grpc_client: true` renders for a proxyless gRPC client;
`collector: HOST:PORT` compiles as served with an analytics collector), and an Envoy node's
output also passes `envoy --mode validate`. An invalid case
renders `diagnostics.txt`, the exact lines `waypost validate` prints.

Regenerate after an intended change, then review the diff like code:

    WAYPOST_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_golden.py

Regeneration also deletes output files a case no longer produces.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from waypost.policies.diagnostics import PolicyError
from waypost.policies.loader import load_policies
from waypost.policies.types import parse_endpoint
from waypost.xds.compiler import NodeResources, compile_policy
from waypost.xds.render import SECTIONS, dump_yaml, render_resources, static_bootstrap

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("WAYPOST_UPDATE_GOLDEN") == "1"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "in").is_dir())


def case_options(case: str) -> dict[str, Any]:
    path = GOLDEN / case / "case.yaml"
    return yaml.safe_load(path.read_text()) if path.exists() else {}


def node_resources(case: str, monkeypatch: pytest.MonkeyPatch) -> NodeResources | str:
    """The case's node resources, or its diagnostics text when the policy is invalid."""
    monkeypatch.chdir(GOLDEN / case)  # diagnostics then name `in/...`, the same on every machine
    try:
        policy = load_policies(Path("in"))
    except PolicyError as exc:
        return "".join(f"{d}\n" for d in exc.diagnostics)
    options = case_options(case)
    node = options.get("node", {})
    collector = parse_endpoint(options["collector"]) if "collector" in options else None
    compiled = compile_policy(policy, collector=collector)
    return compiled.resources_for(
        compiled.select_gateways(
            node.get("cluster", "edge"), node.get("labels", {}), proxyless=node.get("grpc_client", False)
        )
    )


def expected_files(result: NodeResources | str) -> dict[str, str]:
    if isinstance(result, str):
        return {"diagnostics.txt": result}
    rendered = render_resources(result)
    return {f"{section}.yaml": dump_yaml(items) for section, items in rendered.items() if items}


@pytest.mark.parametrize("case", CASES)
def test_golden_output(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    actual = expected_files(node_resources(case, monkeypatch))
    out = GOLDEN / case / "out"
    if UPDATE:
        out.mkdir(exist_ok=True)
        for stale in set(p.name for p in out.iterdir()) - set(actual):
            (out / stale).unlink()
        for name, text in actual.items():
            (out / name).write_text(text)
    existing = {p.name for p in out.iterdir()} if out.is_dir() else set()
    assert existing == set(actual), f"{case}: golden files differ; regenerate with WAYPOST_UPDATE_GOLDEN=1"
    for name, text in actual.items():
        assert (out / name).read_text() == text, f"{case}/out/{name} differs; review and regenerate"


@pytest.mark.parametrize(
    "case",
    [
        c
        for c in CASES
        if not (GOLDEN / c / "out" / "diagnostics.txt").exists()
        and not case_options(c).get("node", {}).get("grpc_client", False)  # gRPC's config, not Envoy's
    ],
)
def test_golden_output_passes_envoy_validate(
    case: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, envoy_bin: Path
) -> None:
    result = node_resources(case, monkeypatch)
    assert not isinstance(result, str), result
    assert set(SECTIONS) >= set(result)
    config = tmp_path / "static.yaml"
    config.write_text(yaml.safe_dump(static_bootstrap(result)))
    proc = subprocess.run(
        [str(envoy_bin), "--mode", "validate", "-c", str(config), "-l", "error"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
