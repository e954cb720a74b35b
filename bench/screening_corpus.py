"""Detection and false-positive rates of the ``core`` screening rules on public corpora.

    .venv/bin/python bench/screening_corpus.py

Reads tests/data/threat/ (attack payloads from PayloadsAllTheThings, benign search queries, URLs
and search-result JSON from the Archive Query Log; see its README) and applies the rules exactly
as they run: the RE2 patterns Envoy gets for the query (the payload percent-encoded as a browser's
``encodeURIComponent`` would) and for a header (as sent), and the decision service's body screen
on a JSON body. Prints one table; docs/threat-protection.md records it.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from waypost.filters.protect.screen import BodyScreen  # noqa: E402
from waypost.screening import RULES, SCREEN_CATEGORIES, native_regex  # noqa: E402

DATA = ROOT / "tests" / "data" / "threat"
_PATH = [re.compile(native_regex(rule, "path")) for rule in RULES]
_HEADER = [re.compile(native_regex(rule, "header")) for rule in RULES]
_BODY = BodyScreen(SCREEN_CATEGORIES)


def encode_component(text: str) -> str:
    return quote(text, safe="-_.!~*'()")


def in_query(text: str) -> bool:
    target = "/screened?q=" + encode_component(text)
    return any(p.fullmatch(target) for p in _PATH)


def header_safe(text: str) -> bool:
    return all(0x20 <= ord(c) < 0x7F or c == "\t" for c in text)


def in_header(text: str) -> bool:
    return any(p.fullmatch(text) for p in _HEADER)


def in_body(text: str) -> bool:
    return _BODY.match(json.dumps({"q": text}).encode(), "application/json") is not None


PLACES: dict[str, Callable[[str], bool]] = {"query": in_query, "header": in_header, "body": in_body}


def attacks() -> dict[str, list[str]]:
    return {c: (DATA / f"attacks-{c}.txt").read_text().splitlines() for c in SCREEN_CATEGORIES}


def benign() -> dict[str, list[str]]:
    return {
        "search queries": (DATA / "benign-queries.txt").read_text().splitlines(),
        "URLs (path and query)": (DATA / "benign-urls.txt").read_text().splitlines(),
    }


def benign_json() -> list[bytes]:
    return [line.encode() for line in (DATA / "benign-json.jsonl").read_text().splitlines()]


def main() -> None:
    print("| attacks | payloads | query | header | body |")
    print("| --- | --- | --- | --- | --- |")
    for category, payloads in attacks().items():
        cells = []
        for place, check in PLACES.items():
            pool = [p for p in payloads if place != "header" or header_safe(p)]
            hit = sum(check(p) for p in pool)
            cells.append(f"{hit / len(pool):.1%}")
        print(f"| {category} | {len(payloads)} | " + " | ".join(cells) + " |")
    print()
    print("| benign | items | false positives |")
    print("| --- | --- | --- |")
    for name, items in benign().items():
        if name.startswith("URLs"):
            flagged = [u for u in items if any(p.fullmatch(u) for p in _PATH)]
        else:
            flagged = [q for q in items if in_query(q) or in_header(q) or in_body(q)]
        print(f"| {name} | {len(items)} | {len(flagged)} ({len(flagged) / len(items):.1%}) |")
        for item in flagged[:10]:
            print(f"|   e.g. | `{item[:80]}` | |", file=sys.stderr)
    docs = benign_json()
    flagged_docs = [d for d in docs if _BODY.match(d, "application/json") is not None]
    print(f"| search-result JSON bodies | {len(docs)} | {len(flagged_docs)} ({len(flagged_docs) / len(docs):.1%}) |")
    for doc in flagged_docs[:5]:
        print(f"  json flagged by {_BODY.match(doc, 'application/json')}", file=sys.stderr)


if __name__ == "__main__":
    main()
