"""The embedded store: one SQLite file (``<data dir>/analytics.sqlite3``) of aggregate rows.

One table, ``buckets``, keyed by (resolution, start, gateway, api, route, consumer, status):
seconds, minutes, hours and days side by side, each row a :class:`~waypost.analytics.aggregate.Row`
with its sketches encoded. Closed seconds are inserted; open rollup rows are rewritten (INSERT OR
REPLACE) every flush, so after a restart the store holds everything up to the last flush and
:meth:`Store.open_rollups` hands the open minute/hour/day back to the aggregator.

Retention is per resolution (:class:`Retention`); :meth:`Store.prune` deletes older rows.

Thread-safety: one connection behind one lock: every method may be called from any thread
(the service calls them through ``asyncio.to_thread``), one at a time. SQLite's WAL lets readers in
other processes (``sqlite3`` on the file) look while waypost writes.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from waypost.analytics.aggregate import DAY, HOUR, MINUTE, SECOND, Row
from waypost.analytics.cells import Cell, Key
from waypost.analytics.sketch import decode
from waypost.policies.teams import SEPARATOR

__all__ = ["FILE_NAME", "Retention", "Store", "StoredRow"]

P = ParamSpec("P")
R = TypeVar("R")

FILE_NAME = "analytics.sqlite3"
_SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS buckets (
  resolution INTEGER NOT NULL, start INTEGER NOT NULL,
  gateway TEXT NOT NULL, api TEXT NOT NULL, route TEXT NOT NULL, consumer TEXT NOT NULL,
  status TEXT NOT NULL,
  requests REAL NOT NULL, bytes_in REAL NOT NULL, bytes_out REAL NOT NULL,
  duration_sum REAL NOT NULL, upstream_sum REAL NOT NULL,
  duration BLOB NOT NULL, upstream BLOB NOT NULL, methods TEXT NOT NULL, flags TEXT NOT NULL,
  PRIMARY KEY (resolution, start, gateway, api, route, consumer, status)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS consumers (consumer TEXT PRIMARY KEY, plan TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Retention:
    """Seconds each resolution's rows are kept."""

    second: int = 3600
    minute: int = 7 * 86400
    hour: int = 90 * 86400
    day: int = 730 * 86400

    def by_resolution(self) -> dict[int, int]:
        return {SECOND: self.second, MINUTE: self.minute, HOUR: self.hour, DAY: self.day}


@dataclass(frozen=True, slots=True)
class StoredRow:
    """A row read back: dimensions plus a decoded cell."""

    resolution: int
    start: int
    key: Key
    cell: Cell


def _locked(method: Callable[Concatenate[Store, P], R]) -> Callable[Concatenate[Store, P], R]:
    # One statement or transaction at a time on the shared connection.
    def call(self: Store, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with self._lock:
            return method(self, *args, **kwargs)

    return call


class Store:
    def __init__(self, directory: Path) -> None:
        self._lock = threading.Lock()
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / FILE_NAME
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # A crash may lose the last flush, never corrupt the file: WAL + NORMAL is durable enough
        # for one-second aggregates and keeps each flush to one fsync at checkpoint time.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        found = self._db.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
        if found is None:
            self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(_SCHEMA_VERSION),))
        elif int(found[0]) != _SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path}: analytics schema {found[0]}, this waypost reads {_SCHEMA_VERSION}"
            )

    @_locked
    def close(self) -> None:
        self._db.close()

    @_locked
    def write(self, rows: Sequence[Row], plans: dict[str, str] | None = None) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO buckets VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        r.resolution,
                        r.start,
                        *r.key,
                        r.requests,
                        r.bytes_in,
                        r.bytes_out,
                        r.duration_sum,
                        r.upstream_sum,
                        r.duration,
                        r.upstream,
                        json.dumps(r.methods, separators=(",", ":")),
                        json.dumps(r.flags, separators=(",", ":")),
                    )
                    for r in rows
                ],
            )
            if plans:
                self._db.executemany("INSERT OR REPLACE INTO consumers VALUES (?, ?)", plans.items())

    @_locked
    def prune(self, now: int, retention: Retention) -> int:
        deleted = 0
        with self._db:
            for resolution, keep in retention.by_resolution().items():
                cursor = self._db.execute(
                    "DELETE FROM buckets WHERE resolution = ? AND start < ?", (resolution, now - keep)
                )
                deleted += cursor.rowcount
        return deleted

    def open_rollups(self, now: int) -> list[StoredRow]:
        """The rows of the minute, hour and day that contain ``now``."""
        out: list[StoredRow] = []
        for resolution in (MINUTE, HOUR, DAY):
            out.extend(self.rows(resolution, now - now % resolution, now))
        return out

    @_locked
    def rows(
        self, resolution: int, start: int, end: int, where: dict[str, str] | None = None
    ) -> list[StoredRow]:
        """Rows of one resolution with ``start <= row.start <= end``, optionally filtered by
        dimension (gateway, api, route, consumer, status) equal to a value, or by ``team``: the
        rows of the team's routes (named ``<team>~<route>``; see :func:`team_of_name`)."""
        clauses = ["resolution = ?", "start >= ?", "start <= ?"]
        params: list[object] = [resolution, start, end]
        for name, value in sorted((where or {}).items()):
            if name == "team":  # a prefix compared exactly: LIKE would read '_' in a name as a wildcard
                clauses.append("substr(route, 1, ?) = ?")
                params += [len(value) + 1, value + SEPARATOR]
                continue
            if name not in Key._fields:
                raise ValueError(f"no dimension {name!r}")
            clauses.append(f"{name} = ?")
            params.append(value)
        cursor = self._db.execute(
            "SELECT resolution, start, gateway, api, route, consumer, status, requests, bytes_in,"
            " bytes_out, duration, upstream, methods, flags FROM buckets WHERE "
            + " AND ".join(clauses)
            + " ORDER BY start",
            params,
        )
        return [_stored(row) for row in cursor]

    @_locked
    def plans(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT consumer, plan FROM consumers").fetchall())

    @_locked
    def count_rows(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM buckets").fetchone()[0])


def _stored(row: tuple[Any, ...]) -> StoredRow:
    resolution, start, gateway, api, route, consumer, status = row[:7]
    requests, bytes_in, bytes_out, duration, upstream, methods, flags = row[7:]
    cell = Cell(
        requests=float(requests),
        bytes_in=float(bytes_in),
        bytes_out=float(bytes_out),
        duration=decode(duration),
        upstream=decode(upstream),
        methods=json.loads(methods),
        flags=json.loads(flags),
    )
    return StoredRow(int(resolution), int(start), Key(gateway, api, route, consumer, status), cell)
