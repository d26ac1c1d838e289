"""SQLite store of index readings: append-only, one keyed MAC chain over every row, signed checkpoints.

Every row carries a sequence number (`seq`, no gaps), the wall clock when it was written (`recorded_at`) and
`mac = HMAC-SHA256(key, previous mac | canonical row)`. The key lives in a separate 0600 file beside the journal.
After each committed boundary a signed checkpoint (seq, chain head, time, last seq per meter) is appended to a
second file (`<journal>.checkpoints`), so a deleted tail, a deleted meter, a deleted or emptied file and recomputed
chains are detected by `journal verify` (journal/verify.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..appendfile import cut_torn_tail

log = logging.getLogger(__name__)
FORMAT = "2"  # journal format: 2 = keyed MAC chain with sequence numbers (1 = per-meter unkeyed sha256)
SCHEMA = """
CREATE TABLE readings (
    seq INTEGER PRIMARY KEY,        -- monotonic sequence number, no gaps (a gap is a deleted row)
    recorded_at REAL NOT NULL,      -- wall clock (Unix seconds) when the row was written
    meter TEXT NOT NULL,            -- '' for gateway-level events
    tenant TEXT NOT NULL,
    serial TEXT NOT NULL,
    model TEXT NOT NULL,
    mid INTEGER NOT NULL,
    point TEXT NOT NULL,            -- catalogue point, or the event type for kind='event'
    kind TEXT NOT NULL,             -- interval | daily | monthly | event
    boundary INTEGER NOT NULL,      -- Unix seconds (UTC) of the boundary (of the event for kind='event')
    status TEXT NOT NULL,           -- ok | missing | event
    raw TEXT NOT NULL,              -- raw register words (JSON list), '' when missing
    value TEXT NOT NULL,            -- decoded value as an exact decimal string ('' when missing), event detail
    unit TEXT NOT NULL,
    profile TEXT NOT NULL,
    profile_version INTEGER NOT NULL,
    read_time REAL,                 -- Unix seconds of the poll that produced the value
    clock_sync TEXT NOT NULL,       -- gateway clock state when recorded (synchronized | unsynchronized | unknown)
    quality TEXT NOT NULL,
    prev_mac TEXT NOT NULL,
    mac TEXT NOT NULL
);
CREATE UNIQUE INDEX readings_series ON readings (meter, point, kind, boundary) WHERE kind != 'event';
CREATE INDEX readings_kind ON readings (kind, boundary);
CREATE TABLE anchor (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,           -- rows up to this seq are not in this file (pruned, or in a file moved aside)
    mac TEXT NOT NULL,              -- chain head at that seq
    reason TEXT NOT NULL,
    sig TEXT NOT NULL
);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
FIELDS = (
    "seq",
    "recorded_at",
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
DATA_FIELDS = FIELDS[2:]
SQLITE_CORRUPT, SQLITE_NOTADB = 11, 26  # primary result codes of a damaged file


class JournalError(RuntimeError):
    """The journal cannot be written (disk full, read-only...)."""


class JournalCorrupt(JournalError):
    """The file is not a journal this gateway can continue: corrupt, another format or another key."""


@dataclass(frozen=True, slots=True)
class Reading:
    """One row to append (an index reading, a missing boundary or an event)."""

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


def event(kind: str, at: int, detail: str, meter: str = "", clock_sync: str = "unknown") -> Reading:
    """A journal event row (clock_step, index_decrease, write_error, journal_restarted, ...)."""
    return Reading(meter, "", "", "", False, kind, "event", at, "event", "", detail, "", "", 0, None, clock_sync, "")


def _canon(d: dict[str, Any]) -> bytes:
    return json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def row_mac(key: bytes, prev: str, fields: dict[str, Any]) -> str:
    """HMAC-SHA256 over the previous MAC and the canonical JSON of the row's fields."""
    d = {k: fields[k] for k in FIELDS}
    for k in ("seq", "mid", "boundary", "profile_version"):  # as SQLite gives them back: INTEGER and REAL columns
        d[k] = int(d[k])
    for k in ("recorded_at", "read_time"):
        d[k] = None if d[k] is None else float(d[k])
    return hmac.new(key, prev.encode() + b"|" + _canon(d), hashlib.sha256).hexdigest()


def sign(key: bytes, doc: dict[str, Any]) -> str:
    """HMAC-SHA256 of a document (checkpoint, anchor) without its own 'mac' field."""
    return hmac.new(key, _canon({k: v for k, v in doc.items() if k != "mac"}), hashlib.sha256).hexdigest()


def key_id(key: bytes) -> str:
    """A public fingerprint of the key, stored in the journal to tell a wrong key from tampering."""
    return hmac.new(key, b"meter-gateway journal key id", hashlib.sha256).hexdigest()[:16]


def side_paths(path: Path) -> tuple[Path, Path]:
    """(key file, checkpoint file) beside the journal."""
    return path.with_suffix(".key"), path.with_suffix(".checkpoints")


def load_key(path: Path) -> bytes:
    """The journal key (raises OSError when it cannot be read, ValueError when malformed)."""
    text = path.read_text(encoding="ascii").strip()
    key = bytes.fromhex(text)
    if len(key) < 32:
        raise ValueError(f"{path}: the key is shorter than 32 bytes")
    return key


def load_or_create_key(path: Path) -> tuple[bytes, bool]:
    """The key, created (0600, 32 random bytes) when the file does not exist; returns (key, created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_key(path), False
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(secrets.token_hex(32) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    _fsync_dir(path.parent)
    return load_key(path), True


def _fsync_dir(d: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_checkpoints(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Checkpoint documents of a JSON-lines file, and the lines that are not one (with line numbers)."""
    docs, bad = [], []
    if not path.exists():
        return docs, bad
    with open(path, "rb") as fh:
        lines = fh.read().split(b"\n")
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
            if not isinstance(doc, dict) or "seq" not in doc or "head" not in doc:
                raise ValueError
            docs.append(doc)
        except ValueError:
            if i == len(lines):  # a torn last line: the gateway was killed while appending it
                continue
            bad.append(f"line {i}")
    return docs, bad


class CheckpointFile:
    """Append-only JSON-lines file of signed checkpoints (0640), synced per line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o640)
        torn = cut_torn_tail(fd)  # a checkpoint torn by a crash was never complete: it goes, the next starts clean
        if torn:
            log.warning(
                "checkpoint file %s: removed an incomplete last record (%d bytes, written when the gateway stopped)",
                path,
                torn,
            )
        self._fh = os.fdopen(fd, "ab")

    def append(self, doc: dict[str, Any]) -> None:
        """Write one checkpoint durably."""
        self._fh.write(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() + b"\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        """Close the file."""
        self._fh.close()


class JournalStore:
    """The SQLite file. Rows are only ever inserted; retention prunes old rows and anchors the chain.

    Thread-safe (one lock): the recorder writes from a worker thread.
    """

    def __init__(
        self,
        path: Path,
        key: bytes,
        anchor: tuple[int, str, str] | None = None,
        clock=time.time,
    ) -> None:
        self.path = path
        self.key = key
        self.clock = clock
        self._lock = threading.RLock()
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not path.exists() or path.stat().st_size == 0
        if fresh and path.exists():
            raise JournalCorrupt(f"{path} is an empty file")
        if fresh:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            os.close(fd)
        try:
            self.db = sqlite3.connect(str(path), isolation_level=None, timeout=10, check_same_thread=False)
        except sqlite3.Error as exc:
            raise JournalError(f"journal {path}: {exc}") from exc
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            if fresh:
                q = lambda v: "'" + str(v).replace("'", "''") + "'"  # noqa: E731 - literals of our own values
                script = f"BEGIN IMMEDIATE;\n{SCHEMA}\nINSERT INTO meta (key, value) VALUES ('format', {q(FORMAT)}), "
                script += f"('key_id', {q(key_id(key))}), ('created', {q(int(clock()))});\n"
                if anchor is not None:
                    seq, mac, reason = anchor
                    sig = sign(key, {"seq": seq, "mac": mac, "reason": reason})
                    script += f"INSERT INTO anchor VALUES (1, {int(seq)}, {q(mac)}, {q(reason)}, {q(sig)});\n"
                self.db.executescript(script + "COMMIT;")
            else:
                self._check_existing()
            self._load_state()
        except sqlite3.Error as exc:
            self.db.close()
            if (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB):
                raise JournalCorrupt(f"{path}: {exc}") from exc
            # locked, read-only, I/O error...: the file may be sound; it is never moved aside for that
            raise JournalError(f"journal {path}: {exc}") from exc
        except JournalError:
            self.db.close()
            raise
        self.checkpoints = CheckpointFile(side_paths(path)[1])

    def _check_existing(self) -> None:
        tables = {n for (n,) in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "readings" in tables and "meta" not in tables:
            raise JournalCorrupt(f"{self.path} is a journal of format 1 (unkeyed chain)")
        if not {"readings", "anchor", "meta"} <= tables:
            raise JournalCorrupt(f"{self.path} lacks the journal tables ({', '.join(sorted(tables)) or 'none'})")
        meta = dict(self.db.execute("SELECT key, value FROM meta"))
        if meta.get("format") != FORMAT:
            raise JournalCorrupt(f"{self.path} is a journal of format {meta.get('format')}, not {FORMAT}")
        if meta.get("key_id") != key_id(self.key):
            raise JournalCorrupt(f"{self.path} was written with another key than {side_paths(self.path)[0]}")
        check = [r for (r,) in self.db.execute("PRAGMA quick_check(5)")]
        if check != ["ok"]:
            raise JournalCorrupt(f"{self.path} is corrupt: {'; '.join(check)}")

    def _load_state(self) -> None:
        row = self.db.execute("SELECT seq, mac FROM readings ORDER BY seq DESC LIMIT 1").fetchone()
        if row is None:
            row = self.db.execute("SELECT seq, mac FROM anchor WHERE id = 1").fetchone()
        self.seq, self.head = (int(row[0]), row[1]) if row else (0, "")
        #: (meter, point, kind) -> last boundary recorded: nothing earlier or equal is ever appended again
        self.last_boundaries: dict[tuple[str, str, str], int] = {
            (m, p, k): b
            for m, p, k, b in self.db.execute(
                "SELECT meter, point, kind, MAX(boundary) FROM readings WHERE kind != 'event' "
                "GROUP BY meter, point, kind"
            )
        }
        self.meter_last_seq: dict[str, int] = dict(
            self.db.execute("SELECT meter, MAX(seq) FROM readings WHERE meter != '' GROUP BY meter")
        )
        #: (meter, point) -> last good interval value (decimal string), to notice an index going down
        self.last_values: dict[tuple[str, str], str] = {}
        for m, p in self.db.execute("SELECT DISTINCT meter, point FROM readings WHERE kind = 'interval'").fetchall():
            v = self.db.execute(
                "SELECT value FROM readings WHERE meter=? AND point=? AND kind='interval' AND status='ok' "
                "ORDER BY boundary DESC LIMIT 1",
                (m, p),
            ).fetchone()
            if v is not None:
                self.last_values[(m, p)] = v[0]

    def close(self) -> None:
        """Close the database and the checkpoint file."""
        with self._lock:
            self.db.close()
            self.checkpoints.close()

    def last_boundary(self, meter: str, point: str, kind: str) -> int | None:
        """The latest boundary recorded for a meter's point."""
        return self.last_boundaries.get((meter, point, kind))

    def append(self, readings: list[Reading]) -> int:
        """Insert rows in one transaction, chained; rows at or before their series' last boundary are dropped.

        Returns the number of rows written. Raises JournalError (nothing written) on any database error.
        """
        with self._lock:
            seq, head = self.seq, self.head
            last = dict()
            meters: dict[str, int] = {}
            values: dict[tuple[str, str], str] = {}
            rows = []
            now = float(self.clock())
            for r in readings:
                if r.kind != "event":
                    k = (r.meter, r.point, r.kind)
                    prev_b = last.get(k, self.last_boundaries.get(k))
                    if prev_b is not None and r.boundary <= prev_b:
                        continue  # never a duplicate or an earlier boundary (clock set back)
                    last[k] = r.boundary
                    if r.kind == "interval" and r.status == "ok":
                        values[(r.meter, r.point)] = r.value
                seq += 1
                fields = {k: getattr(r, k) for k in DATA_FIELDS}
                fields.update(seq=seq, recorded_at=now, mid=int(r.mid))
                mac = row_mac(self.key, head, fields)
                rows.append([fields[k] for k in FIELDS] + [head, mac])
                head = mac
                if r.meter:
                    meters[r.meter] = seq
            if not rows:
                return 0
            try:
                self.db.execute("BEGIN IMMEDIATE")
                self.db.executemany(
                    f"INSERT INTO readings ({', '.join(FIELDS)}, prev_mac, mac) VALUES "
                    f"({', '.join('?' * (len(FIELDS) + 2))})",
                    rows,
                )
                self.db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self.db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self.db.execute("ROLLBACK")
                raise JournalError(f"journal {self.path}: {exc}") from exc
            self.seq, self.head = seq, head
            self.last_boundaries.update(last)
            self.meter_last_seq.update(meters)
            self.last_values.update(values)
            return len(rows)

    def checkpoint(self) -> dict[str, Any]:
        """A signed checkpoint of the chain head, appended durably to the checkpoint file; returns it."""
        with self._lock:
            now = float(self.clock())
            doc: dict[str, Any] = {
                "seq": self.seq,
                "head": self.head,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                "time_unix": now,
                "meters": dict(sorted(self.meter_last_seq.items())),
                "key_id": key_id(self.key),
            }
            doc["mac"] = sign(self.key, doc)
            try:
                self.checkpoints.append(doc)
            except OSError as exc:
                raise JournalError(f"checkpoint file {self.checkpoints.path}: {exc.strerror or exc}") from exc
            return doc

    def prune(self, before: int) -> int:
        """Delete rows whose boundary is older than `before` (a prefix of the chain) and anchor the chain."""
        with self._lock:
            try:
                row = self.db.execute(
                    "SELECT MIN(seq) FROM readings WHERE boundary >= ? OR kind = 'event' AND boundary >= ?",
                    (before, before),
                ).fetchone()
                keep_from = row[0] if row and row[0] is not None else self.seq + 1
                cut = self.db.execute(
                    "SELECT seq, mac FROM readings WHERE seq < ? ORDER BY seq DESC LIMIT 1", (keep_from,)
                ).fetchone()
                if cut is None:
                    return 0
                self.db.execute("BEGIN IMMEDIATE")
                deleted = self.db.execute("DELETE FROM readings WHERE seq <= ?", (cut[0],)).rowcount
                doc = {"seq": cut[0], "mac": cut[1], "reason": f"pruned before {before}"}
                self.db.execute(
                    "INSERT OR REPLACE INTO anchor (id, seq, mac, reason, sig) VALUES (1, ?, ?, ?, ?)",
                    (cut[0], cut[1], doc["reason"], sign(self.key, doc)),
                )
                self.db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self.db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self.db.execute("ROLLBACK")
                raise JournalError(f"journal {self.path}: {exc}") from exc
            return deleted

    def rows(
        self, meter: str | None = None, since: int | None = None, until: int | None = None, kind: str | None = None
    ) -> list[dict[str, Any]]:
        """Rows as dicts, in sequence order, filtered."""
        with self._lock:
            return query_rows(self.db, meter, since, until, kind)


def query_rows(
    db: sqlite3.Connection,
    meter: str | None = None,
    since: int | None = None,
    until: int | None = None,
    kind: str | None = None,
    point: str | None = None,
) -> list[dict[str, Any]]:
    """Rows of a journal connection as dicts, in sequence order, filtered."""
    return list(iter_rows(db, meter, since, until, kind, point))


def iter_rows(
    db: sqlite3.Connection,
    meter: str | None = None,
    since: int | None = None,
    until: int | None = None,
    kind: str | None = None,
    point: str | None = None,
):
    """Rows of a journal connection as dicts, in sequence order, filtered, fetched in batches."""
    q = "SELECT * FROM readings WHERE 1=1"
    args: list[Any] = []
    for col, op, val in (
        ("meter", "=", meter),
        ("boundary", ">=", since),
        ("boundary", "<=", until),
        ("kind", "=", kind),
        ("point", "=", point),
    ):
        if val is not None:
            q += f" AND {col} {op} ?"
            args.append(val)
    cur = db.execute(q + " ORDER BY seq", args)
    names = [d[0] for d in cur.description]
    while batch := cur.fetchmany(2000):
        for row in batch:
            yield dict(zip(names, row, strict=True))


def move_aside(path: Path, why: str, clock=time.time) -> Path:
    """Rename a damaged journal (and its -wal/-shm) to `<name>.<why>-<UTC time>`; never overwrites anything."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(clock()))
    n = 0
    while True:
        aside = path.with_name(f"{path.name}.{why}-{stamp}" + (f".{n}" if n else ""))
        if not aside.exists():
            break
        n += 1
    os.rename(path, aside)
    for ext in ("-wal", "-shm"):
        side = Path(str(path) + ext)
        if side.exists():
            os.rename(side, Path(str(aside) + ext))
    _fsync_dir(path.parent)
    return aside


def last_checkpoint(path: Path, key: bytes) -> dict[str, Any] | None:
    """The valid checkpoint with the highest sequence number in a checkpoint file, or None."""
    docs, _bad = read_checkpoints(path)
    good = [d for d in docs if isinstance(d.get("mac"), str) and hmac.compare_digest(d["mac"], sign(key, d))]
    return max(good, key=lambda d: d["seq"], default=None)


def open_journal(path: Path, clock=time.time) -> tuple[JournalStore, list[Reading], str]:
    """Open (or create) the journal for writing.

    A damaged file (corrupt, empty, another format or key) is renamed aside, never overwritten, and a new journal
    continues the chain from the last checkpoint. A file that is gone although checkpoints exist is continued the
    same way. Returns (store, events to append, problem: '' when the file opened cleanly). Raises JournalError
    (or OSError) when no journal can be written at all.
    """
    key_path, cp_path = side_paths(path)
    key, created = load_or_create_key(key_path)
    if created:
        log.info("journal: created the key %s (0600): keep it with the journal, verify needs it", key_path)
    cp = last_checkpoint(cp_path, key)
    if not path.exists() and cp is not None:
        problem = (
            f"journal {path.name} is missing (last checkpoint seq {cp['seq']} at {cp['time']}); a new one continues"
        )
        anchor = (int(cp["seq"]), str(cp["head"]), "previous journal missing")
        store = JournalStore(path, key, anchor=anchor, clock=clock)
        return store, [event("journal_missing", int(clock()), problem)], problem
    try:
        return JournalStore(path, key, clock=clock), [], ""
    except JournalCorrupt as exc:
        aside = move_aside(path, "format1" if "format 1" in str(exc) else "damaged", clock)
        problem = f"{exc}; kept aside as {aside.name}, a new journal continues the chain"
        if cp is None and cp_path.exists():  # checkpoints of the old journal (another key): kept with it
            os.rename(cp_path, aside.with_name(aside.name + ".checkpoints"))
            problem = f"{exc}; kept aside as {aside.name} (with its checkpoints), a new journal starts"
    anchor = (int(cp["seq"]), str(cp["head"]), f"continues after {aside.name}") if cp else None
    store = JournalStore(path, key, anchor=anchor, clock=clock)
    return store, [event("journal_restarted", int(clock()), problem)], problem
