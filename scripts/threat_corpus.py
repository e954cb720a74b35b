"""Rebuild tests/data/threat/ from the public repositories it was taken from (see its README).

    python scripts/threat_corpus.py PAYLOADS_GIT_DIR AQL_GIT_DIR

PAYLOADS_GIT_DIR: a clone of swisskyrepo/PayloadsAllTheThings (MIT); AQL_GIT_DIR: a clone of
webis-de/archive-query-log (MIT). Reads files at HEAD with `git show`; keeps a deterministic
sample (every k-th line) so the committed data stays small. Only data leaves those repositories.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "threat"
PER_CATEGORY = 400

ATTACKS = {
    "sqli": [
        "SQL Injection/Intruder/Auth_Bypass.txt",
        "SQL Injection/Intruder/Auth_Bypass2.txt",
        "SQL Injection/Intruder/FUZZDB_MSSQL-WHERE_Time.txt",
        "SQL Injection/Intruder/FUZZDB_MSSQL.txt",
        "SQL Injection/Intruder/FUZZDB_MYSQL.txt",
        "SQL Injection/Intruder/FUZZDB_MySQL-WHERE_Time.txt",
        "SQL Injection/Intruder/FUZZDB_Oracle.txt",
        "SQL Injection/Intruder/FUZZDB_Postgres_Enumeration.txt",
        "SQL Injection/Intruder/Generic_ErrorBased.txt",
        "SQL Injection/Intruder/Generic_TimeBased.txt",
        "SQL Injection/Intruder/Generic_UnionSelect.txt",
        "SQL Injection/Intruder/SQLi_Polyglots.txt",
        "SQL Injection/Intruder/payloads-sql-blind-MySQL-WHERE",
        "SQL Injection/Intruder/payloads-sql-blind-MSSQL-WHERE",
    ],
    "xss": [
        "XSS Injection/Intruders/IntrudersXSS.txt",
        "XSS Injection/Intruders/JHADDIX_XSS.txt",
        "XSS Injection/Intruders/RSNAKE_XSS.txt",
        "XSS Injection/Intruders/BRUTELOGIC-XSS-STRINGS.txt",
        "XSS Injection/Intruders/XSS_Polyglots.txt",
        "XSS Injection/Intruders/XSSDetection.txt",
    ],
    "traversal": [
        "Directory Traversal/Intruder/directory_traversal.txt",
        "Directory Traversal/Intruder/deep_traversal.txt",
    ],
    "command": [
        "Command Injection/Intruder/command-execution-unix.txt",
        "Command Injection/Intruder/command_exec.txt",
    ],
}


def show(repo: str, path: str) -> str:
    return subprocess.run(
        ["git", "--git-dir", repo, "show", f"HEAD:{path}"], capture_output=True, text=True, check=True
    ).stdout


def sample(items: list[str], limit: int) -> list[str]:
    unique = list(dict.fromkeys(i for i in items if i.strip()))
    step = max(1, len(unique) // limit)
    return unique[::step][:limit]


def main(payloads: str, aql: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for category, files in ATTACKS.items():
        lines = [line.rstrip("\r") for f in files for line in show(payloads, f).splitlines()]
        # Payloads with line breaks or NULs cannot travel in a header; they stay in the other places.
        chosen = sample([line for line in lines if line.strip()], PER_CATEGORY)
        (OUT / f"attacks-{category}.txt").write_text("\n".join(chosen) + "\n")
    listing = subprocess.run(
        ["git", "--git-dir", aql, "ls-tree", "-r", "--name-only", "HEAD", "data/manual-annotations"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    queries, urls, docs = [], [], []
    for path in sorted(p for p in listing if p.endswith(".approved.txt")):
        try:
            serp = json.loads(show(aql, path))
        except json.JSONDecodeError:
            continue
        if not isinstance(serp, dict):
            continue
        if isinstance(serp.get("query"), str):
            queries.append(serp["query"].replace("\n", " "))
        for result in serp.get("results") or []:
            url = result.get("url") if isinstance(result, dict) else None
            if isinstance(url, str) and url.startswith("http"):
                parts = urlsplit(url)
                urls.append(parts.path + ("?" + parts.query if parts.query else ""))
        docs.append(json.dumps(serp, ensure_ascii=False, sort_keys=True))
    (OUT / "benign-queries.txt").write_text("\n".join(sample(queries, 600)) + "\n")
    (OUT / "benign-urls.txt").write_text("\n".join(sample([u for u in urls if u and u != "/"], 600)) + "\n")
    (OUT / "benign-json.jsonl").write_text("\n".join(sample(docs, 60)) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
