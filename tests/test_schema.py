"""The JSON Schema and the generated policy reference: committed files are current, the schema
accepts every example policy document and rejects bad ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from support import REPO_ROOT
from waypost.policies.reference import NOTES, reference_markdown
from waypost.policies.schema import policy_schema, schema_text
from waypost.policies.yaml_reader import parse_documents

SCHEMA_PATH = REPO_ROOT / "schema" / "waypost.schema.json"
REFERENCE_PATH = REPO_ROOT / "docs" / "reference.md"


def _example_files() -> list[Path]:
    files = sorted((REPO_ROOT / "policies").rglob("*.yaml"))
    files += sorted((REPO_ROOT / "tests" / "spec_examples").rglob("*.yaml"))
    for case in sorted((REPO_ROOT / "tests" / "golden").iterdir()):
        if not (case / "out" / "diagnostics.txt").exists():  # those inputs are invalid on purpose
            files += sorted((case / "in").rglob("*.yaml"))
    return files


def _documents(path: Path) -> list[dict[str, Any]]:
    # The loader's YAML 1.2 reading (`on:` is a key, not `true`), as yaml-language-server does.
    documents, problem = parse_documents(path.read_bytes())
    assert problem is None, problem
    return [doc.value for doc in documents if doc.value is not None]


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_committed_schema_is_current() -> None:
    assert SCHEMA_PATH.read_text() == schema_text(), (
        "schema/waypost.schema.json is stale: run `waypost schema > schema/waypost.schema.json`"
    )


def test_committed_reference_is_current() -> None:
    assert REFERENCE_PATH.read_text() == reference_markdown(), (
        "docs/reference.md is stale: run `waypost docs > docs/reference.md`"
    )


def test_reference_notes_name_existing_fields() -> None:
    definitions = policy_schema()["$defs"]
    for block, fields in NOTES.items():
        assert block in definitions, f"NOTES names block {block}, which the model no longer has"
        for field in fields:
            assert field in definitions[block]["properties"], f"NOTES names {block}.{field}"


def test_reference_covers_every_field_of_every_kind() -> None:
    text = reference_markdown()
    for kind, definition in policy_schema()["$defs"].items():
        assert f"### {kind}" in text
        for field in definition.get("properties", {}):
            assert f"| `{field}` |" in text, f"{kind}.{field} missing from the reference"


@pytest.mark.parametrize("path", _example_files(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_schema_accepts_example(path: Path, validator: jsonschema.protocols.Validator) -> None:
    documents = _documents(path)
    assert documents
    for document in documents:
        errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
        assert not errors, f"{path}: {document.get('kind')} {document.get('name')}: " + "; ".join(
            f"{list(e.absolute_path)}: {e.message}" for e in errors
        )


def test_example_files_carry_the_modeline() -> None:
    for path in sorted((REPO_ROOT / "policies").rglob("*.yaml")):
        first = path.read_text().splitlines()[0]
        up = "../" * len(path.relative_to(REPO_ROOT).parent.parts)
        assert first == f"# yaml-language-server: $schema={up}schema/waypost.schema.json", path
        assert (path.parent / f"{up}schema/waypost.schema.json").resolve() == SCHEMA_PATH


@pytest.mark.parametrize(
    "document, complaint",
    [
        ({"kind": "Gateway", "name": "public", "port": 70000}, "70000"),
        ({"kind": "Gateway", "name": "public", "port": 8080, "prot": 1}, "prot"),
        ({"kind": "Gatway", "name": "public", "port": 8080}, "Gatway"),
        ({"name": "public", "port": 8080}, "kind"),
        ({"kind": "Service", "name": "orders", "endpoints": ["a:1"], "connect_timeout": "5 sec"}, "5 sec"),
        ({"kind": "Route", "name": "r", "gateway": "g", "match": {"prefix": "api"}, "backend": "s"}, "api"),
    ],
)
def test_schema_rejects_bad_documents(
    document: dict[str, Any], complaint: str, validator: jsonschema.protocols.Validator
) -> None:
    errors = list(validator.iter_errors(document))
    errors = list(validator.iter_errors(document))
    assert errors
    assert any(complaint in error.message for error in errors), [e.message for e in errors]


def test_schema_and_loader_agree_on_a_bad_file(
    tmp_path: Path, validator: jsonschema.protocols.Validator
) -> None:
    """The same bad value is refused by the editor's schema and by the loader."""
    from waypost.policies.diagnostics import PolicyError
    from waypost.policies.loader import load_policies

    (tmp_path / "gw.yaml").write_text("kind: Gateway\nname: public\nport: 0\n")
    assert not validator.is_valid(_documents(tmp_path / "gw.yaml")[0])
    with pytest.raises(PolicyError, match=r"gw\.yaml:3"):
        load_policies(tmp_path)
