"""BACnet trend log records kept in the billing journal's SQLite file (table trend_records), so they survive a restart.

The table is created when first needed (`CREATE TABLE IF NOT EXISTS`): an existing journal gains it without any other
change, and `journal verify` keeps checking the readings alone (trend records are not billing data and are not in the
MAC chain). Each trend log keeps at most its buffer size of records: older ones are deleted as new ones are written.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

from .store import JournalError, JournalStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS trend_records (
    log TEXT NOT NULL,      -- '<meter id>/<point>'
    n INTEGER NOT NULL,     -- 1, 2, 3... per log (the BACnet sequence number is n modulo 2^32-1)
    ts REAL NOT NULL,       -- Unix seconds of the record
    kind TEXT NOT NULL,     -- real | unsigned | failure | status
    value TEXT NOT NULL,    -- the number (real, unsigned), 'class/code' (failure), 'disabled,purged,interrupted'
    flags INTEGER NOT NULL, -- status flags: in-alarm 8, fault 4, overridden 2, out-of-service 1; -1: none
    PRIMARY KEY (log, n)
) WITHOUT ROWID
"""


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """One trend log record as stored."""

    n: int
    ts: float
    kind: str
    value: str
    flags: int


def _ensure(store: JournalStore) -> None:
    store.db.execute(SCHEMA)


def load(store: JournalStore, logs: Iterable[tuple[str, int]]) -> dict[str, list[StoredRecord]]:
    """The newest `keep` records of each (log, keep), oldest first. Raises JournalError."""
    out: dict[str, list[StoredRecord]] = {}
    with store._lock:
        try:
            _ensure(store)
            for log, keep in logs:
                rows = store.db.execute(
                    "SELECT n, ts, kind, value, flags FROM trend_records WHERE log = ? ORDER BY n DESC LIMIT ?",
                    (log, keep),
                ).fetchall()
                out[log] = [StoredRecord(int(n), float(ts), k, v, int(f)) for n, ts, k, v, f in reversed(rows)]
        except sqlite3.Error as exc:
            raise JournalError(f"journal {store.path}: trend records: {exc}") from exc
    return out


def append(store: JournalStore, rows: list[tuple[str, StoredRecord]], keep: dict[str, int]) -> None:
    """Write records (log, record) in one transaction and delete what falls out of each log's buffer."""
    if not rows:
        return
    with store._lock:
        try:
            _ensure(store)
            store.db.execute("BEGIN IMMEDIATE")
            store.db.executemany(
                "INSERT OR REPLACE INTO trend_records (log, n, ts, kind, value, flags) VALUES (?, ?, ?, ?, ?, ?)",
                [(log, r.n, r.ts, r.kind, r.value, r.flags) for log, r in rows],
            )
            last: dict[str, int] = {}
            for log, r in rows:
                last[log] = max(last.get(log, 0), r.n)
            store.db.executemany(
                "DELETE FROM trend_records WHERE log = ? AND n <= ?", [(log, n - keep[log]) for log, n in last.items()]
            )
            store.db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                if store.db.in_transaction:
                    store.db.execute("ROLLBACK")
            raise JournalError(f"journal {store.path}: trend records: {exc}") from exc
