"""`journal verify` against tampering, loss and corruption of a real journal file: each case gives its verdict,
verify never modifies a file and never prints a traceback; kill -9 of a writer at random moments leaves a
journal that verifies OK."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meter_gateway.journal.store import (
    FIELDS,
    JournalCorrupt,
    JournalError,
    Reading,
    event,
    open_journal,
    row_mac,
    side_paths,
)
from meter_gateway.journal.verify import verify

T0 = 1_790_000_100 // 900 * 900
YAML = """
gateway: {name: j, timezone: Europe/Paris, state_dir: .}  # state files beside the configuration
buses: [{id: b, type: modbus_rtu, simulated: true}]
meters:
  - {id: a, tenant: T1, bus: b, address: 1, profile: generic, bacnet_instance_base: 1000}
  - {id: c, tenant: T2, bus: b, address: 2, profile: generic, bacnet_instance_base: 1100}
journal: {enabled: true, path: journal.sqlite}
"""


def reading(meter: str, boundary: int, value: str) -> Reading:
    return Reading(
        meter, "T", "S", "Acme X", False, "Active_Energy_Import", "interval", boundary, "ok", "[0, 1]", value,
        "kWh", "generic", 1, boundary - 3.5, "synchronized", "good",
    )  # fmt: skip


def build(path: Path, boundaries: int = 30, start: int = 0) -> None:
    """A journal of two meters, one checkpoint per boundary, written by the gateway's store."""
    store, events, _ = open_journal(path, clock=lambda: float(T0))
    store.append(events)
    for i in range(start, start + boundaries):
        b = T0 + 900 * i
        store.append([reading("a", b, f"{100 + i}.00"), reading("c", b, f"{500 + 2 * i}.00")])
        store.checkpoint()
    store.close()


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("template")
    build(d / "journal.sqlite")
    return d


def digest(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir()) if p.is_file()}


def sql(path: Path, *statements: str) -> None:
    db = sqlite3.connect(path)
    for s in statements:
        db.execute(s)
    db.commit()
    db.close()


def recompute_chain(path: Path, key: bytes, from_seq: int) -> None:
    """What an attacker holding a key would do: rewrite every MAC from a row on."""
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    prev = db.execute("SELECT mac FROM readings WHERE seq = ?", (from_seq - 1,)).fetchone()[0]
    for r in db.execute("SELECT * FROM readings WHERE seq >= ? ORDER BY seq", (from_seq,)).fetchall():
        mac = row_mac(key, prev, dict(r))
        db.execute("UPDATE readings SET prev_mac = ?, mac = ? WHERE seq = ?", (prev, mac, r["seq"]))
        prev = mac
    db.commit()
    db.close()


def t_intact(p: Path) -> None:
    pass


def t_deleted_tail(p: Path) -> None:
    sql(p, "DELETE FROM readings WHERE seq > 50")


def t_deleted_meter(p: Path) -> None:
    sql(p, "DELETE FROM readings WHERE meter = 'c'")


def t_edited_row(p: Path) -> None:
    sql(p, "UPDATE readings SET value = '101.50' WHERE seq = 10")


def t_edited_row_chain_recomputed_without_key(p: Path) -> None:
    sql(p, "UPDATE readings SET value = '101.50' WHERE seq = 10")
    recompute_chain(p, b"a guessed key, not the journal's", 10)


def t_edited_row_chain_recomputed_with_key(p: Path) -> None:
    sql(p, "UPDATE readings SET value = '101.50' WHERE seq = 10")
    recompute_chain(p, bytes.fromhex(side_paths(p)[0].read_text().strip()), 10)


def t_forged_last_row(p: Path) -> None:
    db = sqlite3.connect(p)
    last = db.execute("SELECT * FROM readings ORDER BY seq DESC LIMIT 1").fetchone()
    row = list(last)
    row[0] += 1  # seq
    row[FIELDS.index("boundary")] += 900
    row[FIELDS.index("value")] = "9999.00"
    row[-2], row[-1] = last[-1], hashlib.sha256(b"forged").hexdigest()
    db.execute(f"INSERT INTO readings VALUES ({', '.join('?' * len(row))})", row)
    db.commit()
    db.close()


def t_dropped_table(p: Path) -> None:
    sql(p, "DROP TABLE readings")


def t_zero_byte_file(p: Path) -> None:
    p.write_bytes(b"")


def t_file_deleted(p: Path) -> None:
    p.unlink()


def t_deleted_row_in_the_middle(p: Path) -> None:
    sql(p, "DELETE FROM readings WHERE seq BETWEEN 20 AND 23")


def t_page_corruption(p: Path) -> None:
    data = bytearray(p.read_bytes())
    page = 4096
    for off in range(2 * page + 100, 2 * page + 900):
        data[off] ^= 0x5A  # a damaged sector in a data page
    p.write_bytes(bytes(data))


def t_garbage_file(p: Path) -> None:
    p.write_bytes(os.urandom(20000))


def t_forged_checkpoint(p: Path) -> None:
    cp = side_paths(p)[1]
    lines = cp.read_text().splitlines()
    doc = json.loads(lines[-1])
    doc["seq"] += 10
    lines[-1] = json.dumps(doc)
    cp.write_text("\n".join(lines) + "\n")


def t_key_missing(p: Path) -> None:
    side_paths(p)[0].unlink()


def t_duplicate_boundary(p: Path) -> None:
    sql(
        p,
        "DROP INDEX readings_series",
        "INSERT INTO readings SELECT seq + 1000, recorded_at, meter, tenant, serial, model, mid, point, kind, "
        "boundary, status, raw, '90.00', unit, profile, profile_version, read_time, clock_sync, quality, prev_mac, "
        "mac FROM readings WHERE seq = 20",
    )


def t_forged_anchor(p: Path) -> None:
    """Old rows deleted as if pruned, with an anchor made up by someone without the key."""
    db = sqlite3.connect(p)
    mac = db.execute("SELECT mac FROM readings WHERE seq = 20").fetchone()[0]
    db.execute("DELETE FROM readings WHERE seq <= 20")
    db.execute("INSERT INTO anchor VALUES (1, 20, ?, 'pruned', 'not a signature')", (mac,))
    db.commit()
    db.close()


CASES = [
    (t_intact, "OK", ""),
    (t_deleted_tail, "LOST", "rows seq 51..60 are gone"),
    (t_deleted_meter, "TAMPERED", "meter c: its row seq 60"),
    (t_edited_row, "TAMPERED", "MAC wrong for row seq 10"),
    (t_edited_row_chain_recomputed_without_key, "TAMPERED", "MAC wrong for row seq 10..60"),
    (t_edited_row_chain_recomputed_with_key, "TAMPERED", "differs from the checkpoint"),
    (t_forged_last_row, "TAMPERED", "MAC wrong for row seq 61"),
    (t_dropped_table, "TAMPERED", "'readings' is missing"),
    (t_zero_byte_file, "LOST", "empty file"),
    (t_file_deleted, "LOST", "is missing; checkpoints vouch for 60 rows"),
    (t_deleted_row_in_the_middle, "TAMPERED", "4 row(s) deleted: seq 20..23"),
    (t_page_corruption, "CORRUPT", ""),
    (t_garbage_file, "CORRUPT", "cannot be read as a journal"),
    (t_forged_checkpoint, "TAMPERED", "signature invalid"),
    (t_key_missing, "UNVERIFIED", "is missing: no MAC can be checked"),
    (t_duplicate_boundary, "TAMPERED", "a boundary is recorded once"),
    (t_forged_anchor, "TAMPERED", "anchor (seq 20, pruned) is forged"),
]


@pytest.mark.parametrize(("tamper", "level", "text"), CASES, ids=[c[0].__name__[2:] for c in CASES])
def test_verify_verdict(template, tmp_path, tamper, level, text):
    d = tmp_path / "j"
    shutil.copytree(template, d)
    path = d / "journal.sqlite"
    tamper(path)
    before = digest(d)
    rep = verify(path, "Europe/Paris")
    assert digest(d) == before, "verify modified a file"
    found = [str(f) for f in rep.findings]
    if level == "OK":
        assert found == [] and rep.exit_code == 0 and rep.rows == 60
        return
    assert rep.exit_code == 1, found
    assert any(f.startswith(level) and text in f for f in found), found


def test_verify_cli_reports_without_traceback(template, tmp_path):
    """The command line: findings on stdout, exit 1, no traceback, nothing modified; a healthy journal: exit 0."""
    d = tmp_path / "j"
    shutil.copytree(template, d)
    (d / "gateway.yaml").write_text(YAML)

    def run() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "meter_gateway.cli", "journal", "verify", "-c", str(d / "gateway.yaml")],
            capture_output=True,
            text=True,
            timeout=60,
        )

    res = run()
    assert res.returncode == 0 and res.stdout.startswith("OK:"), res.stdout + res.stderr
    t_page_corruption(d / "journal.sqlite")
    before = digest(d)
    res = run()
    assert res.returncode == 1 and "CORRUPT" in res.stdout and "Traceback" not in res.stdout + res.stderr
    assert digest(d) == before


def test_a_wal_lost_after_a_kill_is_detected(tmp_path):
    """A writer killed with its last transactions still in the WAL, and the WAL then deleted."""
    d = tmp_path / "live"
    d.mkdir()
    store, events, _ = open_journal(d / "journal.sqlite")
    store.append(events)
    for i in range(28):
        store.append([reading("a", T0 + 900 * i, f"{100 + i}.00"), reading("c", T0 + 900 * i, "1.00")])
        store.checkpoint()
    # as after kill -9: the WAL holds the rows; the main file alone is what is left when the WAL is deleted
    lost = tmp_path / "lost"
    lost.mkdir()
    for name in ("journal.sqlite", "journal.key", "journal.checkpoints"):
        shutil.copyfile(d / name, lost / name)
    assert os.path.getsize(d / "journal.sqlite-wal") > 0
    store.close()
    rep = verify(lost / "journal.sqlite")
    assert rep.exit_code == 1 and rep.rows == 0
    assert [str(f) for f in rep.findings] == [
        "LOST: the file holds no journal table (its WAL lost after a crash, or the file replaced); "
        "checkpoints vouch for 56 rows"
    ]


def test_a_crash_with_the_wal_and_no_shm_is_read_from_a_copy(tmp_path):
    """After a real crash the -wal is there and the -shm may not be: verify reads a copy, finds every row."""
    d = tmp_path / "live"
    d.mkdir()
    store, events, _ = open_journal(d / "journal.sqlite")
    store.append(events)
    for i in range(10):
        store.append([reading("a", T0 + 900 * i, f"{100 + i}.00")])
        store.checkpoint()
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    for name in ("journal.sqlite", "journal.sqlite-wal", "journal.key", "journal.checkpoints"):
        shutil.copyfile(d / name, crashed / name)
    store.close()
    before = digest(crashed)
    rep = verify(crashed / "journal.sqlite")
    assert rep.findings == [] and rep.rows == 10
    assert digest(crashed) == before and not (crashed / "journal.sqlite-shm").exists()


def test_index_going_down_is_attention_with_the_rows(tmp_path):
    path = tmp_path / "journal.sqlite"
    store, events, _ = open_journal(path)
    store.append(events)
    for i, v in enumerate(["10.00", "11.00", "12.00", "0.50", "1.50"]):
        store.append([reading("a", T0 + 900 * i, v)])
        store.checkpoint()
    store.close()
    rep = verify(path, "Europe/Paris")
    assert rep.exit_code == 3
    [f] = rep.findings
    assert f.level == "ATTENTION" and "index went down from 12.00" in f.text and "to 0.50" in f.text
    assert "(2026-09-21T16:45:00+02:00, seq 3) to 0.50 (2026-09-21T17:00:00+02:00, seq 4)" in f.text


KILLER = r"""
import os, random, signal, sys, time
from pathlib import Path
from meter_gateway.journal.store import Reading, open_journal

path, rng = Path(sys.argv[1]), random.Random(22)


def writer() -> None:
    store, events, problem = open_journal(path)
    if problem:
        print(problem, file=sys.stderr, flush=True)
        os._exit(3)
    store.append(events)
    b = max(store.last_boundaries.values(), default=1_790_000_100 // 900 * 900)
    os.write(w, b"r")
    while True:
        b += 900
        store.append([
            Reading(m, "T", "S", "X", False, "Active_Energy_Import", "interval", b, "ok", "", str(b // 900), "kWh",
                    "generic", 1, b - 1.0, "unknown", "good")
            for m in ("a", "c", "d")
        ])
        store.checkpoint()


for i in range(100):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        writer()
    os.close(w)
    assert os.read(r, 1) == b"r", "the writer did not start"
    os.close(r)
    time.sleep(rng.uniform(0.0, 0.03))  # somewhere in a transaction, a checkpoint, or between them
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status), f"writer {i} ended by itself: {status}"
print("killed 100")
"""


def test_kill_9_at_random_moments_leaves_a_journal_that_verifies(tmp_path):
    """100 writers (forked from one helper process: cheap) each killed with SIGKILL at a random moment."""
    path = tmp_path / "journal.sqlite"
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-c", KILLER, str(path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "killed 100" in res.stdout, res.stdout + res.stderr
    rep = verify(path)
    print(f"100 kills in {time.monotonic() - t0:.1f} s: {rep.rows} rows, last seq {rep.last_seq}")
    assert rep.findings == [] and rep.exit_code == 0 and rep.rows > 100


def test_events_are_chained_like_readings(tmp_path):
    path = tmp_path / "journal.sqlite"
    store, events, _ = open_journal(path)
    store.append([*events, event("clock_step", T0, "-30.0 s")])
    store.checkpoint()
    store.close()
    sql(path, "UPDATE readings SET value = '+0.0 s' WHERE kind = 'event'")
    assert any("MAC wrong" in f.text for f in verify(path).findings)


def test_a_page_corrupted_journal_is_kept_aside_and_the_chain_continues(template, tmp_path):
    """At start a damaged journal is renamed (bytes untouched) and a new one continues from the last checkpoint:
    a later verify reports the restart, not a false TAMPERED."""
    d = tmp_path / "j"
    shutil.copytree(template, d)
    path = d / "journal.sqlite"
    t_page_corruption(path)
    damaged = path.read_bytes()
    store, events, problem = open_journal(path)
    assert "corrupt" in problem and "kept aside" in problem
    [aside] = [p for p in d.iterdir() if p.name.startswith("journal.sqlite.damaged-")]
    assert aside.read_bytes() == damaged
    store.append(events)
    for i in range(30, 35):
        store.append([reading("a", T0 + 900 * i, f"{100 + i}.00")])
        store.checkpoint()
    assert store.seq == 60 + 1 + 5  # numbering continues after the last checkpoint of the damaged file
    store.close()
    rep = verify(path, "Europe/Paris")
    assert rep.exit_code == 3, rep.findings
    assert [f.level for f in rep.findings] == ["ATTENTION"] and "journal_restarted" in rep.findings[0].text


def test_a_sound_journal_that_cannot_be_opened_is_never_moved_aside(template, tmp_path):
    """Not damage: a WAL that cannot be created (here a folder in its place). The journal stays where it is."""
    d = tmp_path / "j"
    shutil.copytree(template, d)
    path = d / "journal.sqlite"
    (d / "journal.sqlite-wal").mkdir()
    before = path.read_bytes()
    with pytest.raises(JournalError) as err:
        open_journal(path)
    assert not isinstance(err.value, JournalCorrupt)
    assert sorted(p.name for p in d.iterdir() if p.name.startswith("journal.sqlite")) == [
        "journal.sqlite",
        "journal.sqlite-wal",
    ]
    assert path.read_bytes() == before


def test_a_checkpoint_torn_by_a_crash_is_cut_and_the_next_one_starts_clean(tmp_path):
    """kill -9 in the middle of a checkpoint append left a fragment; the next run appended onto it and verify then
    reported a damaged line in the middle of the file (TAMPERED). The torn record is cut at reopen instead."""
    from meter_gateway.journal.store import CheckpointFile, read_checkpoints

    path = tmp_path / "journal.checkpoints"
    good = {"seq": 1, "head": "aa", "time": 1.0, "mac": "x"}
    path.write_bytes(json.dumps(good).encode() + b"\n" + b'{"seq": 2, "head": "b')  # torn second record
    cp = CheckpointFile(path)
    cp.append({"seq": 3, "head": "cc", "time": 3.0, "mac": "y"})
    cp.close()
    docs, bad = read_checkpoints(path)
    assert bad == [] and [d["seq"] for d in docs] == [1, 3]
    assert path.read_bytes().count(b"\n") == 2
