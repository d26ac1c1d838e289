"""`journal verify`: every check of a journal, read-only, each finding with the rows concerned.

Levels: TAMPERED (rows altered, forged, deleted or rewritten), LOST (rows the checkpoints vouch for are gone),
CORRUPT (the file cannot be read as a journal), UNVERIFIED (the key is missing: MACs not checked) -> exit 1;
ATTENTION (intact, but a billing reader must look: an index that went down, a journal restarted after damage)
-> exit 3; INFO (clock steps, write errors already recorded as missing boundaries) -> exit 0.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from .store import FIELDS, key_id, load_key, read_checkpoints, row_mac, side_paths, sign

FAIL = ("TAMPERED", "LOST", "CORRUPT", "UNVERIFIED")


@dataclass
class Finding:
    """One problem or notice."""

    level: str
    text: str

    def __str__(self) -> str:
        return f"{self.level}: {self.text}"


@dataclass
class Report:
    """What verify found."""

    path: Path
    findings: list[Finding] = field(default_factory=list)
    rows: int = 0
    meters: set[str] = field(default_factory=set)
    missing: int = 0
    last_seq: int = 0
    checkpoints: int = 0

    def add(self, level: str, text: str) -> None:
        """Record a finding."""
        self.findings.append(Finding(level, text))

    @property
    def exit_code(self) -> int:
        """1 on any integrity problem, 3 when intact but something needs a look, else 0."""
        if any(f.level in FAIL for f in self.findings):
            return 1
        return 3 if any(f.level == "ATTENTION" for f in self.findings) else 0


@contextlib.contextmanager
def open_readonly(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection that cannot modify the journal or its side files.

    No -wal: opened immutable. -wal and -shm (a gateway may be writing): mode=ro. A -wal without -shm (after a
    crash): the file and its WAL are copied to a temporary folder and the copy is opened.
    """
    wal, shm = Path(f"{path}-wal"), Path(f"{path}-shm")
    tmp = None
    try:
        if wal.exists() and not shm.exists():
            tmp = tempfile.mkdtemp(prefix="journal-verify-")
            copy = Path(tmp) / path.name
            shutil.copyfile(path, copy)
            shutil.copyfile(wal, Path(f"{copy}-wal"))
            db = sqlite3.connect(str(copy), isolation_level=None)
        elif wal.exists():
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, timeout=10)
        else:
            db = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True, isolation_level=None)
        try:
            yield db
        finally:
            db.close()
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _iso(ts: Any, tz: ZoneInfo) -> str:
    try:
        return datetime.fromtimestamp(int(ts), tz).isoformat()
    except (TypeError, ValueError, OverflowError, OSError):
        return str(ts)


def _ranges(seqs: list[int]) -> str:
    """'3, 7..9' from [3, 7, 8, 9]."""
    out, i = [], 0
    while i < len(seqs):
        j = i
        while j + 1 < len(seqs) and seqs[j + 1] == seqs[j] + 1:
            j += 1
        out.append(str(seqs[i]) if i == j else f"{seqs[i]}..{seqs[j]}")
        i = j + 1
    if len(out) > 12:
        out = [*out[:12], f"... ({len(out) - 12} more)"]
    return ", ".join(out)


def audit_checkpoints(audit: Path | None) -> list[dict[str, Any]]:
    """Checkpoints the gateway also wrote into the audit log."""
    out: list[dict[str, Any]] = []
    if audit is None or not audit.exists():
        return out
    with contextlib.suppress(OSError), open(audit, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if '"journal_checkpoint"' not in line:
                continue
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc, dict) and isinstance(doc.get("checkpoint"), dict):
                    out.append(doc["checkpoint"])
    return out


def verify(path: Path, tz: str = "UTC", audit: Path | None = None) -> Report:
    """Check a journal and its checkpoints; never modifies any file."""
    zone = ZoneInfo(tz)
    rep = Report(path)
    key_path, cp_path = side_paths(path)
    key: bytes | None = None
    try:
        key = load_key(key_path)
    except FileNotFoundError:
        rep.add("UNVERIFIED", f"the key {key_path} is missing: no MAC can be checked")
    except (OSError, ValueError) as exc:
        rep.add("UNVERIFIED", f"the key {key_path} cannot be read ({exc}): no MAC can be checked")

    # -- the checkpoints, from the checkpoint file and the audit log ---------------------------------------
    docs, bad = read_checkpoints(cp_path)
    for b in bad:
        rep.add("TAMPERED", f"{cp_path.name} {b}: not a checkpoint")
    docs += audit_checkpoints(audit)
    cps: dict[int, dict[str, Any]] = {}
    for d in docs:
        if key is not None:
            if d.get("key_id") != key_id(key):
                rep.add("TAMPERED", f"checkpoint seq {d.get('seq')} ({d.get('time')}) was signed with another key")
                continue
            if not isinstance(d.get("mac"), str) or not hmac.compare_digest(d["mac"], sign(key, d)):
                rep.add("TAMPERED", f"checkpoint seq {d.get('seq')} ({d.get('time')}): signature invalid (forged)")
                continue
        with contextlib.suppress(TypeError, ValueError):
            seq = int(d["seq"])
            if seq in cps and cps[seq].get("head") != d.get("head"):
                rep.add("TAMPERED", f"two checkpoints for seq {seq} with different chain heads")
            cps[seq] = d
    rep.checkpoints = len(cps)
    last_cp = cps[max(cps)] if cps else None

    if not path.exists():
        if last_cp is not None:
            rep.add(
                "LOST",
                f"the journal {path} is missing; checkpoints vouch for {last_cp['seq']} rows "
                f"(last at {last_cp.get('time')})",
            )
        else:
            rep.add("CORRUPT", f"no journal at {path} (and no checkpoint)")
        return rep
    if path.stat().st_size == 0:
        rep.add("LOST" if last_cp else "CORRUPT", f"the journal {path} is an empty file (0 bytes)")
        return rep
    try:
        with open_readonly(path) as db:
            _check_db(db, rep, key, cps, zone)
    except sqlite3.DatabaseError as exc:
        rep.add("CORRUPT", f"{path} cannot be read as a journal: {exc}")
    except OSError as exc:
        rep.add("CORRUPT", f"{path} cannot be read: {exc.strerror or exc}")
    return rep


def _check_db(
    db: sqlite3.Connection, rep: Report, key: bytes | None, cps: dict[int, dict[str, Any]], zone: ZoneInfo
) -> None:
    tables = {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    check = [r for (r,) in db.execute("PRAGMA integrity_check(10)")]
    if check != ["ok"]:
        rep.add("CORRUPT", "SQLite integrity check: " + "; ".join(check))
    if not tables:
        rep.add(
            "LOST" if cps else "CORRUPT",
            "the file holds no journal table (its WAL lost after a crash, or the file replaced)"
            + (f"; checkpoints vouch for {max(cps)} rows" if cps else ""),
        )
        return
    for t in ("readings", "anchor", "meta"):
        if t not in tables:
            if t == "meta" and "readings" in tables:
                rep.add("CORRUPT", "a journal of format 1 (unkeyed chain): it cannot prove itself; see docs/journal.md")
                return
            rep.add("TAMPERED", f"the table {t!r} is missing (dropped)")
    if "readings" not in tables:
        if cps:
            rep.add("LOST", f"no readings at all; checkpoints vouch for {max(cps)} rows")
        return
    meta = dict(db.execute("SELECT key, value FROM meta")) if "meta" in tables else {}
    if key is not None and meta and meta.get("key_id") != key_id(key):
        rep.add("TAMPERED", "the journal was not written with this key (meta.key_id differs)")
    anchor = db.execute("SELECT seq, mac, reason, sig FROM anchor").fetchone() if "anchor" in tables else None
    start_seq, head = 0, ""
    if anchor is not None:
        a_seq, a_mac, a_reason, a_sig = anchor
        if key is not None and not hmac.compare_digest(
            str(a_sig), sign(key, {"seq": a_seq, "mac": a_mac, "reason": a_reason})
        ):
            rep.add("TAMPERED", f"the chain anchor (seq {a_seq}, {a_reason}) is forged")
        start_seq, head = int(a_seq), str(a_mac)
        if start_seq in cps and cps[start_seq].get("head") != head:
            rep.add("TAMPERED", f"the chain anchor at seq {start_seq} does not match the checkpoint of that seq")
    _check_rows(db, rep, key, cps, zone, start_seq, head)
    dups = db.execute(
        "SELECT meter, point, kind, boundary, COUNT(*), GROUP_CONCAT(seq) FROM readings WHERE kind != 'event' "
        "GROUP BY meter, point, kind, boundary HAVING COUNT(*) > 1 LIMIT 20"
    ).fetchall()
    for m, p, k, b, n, seqs in dups:
        rep.add("TAMPERED", f"{n} rows for {m} {p} {k} {_iso(b, zone)} (seq {seqs}): a boundary is recorded once")

    # the checkpoints: each vouches for a row (seq, MAC) and for every meter's last row at that time
    last_cp = max((s for s in cps if s > start_seq), default=None)
    if last_cp is not None and last_cp > max(rep.last_seq, start_seq):
        rep.add(
            "LOST",
            f"rows seq {max(rep.last_seq, start_seq) + 1}..{last_cp} are gone: the checkpoint of "
            f"{cps[last_cp].get('time')} vouches for them (tail deleted, or a WAL lost)",
        )
    if last_cp is not None:
        for meter, mseq in (cps[last_cp].get("meters") or {}).items():
            if int(mseq) <= start_seq:
                continue
            row = db.execute("SELECT meter FROM readings WHERE seq = ?", (int(mseq),)).fetchone()
            if row is None or row[0] != meter:
                n = db.execute("SELECT COUNT(*) FROM readings WHERE meter = ?", (meter,)).fetchone()[0]
                rep.add(
                    "TAMPERED",
                    f"meter {meter}: its row seq {mseq} (checkpoint of {cps[last_cp].get('time')}) is gone; "
                    f"{n} rows of this meter remain",
                )


def _check_rows(
    db: sqlite3.Connection,
    rep: Report,
    key: bytes | None,
    cps: dict[int, dict[str, Any]],
    zone: ZoneInfo,
    start_seq: int,
    head: str,
) -> None:
    expected_seq, prev = start_seq + 1, head
    gaps: list[tuple[int, int]] = []
    altered: list[int] = []
    broken: list[int] = []
    last_value: dict[tuple[str, str], tuple[Decimal, int, int]] = {}
    cols = ", ".join(FIELDS) + ", prev_mac, mac"
    cur = db.execute(f"SELECT {cols} FROM readings ORDER BY seq")
    try:
        while batch := cur.fetchmany(5000):
            for row in batch:
                r = dict(zip((*FIELDS, "prev_mac", "mac"), row, strict=True))
                seq = int(r["seq"])
                rep.rows += 1
                if r["meter"]:
                    rep.meters.add(r["meter"])
                if seq < expected_seq:
                    rep.add("TAMPERED", f"row seq {seq} is out of order")
                elif seq > expected_seq:
                    gaps.append((expected_seq, seq - 1))
                    if r["prev_mac"] != prev:
                        prev = r["prev_mac"]  # resynchronise: one finding per gap, not one per following row
                if r["prev_mac"] != prev:
                    broken.append(seq)
                if key is not None and not hmac.compare_digest(str(r["mac"]), row_mac(key, r["prev_mac"], r)):
                    altered.append(seq)
                if seq in cps and cps[seq].get("head") != r["mac"]:
                    rep.add(
                        "TAMPERED",
                        f"row seq {seq} differs from the checkpoint of {cps[seq].get('time')} (chain rewritten)",
                    )
                prev, expected_seq = r["mac"], seq + 1
                rep.last_seq = seq
                _notice(rep, r, zone, last_value)
    except sqlite3.DatabaseError as exc:
        rep.add("CORRUPT", f"rows after seq {rep.last_seq} cannot be read: {exc}")
    if gaps:
        text = ", ".join(str(a) if a == b else f"{a}..{b}" for a, b in gaps[:12])
        text += f", ... ({len(gaps) - 12} more ranges)" if len(gaps) > 12 else ""
        n = sum(b - a + 1 for a, b in gaps)
        rep.add("TAMPERED", f"{n} row(s) deleted: seq {text}")
    if broken:
        rep.add("TAMPERED", f"chain broken at row seq {_ranges(broken)}: a row before it was removed or altered")
    if altered:
        rep.add("TAMPERED", f"MAC wrong for row seq {_ranges(altered)}: content altered or forged")


def _notice(rep: Report, r: dict[str, Any], zone: ZoneInfo, last_value: dict) -> None:
    kind, seq = r["kind"], int(r["seq"])
    if kind == "event":
        what = r["point"]
        text = f"{_iso(r['boundary'], zone)} {what}{' ' + r['meter'] if r['meter'] else ''}: {r['value']} (seq {seq})"
        if what == "journal_missing":
            rep.add("LOST", text)
        elif what == "journal_restarted":
            rep.add("ATTENTION", text)
        elif what != "index_decrease":  # reported below from the readings themselves
            rep.add("INFO", text)
        return
    if r["status"] != "ok":
        rep.missing += 1 if kind == "interval" else 0
        return
    if kind != "interval":
        return
    try:
        v = Decimal(r["value"])
    except (InvalidOperation, TypeError):
        rep.add("CORRUPT", f"row seq {seq}: value {r['value']!r} is not a number")
        return
    k = (r["meter"], r["point"])
    old = last_value.get(k)
    if old is not None and v < old[0]:
        rep.add(
            "ATTENTION",
            f"meter {r['meter']} {r['point']}: index went down from {old[0]} ({_iso(old[1], zone)}, seq {old[2]}) "
            f"to {v} ({_iso(r['boundary'], zone)}, seq {seq}): meter replaced or reset",
        )
    last_value[k] = (v, r["boundary"], seq)
