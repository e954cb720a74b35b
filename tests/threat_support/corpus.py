"""The screening corpora of tests/data/threat/ and the rules applied offline, as Envoy and the
decision service apply them. Used by the e2e test (which checks Envoy agrees) and by
bench/screening_corpus.py (which measures detection and false-positive rates)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import quote

from waypost.filters.protect.screen import BodyScreen
from waypost.policies.screening import RULES, SCREEN_CATEGORIES, native_regex

__all__ = [
    "DATA",
    "attacks",
    "benign_json",
    "benign_queries",
    "benign_urls",
    "encode_component",
    "flagged_in_body",
    "flagged_in_header",
    "flagged_in_path",
    "flagged_in_query",
    "header_safe",
    "json_body",
]

DATA = Path(__file__).resolve().parents[1] / "data" / "threat"
_PATH = [re.compile(native_regex(rule, "path")) for rule in RULES]
_HEADER = [re.compile(native_regex(rule, "header")) for rule in RULES]
_BODY = BodyScreen(SCREEN_CATEGORIES)


def encode_component(text: str) -> str:
    """As a browser's ``encodeURIComponent``."""
    return quote(text, safe="-_.!~*'()")


def flagged_in_path(target: str) -> bool:
    return any(p.fullmatch(target) for p in _PATH)


def flagged_in_query(text: str) -> bool:
    return flagged_in_path("/screened?q=" + encode_component(text))


def header_safe(text: str) -> bool:
    return all(0x20 <= ord(c) < 0x7F or c == "\t" for c in text) and text == text.strip()


def flagged_in_header(text: str) -> bool:
    return any(p.fullmatch(text) for p in _HEADER)


def flagged_in_body(body: bytes, content_type: str = "application/json") -> str | None:
    return _BODY.match(body, content_type)


def attacks() -> dict[str, list[str]]:
    return {c: (DATA / f"attacks-{c}.txt").read_text().splitlines() for c in SCREEN_CATEGORIES}


def benign_queries() -> list[str]:
    return (DATA / "benign-queries.txt").read_text().splitlines()


def benign_urls() -> list[str]:
    return (DATA / "benign-urls.txt").read_text().splitlines()


def benign_json() -> list[bytes]:
    return [line.encode() for line in (DATA / "benign-json.jsonl").read_text().splitlines()]


def json_body(text: str) -> bytes:
    return json.dumps({"q": text}).encode()
