"""Detection and false-positive rates of the ``core`` screening rules on public corpora.

    .venv/bin/python bench/screening_corpus.py

Reads tests/data/threat/ (attack payloads from PayloadsAllTheThings; benign search queries,
result URLs and search-result JSON from the Archive Query Log; see its README) and applies the
rules exactly as they run: the RE2 patterns Envoy gets, on the query (the payload encoded as a
browser's ``encodeURIComponent`` would) and on a header (as sent: header-safe payloads only), and
the decision service's body screen on a JSON body ``{"q": payload}``. tests/test_e2e_screening.py
checks on samples that a real Envoy and decision service decide the same. Prints Markdown tables;
docs/threat-protection.md records them.

The rules were tuned while looking at the committed benign samples, so their false-positive rate
flatters; ``--aql GIT_DIR`` (a clone of webis-de/archive-query-log) also measures everything of
that repository the samples left out: held-out queries, result URLs and whole SERP documents.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

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


def _held_out(aql: str) -> tuple[list[str], list[str], list[bytes]]:
    def show(path: str) -> str:
        return subprocess.run(
            ["git", "--git-dir", aql, "show", f"HEAD:{path}"], capture_output=True, text=True, check=True
        ).stdout

    listing = subprocess.run(
        ["git", "--git-dir", aql, "ls-tree", "-r", "--name-only", "HEAD", "data"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    seen_queries, seen_urls = set(benign_queries()), set(benign_urls())
    seen_docs = set(benign_json())
    queries: list[str] = []
    urls: list[str] = []
    docs: list[bytes] = []
    serps: list[dict[str, object]] = []
    for path in listing:
        if path.endswith(".approved.txt"):
            try:
                serps.append(json.loads(show(path)))
            except json.JSONDecodeError:
                continue
        elif path.startswith("data/examples/") and path.endswith(".jsonl"):
            serps.extend(json.loads(line) for line in show(path).splitlines())
    for serp in serps:
        if not isinstance(serp, dict):
            continue
        doc = json.dumps(serp, ensure_ascii=False, sort_keys=True).encode()
        if doc not in seen_docs:
            docs.append(doc)
        query = serp.get("query") or serp.get("url_query")
        if isinstance(query, str) and query not in seen_queries:
            queries.append(query)
        results = serp.get("results")
        found = [r.get("url") for r in results if isinstance(r, dict)] if isinstance(results, list) else []
        for url in [*found, serp.get("url")]:
            if isinstance(url, str) and url.startswith("http"):
                parts = urlsplit(url)
                target = parts.path + ("?" + parts.query if parts.query else "")
                if target not in ("", "/") and target not in seen_urls:
                    urls.append(target)
    return list(dict.fromkeys(queries)), list(dict.fromkeys(urls)), docs


def _benign_rows(queries: list[str], urls: list[str], docs: list[bytes], label: str) -> None:
    flagged = [
        q
        for q in queries
        if flagged_in_query(q) or (header_safe(q) and flagged_in_header(q)) or flagged_in_body(json_body(q))
    ]
    print(f"| {label}search queries (as query, header and JSON body) | {_rate(len(flagged), len(queries))} |")
    flagged_urls = [u for u in urls if flagged_in_path("/screened" + u)]
    print(f"| {label}result URLs (path and query) | {_rate(len(flagged_urls), len(urls))} |")
    flagged_docs = [d for d in docs if flagged_in_body(d) is not None]
    print(f"| {label}search-result JSON documents (as bodies) | {_rate(len(flagged_docs), len(docs))} |")
    for item in [*flagged, *flagged_urls][:10]:
        print(f"  flagged: {item[:100]!r}", file=sys.stderr)
    for doc in flagged_docs[:10]:
        print(f"  flagged document: {flagged_in_body(doc)}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aql", metavar="GIT_DIR", help="also measure held-out Archive Query Log data")
    args = parser.parse_args()
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
    _benign_rows(benign_queries(), benign_urls(), benign_json(), "")
    if args.aql:
        _benign_rows(*_held_out(args.aql), "held out: ")


if __name__ == "__main__":
    main()
