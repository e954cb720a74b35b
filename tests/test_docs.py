"""The docs stay true: the troubleshooting page is keyed by messages waypost really prints, and
every page the README links to exists."""

from __future__ import annotations

import functools
import re

import pytest

from support import REPO_ROOT

TROUBLESHOOTING = REPO_ROOT / "docs" / "troubleshooting.md"
# Messages that come from git itself, not from waypost's code.
FROM_GIT = (
    "Not possible to fast-forward",
    "could not read Username",
    "Permission denied",
    "dubious ownership",
)


# Fields of /status quoted next to the messages, not messages.
STATUS_FIELDS = ('"ready": false', "in_sync: false", "types.*.last_nack.error")
# Messages the code composes from parts: the fragment the code holds.
COMPOSED = {
    "policy directory does not exist": 'f"policy directory {what}"',
    "duplicate key 'x' (first at line N)": "(first at line {first})",
    "gateway 'publik' is not a Gateway": "is not {article}",
    "backend 'ordrs' is not a Service": "is not {article}",
    "... is not an AuthPolicy": "is not {article}",
    "duplicate Route name, first defined at file:line": "name, first defined at",
    "conflicts with Route other (file:line): same gateway 'public', host '*' and match": "): same gateway",
    "waypost diff: unknown revision 'x'": "unknown revision '{rev}'",
    "waypost: --label expects key=value": "--label expects key=value",
    "regular expression too complex for Envoy: RE2 program size N > 4096": "RE2 program size",
    "... is N characters; the limit is 4096": "characters; the limit is {MAX_CHARS}",
    "claims_to_headers.sub: 'x-api-key' is a credential header of an AuthPolicy": "credential header of an",
    "'x' is a FIFO, not a regular file; not read": ", not a regular file; not read",
    "policy files kept changing for 30s; not applied": "policy files kept changing for",
    "refusing to start: the admin port would listen on": "the admin port would listen on",
    "route orders needs the rate-limit service (waypost_ratelimit), which nothing serves": (
        "), which nothing serves"
    ),
    "identity[0].custom.plugin: cannot import module 'x'": "cannot import module '{module_name}'",
}


@functools.cache
def _source_text() -> str:
    return "\n".join(path.read_text() for path in sorted((REPO_ROOT / "src").rglob("*.py")))


def _quoted_messages() -> list[str]:
    text = TROUBLESHOOTING.read_text()
    return [m for line in re.findall(r"^\*\*(.+)\*\*", text, re.M) for m in re.findall(r"`([^`]+)`", line)]


def _longest_literal(message: str) -> str:
    # Placeholders in the docs: quoted names ('x', 'nope'), numbers, `...`, REV, N, file:line.
    parts = re.split(r"'[^']*'|\.\.\.|\b\d+\b|\bREV\b|\bNs\b|file:line|\bx\b", message)
    return max((part.strip(" :()") for part in parts), key=len)


@pytest.mark.parametrize("message", _quoted_messages())
def test_troubleshooting_messages_exist_in_the_code(message: str) -> None:
    if message.startswith(FROM_GIT) or message in STATUS_FIELDS or message.startswith("policy rejected"):
        return
    literal = COMPOSED.get(message) or _longest_literal(message)
    assert len(literal) >= 6, f"too little literal text to check in {message!r}"
    assert literal in _source_text(), (
        f"troubleshooting.md quotes {message!r}; the code never prints {literal!r}"
    )


def test_readme_links_exist() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(((?:docs|schema|bench)/[^)#]+)\)", readme):
        assert (REPO_ROOT / target).exists(), target
    for page in ("concepts.md", "reference.md", "operations.md", "troubleshooting.md"):
        assert f"docs/{page}" in readme
