"""SQLite store of index readings: append-only, one hash chain per meter, WAL with synchronous=FULL."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    meter TEXT NOT NULL,
    tenant TEXT NOT NULL,
    serial TEXT NOT NULL,
    model TEXT NOT NULL,
    mid INTEGER NOT NULL,
    point TEXT NOT NULL,
    kind TEXT NOT NULL,             -- interval | daily | monthly
    boundary INTEGER NOT NULL,      -- Unix seconds (UTC) of the boundary
    status TEXT NOT NULL,           -- ok | missing
    raw TEXT NOT NULL,              -- raw register words (JSON list), '' when missing
    value TEXT NOT NULL,            -- decoded value as an exact decimal string, '' when missing
    unit TEXT NOT NULL,
    profile TEXT NOT NULL,
    profile_version INTEGER NOT NULL,
    read_time REAL,                 -- Unix seconds of the poll that produced the value
    clock_sync TEXT NOT NULL,       -- gateway clock state when recorded (synchronized | unsynchronized | unknown)
    quality TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS readings_meter ON readings (meter, point, kind, boundary);
CREATE TABLE IF NOT EXISTS anchors (meter TEXT PRIMARY KEY, hash TEXT NOT NULL, pruned_before INTEGER NOT NULL);
"""
FIELDS = (
    "meter",
    "tenant",
    "serial",
    "model",
    "mid",
    "point",
    "kind",
    "boundary",
    "status",
    "raw",
    "value",
    "unit",
    "profile",
    "profile_version",
    "read_time",
    "clock_sync",
    "quality",
)


class JournalError(RuntimeError):
    """The journal cannot be written (disk full, read-only...)."""


@dataclass(frozen=True, slots=True)
class Reading:
    """One row to append."""

    meter: str
    tenant: str
    serial: str
    model: str
    mid: bool
    point: str
    kind: str
    boundary: int
    status: str
    raw: str
    value: str
    unit: str
    profile: str
    profile_version: int
    read_time: float | None
    clock_sync: str
    quality: str


def row_hash(prev: str, fields: dict[str, Any]) -> str:
    """sha256 over the previous hash and the canonical JSON of the row's fields."""
    canon = json.dumps({k: fields[k] for k in FIELDS}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256((prev + "|" + canon).encode()).hexdigest()


class JournalStore:
    """The SQLite file. Rows are only ever inserted; retention prunes old rows and anchors the chain."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), isolation_level=None, timeout=10)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        self._last: dict[str, str] = {}

    def close(self) -> None:
        """Close the database."""
        self.db.close()

    def last_hash(self, meter: str) -> str:
        """Hash of the meter's last row (or its anchor, or '')."""
        if meter not in self._last:
            row = self.db.execute(
                "SELECT hash FROM readings WHERE meter=? ORDER BY id DESC LIMIT 1", (meter,)
            ).fetchone()
            if row is None:
                row = self.db.execute("SELECT hash FROM anchors WHERE meter=?", (meter,)).fetchone()
            self._last[meter] = row[0] if row else ""
        return self._last[meter]

    def last_boundary(self, meter: str, point: str, kind: str) -> int | None:
        """The latest boundary recorded for a meter's point."""
        row = self.db.execute(
            "SELECT MAX(boundary) FROM readings WHERE meter=? AND point=? AND kind=?", (meter, point, kind)
        ).fetchone()
        return row[0] if row and row[0] is not None else None

    def append(self, readings: list[Reading]) -> None:
        """Insert rows in one transaction, each chained to its meter's previous row."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
            pending: dict[str, str] = {}
            for r in readings:
                fields = {k: getattr(r, k) for k in FIELDS}
                fields["mid"] = int(r.mid)
                prev = pending.get(r.meter) or self.last_hash(r.meter)
                h = row_hash(prev, fields)
                self.db.execute(
                    f"INSERT INTO readings ({', '.join(FIELDS)}, prev_hash, hash) VALUES "
                    f"({', '.join('?' * len(FIELDS))}, ?, ?)",
                    [fields[k] for k in FIELDS] + [prev, h],
                )
                pending[r.meter] = h
            self.db.execute("COMMIT")
            self._last.update(pending)
        except sqlite3.Error as exc:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise JournalError(f"journal {self.path}: {exc}") from exc

    def prune(self, before: int) -> int:
        """Delete rows whose boundary is older than `before`, anchoring each meter's chain; returns rows deleted."""
        deleted = 0
        try:
            self.db.execute("BEGIN IMMEDIATE")
            meters = [
                m for (m,) in self.db.execute("SELECT DISTINCT meter FROM readings WHERE boundary < ?", (before,))
            ]
            for m in meters:
                last = self.db.execute(
                    "SELECT id, hash FROM readings WHERE meter=? AND boundary < ? ORDER BY id DESC LIMIT 1", (m, before)
                ).fetchone()
                cur = self.db.execute("DELETE FROM readings WHERE meter=? AND id <= ?", (m, last[0]))
                deleted += cur.rowcount
                self.db.execute(
                    "INSERT OR REPLACE INTO anchors (meter, hash, pruned_before) VALUES (?, ?, ?)", (m, last[1], before)
                )
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise JournalError(f"journal {self.path}: {exc}") from exc
        return deleted

    def rows(
        self, meter: str | None = None, since: int | None = None, until: int | None = None, kind: str | None = None
    ) -> list[dict[str, Any]]:
        """Rows as dicts, in insertion order, filtered."""
        q = "SELECT * FROM readings WHERE 1=1"
        args: list[Any] = []
        for col, op, val in (
            ("meter", "=", meter),
            ("boundary", ">=", since),
            ("boundary", "<=", until),
            ("kind", "=", kind),
        ):
            if val is not None:
                q += f" AND {col} {op} ?"
                args.append(val)
        cur = self.db.execute(q + " ORDER BY id", args)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur]

    def verify(self) -> list[str]:
        """Check every meter's chain; returns the problems found (empty: intact)."""
        problems = []
        anchors = dict(self.db.execute("SELECT meter, hash FROM anchors").fetchall())
        prev: dict[str, str] = {}
        for r in self.rows():
            m = r["meter"]
            expected_prev = prev.get(m, anchors.get(m, ""))
            if r["prev_hash"] != expected_prev:
                problems.append(f"row {r['id']} ({m}): chain broken, a row before it was removed or altered")
            if row_hash(r["prev_hash"], r) != r["hash"]:
                problems.append(f"row {r['id']} ({m} {r['point']} {r['kind']} {r['boundary']}): content altered")
            prev[m] = r["hash"]
        return problems
