"""``waypost top``: the live analytics of a running waypost, redrawn in the terminal.

Polls ``/analytics/live.json`` on the admin port (the last few seconds, from memory) and draws
totals, routes, consumers and raised anomalies with rich. Exit with Ctrl-C; ``--once`` prints one
frame (for scripts and tests). An unreachable waypost shows as a line saying so, and the view
keeps trying.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

__all__ = ["render", "run"]


def _fetch(admin: str, seconds: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"{admin.rstrip('/')}/analytics/live.json?seconds={seconds}", timeout=3) as r:
        data: dict[str, Any] = json.load(r)
    return data


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _rate(n: float, seconds: int) -> str:
    return f"{n / seconds:.1f}"


def render(data: dict[str, Any], seconds: int) -> Group:
    t = data["totals"]
    head = Text.assemble(
        ("waypost top", "bold"),
        f"  last {seconds}s  ",
        (f"{_rate(t['requests'], seconds)} req/s", "bold cyan"),
        f"  5xx {t['error_rate']:.2%}  401/403 {t['denied']:.0f}  429 {t['limited']:.0f}",
        f"  p50 {_ms(t['p50_ms'])}  p95 {_ms(t['p95_ms'])}  p99 {_ms(t['p99_ms'])} ms",
    )
    parts: list[Any] = [head]
    for title, rows, key in (
        ("routes", data["top_routes"], "route"),
        ("consumers", data["top_consumers"], "consumer"),
    ):
        table = Table(title=title, title_justify="left", expand=True)
        for column in (key, "req/s", "5xx", "401/403", "429", "p50 ms", "p95 ms", "p99 ms"):
            table.add_column(column, justify="left" if column == key else "right")
        for row in rows:
            table.add_row(
                row[key] or "(none)",
                _rate(row["requests"], seconds),
                f"{row['error_rate']:.1%}",
                f"{row['denied']:.0f}",
                f"{row['limited']:.0f}",
                _ms(row["p50_ms"]),
                _ms(row["p95_ms"]),
                _ms(row["p99_ms"]),
            )
        parts.append(table)
    for anomaly in data.get("anomalies", []):
        parts.append(Text(f"ANOMALY {anomaly['consumer']}: {anomaly['detail']}", style="bold red"))
    return Group(*parts)


def run(admin: str, *, seconds: int, interval: float, once: bool) -> int:
    console = Console()
    if once:
        try:
            console.print(render(_fetch(admin, seconds), seconds))
        except (urllib.error.URLError, OSError, ValueError) as exc:
            console.print(f"waypost at {admin}: {exc}")
            return 1
        return 0
    with Live(console=console, auto_refresh=False, screen=False) as live:
        try:
            while True:
                try:
                    live.update(render(_fetch(admin, seconds), seconds), refresh=True)
                except (urllib.error.URLError, OSError, ValueError) as exc:
                    live.update(Text(f"waypost at {admin}: {exc} (retrying)", style="red"), refresh=True)
                time.sleep(interval)
        except KeyboardInterrupt:
            return 0
