"""Detection and false-positive rates of the ``core`` screening rules on public corpora.

    .venv/bin/python bench/screening_corpus.py

Reads tests/data/threat/ (attack payloads from PayloadsAllTheThings; benign search queries,
result URLs and search-result JSON from the Archive Query Log; see its README) and applies the
rules exactly as they run: the RE2 patterns Envoy gets, on the query (the payload encoded as a
browser's ``encodeURIComponent`` would) and on a header (as sent: header-safe payloads only), and
the decision service's body screen on a JSON body ``{"q": payload}``. tests/test_e2e_screening.py
checks on samples that a real Envoy and decision service decide the same. Prints Markdown tables;
docs/threat-protection.md records them.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

from threat_support.corpus import (  # noqa: E402
    attacks,
    benign_json,
    benign_queries,
    benign_urls,
    flagged_in_body,
    flagged_in_header,
    flagged_in_path,
    flagged_in_query,
    header_safe,
    json_body,
)


def _rate(hits: int, total: int) -> str:
    return f"{hits}/{total} ({hits / total:.1%})"


def main() -> None:
    print("| attack payloads | query | header | body | any place |")
    print("| --- | --- | --- | --- | --- |")
    totals = [0, 0, 0, 0, 0, 0, 0, 0]
    for category, payloads in attacks().items():
        safe = [p for p in payloads if header_safe(p)]
        query = sum(flagged_in_query(p) for p in payloads)
        header = sum(flagged_in_header(p) for p in safe)
        body = sum(flagged_in_body(json_body(p)) is not None for p in payloads)
        anywhere = sum(flagged_in_query(p) or flagged_in_body(json_body(p)) is not None for p in payloads)
        row = [query, len(payloads), header, len(safe), body, len(payloads), anywhere, len(payloads)]
        totals = [t + r for t, r in zip(totals, row, strict=True)]
        cells = [_rate(row[i], row[i + 1]) for i in range(0, 8, 2)]
        print(f"| {category} | " + " | ".join(cells) + " |")
    print("| all | " + " | ".join(_rate(totals[i], totals[i + 1]) for i in range(0, 8, 2)) + " |")
    print()
    print("| benign traffic | false positives |")
    print("| --- | --- |")
    queries = benign_queries()
    flagged = [
        q
        for q in queries
        if flagged_in_query(q) or (header_safe(q) and flagged_in_header(q)) or flagged_in_body(json_body(q))
    ]
    print(f"| search queries (as query, header and JSON body) | {_rate(len(flagged), len(queries))} |")
    urls = benign_urls()
    flagged_urls = [u for u in urls if flagged_in_path("/screened" + u)]
    print(f"| result URLs (path and query) | {_rate(len(flagged_urls), len(urls))} |")
    docs = benign_json()
    flagged_docs = [d for d in docs if flagged_in_body(d) is not None]
    print(f"| search-result JSON documents (as bodies) | {_rate(len(flagged_docs), len(docs))} |")
    for item in [*flagged, *flagged_urls][:10]:
        print(f"  flagged: {item[:100]!r}", file=sys.stderr)


if __name__ == "__main__":
    main()
