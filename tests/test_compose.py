"""compose.yaml cannot run here (no Docker engine): check it against the Compose JSON schema,
and check that everything it mounts or builds from exists and fits together."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from support import REPO_ROOT

COMPOSE = REPO_ROOT / "compose.yaml"
SCHEMA = REPO_ROOT / "tests" / "data" / "compose-spec.json"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.load(COMPOSE.read_text(), Loader=yaml.CSafeLoader)
    return data


def test_compose_file_matches_the_compose_schema(compose: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, errors
    # The schema is strict enough to catch a typo, so passing it means something.
    assert not validator.is_valid({"services": {"envoy": {"imgae": "envoyproxy/envoy:v1.40-latest"}}})


def test_compose_has_the_demo_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["envoy"]["image"].startswith("envoyproxy/envoy:")
    assert services["waypost"]["build"] == "."
    assert services["redis"]["image"].startswith("redis:")
    assert {"orders", "catalog"} <= services.keys()


def test_every_mounted_and_built_file_exists(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume["source"]
            if source.startswith((".", "/")):
                assert (REPO_ROOT / source).exists(), f"{name} mounts {source}, which does not exist"
        build = service.get("build")
        if build is not None:
            context = REPO_ROOT / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = context / (
                build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile"
            )
            assert dockerfile.exists(), f"{name} builds from {dockerfile}, which does not exist"
    # What the Dockerfile copies in must exist too, or `docker compose up --build` fails.
    for line in (REPO_ROOT / "Dockerfile").read_text().splitlines():
        match = re.match(r"COPY\s+(.+)\s+\S+$", line.strip())
        if match:
            for source in match.group(1).split():
                assert (REPO_ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"


def test_envoy_bootstrap_points_at_the_waypost_service(compose: dict[str, Any]) -> None:
    services = compose["services"]
    mounted = {
        volume.split(":")[1]: REPO_ROOT / volume.split(":")[0] for volume in services["envoy"]["volumes"]
    }
    command = services["envoy"]["command"]
    bootstrap_path = mounted[command[command.index("-c") + 1]]
    bootstrap = yaml.load(bootstrap_path.read_text(), Loader=yaml.CSafeLoader)
    xds = bootstrap["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    address = xds["endpoint"]["address"]["socket_address"]
    waypost_command = services["waypost"]["command"]
    assert address["address"] == "waypost"
    assert str(address["port_value"]) == waypost_command[waypost_command.index("--xds-port") + 1]
    # The policies waypost reads are the example policies, mounted where --policies points.
    policies_target = waypost_command[waypost_command.index("--policies") + 1]
    assert f"./policies:{policies_target}:ro" in services["waypost"]["volumes"]
    assert Path(REPO_ROOT / "policies" / "gateway.yaml").exists()
