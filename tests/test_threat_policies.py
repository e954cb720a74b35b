"""Threat-protection policy blocks without Envoy: loading (file:line errors for schemas that do
not compile), request checks of JSON Schema and OpenAPI routes, the rule set, bootstrap flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from waypost.cli.values import byte_size_arg as _byte_size
from waypost.policies import PolicyError, load_policies
from waypost.policies.request_schemas import compile_validation
from waypost.policies.screening import RULES, SCREEN_CATEGORIES, native_regex, plain_regex
from waypost.xds.overload import build_overload_manager

ROUTE = """kind: Gateway
name: public
port: 8080
---
kind: Service
name: api
endpoints: ["127.0.0.1:9000"]
---
kind: Route
name: items
gateway: public
match: {{prefix: /}}
backend: api
validation:
  {field}: {value}
"""


def _problems(tmp_path: Path, field: str, value: str, files: dict[str, str]) -> list[str]:
    root = tmp_path / "policies"
    root.mkdir()
    (root / "routes.yaml").write_text(ROUTE.format(field=field, value=value))
    for name, text in files.items():
        (root / name).write_text(text)
    with pytest.raises(PolicyError) as info:
        load_policies(root)
    return [str(d) for d in info.value.diagnostics]


@pytest.mark.parametrize(
    ("field", "files", "message"),
    [
        ("json_schema", {"s.json": '{"type": "nope"}'}, "'s.json' does not compile"),
        ("json_schema", {"s.json": "{not: [json"}, "'s.json' is neither JSON nor YAML"),
        ("json_schema", {}, "file 's.json' not found"),
        ("openapi", {"s.json": '{"openapi": "2.0", "paths": {}}'}, "is not an OpenAPI 3 document"),
        (
            "openapi",
            {
                "s.json": json.dumps(
                    {
                        "openapi": "3.1.0",
                        "paths": {
                            "/a": {
                                "post": {
                                    "requestBody": {
                                        "content": {
                                            "application/json": {
                                                "schema": {"$ref": "#/components/schemas/Missing"}
                                            }
                                        }
                                    }
                                }
                            }
                        },
                    }
                )
            },
            "'/components/schemas/Missing' does not exist",
        ),
    ],
)
def test_schema_problems_are_file_line_errors(
    tmp_path: Path, field: str, files: dict[str, str], message: str
) -> None:
    problems = _problems(tmp_path, field, "s.json", files)
    assert len(problems) == 1, problems
    assert f"/routes.yaml:15: Route items: validation.{field}: " in problems[0], problems
    assert "\n" not in problems[0], problems
    assert message in problems[0], problems


def test_exactly_one_schema_source(tmp_path: Path) -> None:
    root = tmp_path / "policies"
    root.mkdir()
    (root / "routes.yaml").write_text(ROUTE.format(field="max_body_bytes", value="10"))
    with pytest.raises(PolicyError, match="exactly one of json_schema, openapi is required"):
        load_policies(root)


def _spec(tmp_path: Path, doc: dict[str, object]):  # type: ignore[no-untyped-def]
    root = tmp_path / "policies"
    root.mkdir()
    (root / "routes.yaml").write_text(ROUTE.format(field="openapi", value="api.json"))
    (root / "api.json").write_text(json.dumps(doc))
    policy = load_policies(root)
    validation = policy.routes["items"].validation
    assert validation is not None
    return compile_validation(validation, policy.files)


def test_openapi_30_nullable_array_params_and_base_path(tmp_path: Path) -> None:
    spec = _spec(
        tmp_path,
        {
            "openapi": "3.0.3",
            "servers": [{"url": "https://api.example.com/v2"}],
            "paths": {
                "/search": {
                    "get": {
                        "parameters": [
                            {
                                "name": "tag",
                                "in": "query",
                                "schema": {"type": "array", "items": {"type": "integer"}},
                            },
                            {"name": "flag", "in": "query", "schema": {"type": "boolean"}},
                        ]
                    }
                },
                "/notes": {
                    "post": {
                        "requestBody": {
                            "required": True,
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {"due": {"type": "string", "nullable": True}},
                                    }
                                }
                            },
                        }
                    }
                },
            },
        },
    )
    assert spec.problems("GET", "/v2/search?tag=1&tag=2&flag=true", {}, b"") == []
    assert [p.at for p in spec.problems("GET", "/v2/search?tag=x&flag=maybe", {}, b"")] == ["flag", "tag"]
    json_headers = {"content-type": "application/json; charset=utf-8"}
    assert spec.problems("POST", "/v2/notes", json_headers, b'{"due": null}') == []
    assert [p.where for p in spec.problems("POST", "/v2/notes", {}, b"")] == ["body"]


def test_rules_render_for_both_places() -> None:
    for rule in RULES:
        assert rule.category in SCREEN_CATEGORIES
        # RE2 rejects what Python's re also would for these constructs; Envoy validates the rest
        # (tests/test_golden.py runs envoy --mode validate on a screening route).
        for pattern in (native_regex(rule, "path"), native_regex(rule, "header"), plain_regex(rule)):
            assert "(?=" not in pattern and "(?<" not in pattern and "(?!" not in pattern
    assert len({rule.id for rule in RULES}) == len(RULES)


def test_bootstrap_sizes_and_overload_actions() -> None:
    assert _byte_size("2Gi") == 2 << 30 and _byte_size("512Mi") == 512 << 20 and _byte_size("1000") == 1000
    manager = build_overload_manager(max_connections=100, max_heap_bytes=1 << 30)
    assert [a["name"].rsplit(".", 1)[1] for a in manager["actions"]] == [
        "shrink_heap",
        "disable_http_keepalive",
        "stop_accepting_requests",
    ]
    with pytest.raises(ValueError, match="below 64 MiB"):
        build_overload_manager(max_connections=100, max_heap_bytes=1 << 20)
