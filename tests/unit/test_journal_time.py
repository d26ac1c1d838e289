"""The journal and the clock (time injected, never the host's): a step back of 30 s or forward of 2 h is recorded as
an event, gives no duplicate boundary, fills no boundary with a later value, flags the export and never holds the
event loop; an index going down (meter replaced or reset) is an event, a flag in exports and a verify notice."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

from meter_gateway.app import Gateway
from meter_gateway.config import parse_config
from meter_gateway.journal.export import export
from meter_gateway.journal.recorder import CATCH_UP_BATCH, MAX_BACKFILL, Recorder
from meter_gateway.journal.store import open_journal
from meter_gateway.journal.verify import verify
from meter_gateway.profiles import load_profiles

TZ = "Europe/Paris"
YAML = f"""
gateway: {{name: j, timezone: {TZ}, state_dir: .}}
buses: [{{id: b, type: modbus_rtu, simulated: true}}]
meters:
  - {{id: a, tenant: T1, bus: b, address: 1, profile: generic, bacnet_instance_base: 1000}}
  - {{id: c, tenant: T2, bus: b, address: 2, profile: generic, bacnet_instance_base: 1100}}
journal: {{enabled: true, interval: INTERVAL, path: journal.sqlite}}
"""
START = 1_790_000_000 // 3600 * 3600


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make(tmp_path: Path, interval: int, wall, mono):
    profiles = load_profiles()
    gw = Gateway(parse_config(YAML.replace("INTERVAL", str(interval)), profiles=profiles), profiles, clock=wall)
    store, events, _ = open_journal(tmp_path / "journal.sqlite", wall)
    store.append(events)
    rec = Recorder(gw.facts, gw.table, store, clock=wall, clock_sync=lambda: "synchronized", monotonic=mono)
    return gw, rec


def poll(gw, t: float, index: dict[str, float]) -> None:
    for mid in ("a", "c"):
        index[mid] += 0.25
        gw.table.set_comm(mid, True)
        gw.table.update(mid, "Active_Energy_Import", round(index[mid], 2), read_time=t)


def duplicates(rec) -> list:
    return rec.store.db.execute(
        "SELECT meter, point, kind, boundary, COUNT(*) FROM readings WHERE kind != 'event' "
        "GROUP BY meter, point, kind, boundary HAVING COUNT(*) > 1"
    ).fetchall()


def test_clock_steps_back_and_forward_under_virtual_time(tmp_path):
    wall, mono = Clock(float(START)), Clock(1000.0)
    gw, rec = make(tmp_path, 900, wall, mono)
    index = {"a": 100.0, "c": 200.0}

    def run(seconds: int) -> None:
        for _ in range(seconds // 60):
            wall.t += 60
            mono.t += 60
            poll(gw, wall.t, index)
            rec.tick(wall.t)

    run(3600)
    wall.t -= 30  # the clock set back 30 s
    run(3600)
    step_at = wall.t
    wall.t += 7200  # the clock set forward 2 h
    run(3600)
    assert duplicates(rec) == []
    events = rec.store.rows(kind="event")
    assert [e["point"] for e in events] == ["clock_step", "clock_step"]
    assert events[0]["value"].startswith("-30.0 s") and events[1]["value"].startswith("+7200.0 s")
    rows = {
        r["boundary"]: r for r in rec.store.rows(meter="a", kind="interval") if r["point"] == "Active_Energy_Import"
    }
    skipped = [b for b in rows if step_at < b < step_at + 7200]
    assert len(skipped) == 8 and all(rows[b]["status"] == "missing" for b in skipped)  # never filled in later
    assert sorted(rows) == list(range(min(rows), max(rows) + 1, 900))  # one row per boundary, none lost
    assert all(r["read_time"] <= b for b, r in rows.items() if r["status"] == "ok")
    rep = verify(rec.store.path, TZ)
    assert rep.exit_code == 0 and [f.level for f in rep.findings] == ["INFO", "INFO"]
    e = export(rec.store, gw.config, min(rows), max(rows))[0]
    assert "clock_step" in e["flags"].split() and len(e["clock_steps"].split()) == 2
    assert e["from"].endswith(("+01:00", "+02:00"))  # ISO dates in the site's time zone


def test_restart_after_the_clock_went_back_records_no_duplicate(tmp_path):
    wall, mono = Clock(float(START)), Clock(0.0)
    gw, rec = make(tmp_path, 60, wall, mono)
    index = {"a": 1.0, "c": 1.0}
    for _ in range(30):
        wall.t += 20
        mono.t += 20
        poll(gw, wall.t, index)
        rec.tick(wall.t)
    last = max(r["boundary"] for r in rec.store.rows(kind="interval"))
    rec.store.close()
    wall.t -= 300  # the gateway restarts with a clock five minutes behind
    gw, rec = make(tmp_path, 60, wall, mono)
    for _ in range(30):
        wall.t += 20
        mono.t += 20
        poll(gw, wall.t, index)
        rec.tick(wall.t)
    assert duplicates(rec) == []
    assert max(r["boundary"] for r in rec.store.rows(kind="interval")) > last
    assert any("behind the last boundary" in e["value"] for e in rec.store.rows(kind="event"))


def test_catching_up_two_hours_of_one_second_boundaries_never_holds_the_loop(tmp_path):
    """Interval 1 s, the injected wall clock jumps 2 h: 7200 boundaries, the last MAX_BACKFILL recorded (missing) in
    bounded batches from a worker thread, the rest as one event, while a heartbeat measures the loop."""
    offset = [0.0]
    wall = lambda: time.time() + offset[0]  # noqa: E731 - the host clock is never touched
    gw, rec = make(tmp_path, 1, wall, time.monotonic)
    index = {"a": 1.0, "c": 1.0}

    async def scenario() -> float:
        worst = 0.0

        async def heartbeat() -> None:
            nonlocal worst
            loop = asyncio.get_running_loop()
            while True:
                t = loop.time()
                await asyncio.sleep(0.01)
                worst = max(worst, loop.time() - t - 0.01)

        async def meters() -> None:
            while True:
                poll(gw, wall(), index)
                await asyncio.sleep(0.2)

        tasks = [asyncio.create_task(c) for c in (heartbeat(), meters(), rec.run())]
        await asyncio.sleep(2.0)
        offset[0] -= 30
        await asyncio.sleep(2.0)
        offset[0] += 7200 + 30
        t_step = time.monotonic()
        for _ in range(300):
            await asyncio.sleep(0.1)
            if rec.next_boundary > wall() - 3:
                break
        print(f"2 h forward at a 1 s interval: caught up in {time.monotonic() - t_step:.1f} s")
        await asyncio.sleep(1.5)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return worst

    worst = asyncio.run(scenario())
    print(f"clock +2 h at 1 s interval: longest event-loop wait {worst * 1000:.0f} ms")
    assert rec.next_boundary > wall() - 5  # caught up
    assert duplicates(rec) == []
    kinds = [e["value"].split(" ")[0] for e in rec.store.rows(kind="event") if e["point"] == "clock_step"]
    assert kinds == ["-30.0", "+7200.0"] or (len(kinds) == 2 and kinds[0].startswith("-3") and kinds[1][0] == "+")
    rows = rec.store.rows(meter="a", kind="interval")
    assert len({r["boundary"] for r in rows if r["point"] == "Active_Energy_Import"}) > MAX_BACKFILL
    [skip] = [e for e in rec.store.rows(kind="event") if e["point"] == "boundaries_skipped"]
    assert int(skip["value"].split()[0]) > 7200 - MAX_BACKFILL - 60
    assert worst < 1.0  # generous: a stall was 29.8 s
    assert CATCH_UP_BATCH < MAX_BACKFILL < 7200


def test_meter_reset_is_an_event_an_export_flag_and_a_verify_notice(tmp_path):
    """Issue 15 item 7: a meter replaced while the gateway was down; export and verify afterwards."""
    wall, mono = Clock(float(START)), Clock(0.0)
    gw, rec = make(tmp_path, 900, wall, mono)
    index = {"a": 500.0, "c": 10.0}
    for _ in range(8 * 15):
        wall.t += 60
        mono.t += 60
        poll(gw, wall.t, index)
        rec.tick(wall.t)
    rec.store.close()
    index["a"] = 2.0  # the new meter starts near zero
    gw, rec = make(tmp_path, 900, wall, mono)
    for _ in range(4 * 15):
        wall.t += 60
        mono.t += 60
        poll(gw, wall.t, index)
        rec.tick(wall.t)
    [ev] = [e for e in rec.store.rows(kind="event") if e["point"] == "index_decrease"]
    assert ev["meter"] == "a" and "Active_Energy_Import" in ev["value"] and "->" in ev["value"]
    rows = [
        r
        for r in rec.store.rows(meter="a", kind="interval")
        if r["point"] == "Active_Energy_Import" and r["status"] == "ok"
    ]
    e = export(rec.store, gw.config, rows[0]["boundary"], rows[-1]["boundary"], tenant="T1")[0]
    assert "index_reset" in e["flags"] and e["index_resets"]
    # consumption: before the reset plus after it, the interval in which it happened left out (unknown)
    values = [Decimal(r["value"]) for r in rows]
    drop = next(i for i in range(1, len(values)) if values[i] < values[i - 1])
    expected = (values[drop - 1] - values[0]) + (values[-1] - values[drop])
    assert Decimal(e["consumption"]) == expected and Decimal(e["consumption"]) > 0
    rep = verify(rec.store.path, TZ)
    assert rep.exit_code == 3
    assert any(f.level == "ATTENTION" and "index went down" in f.text and "meter a" in f.text for f in rep.findings)
    rec.store.close()
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(YAML.replace("INTERVAL", "900"))

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "meter_gateway.cli", *args, "-c", str(cfg)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    res = cli("journal", "verify")
    assert res.returncode == 3 and "ATTENTION" in res.stdout and "index went down" in res.stdout
    res = cli("export", "--from", "2026-09-22", "--to", "2026-09-21")
    assert res.returncode == 2 and "after --to" in res.stderr
    res = cli("export", "--from", "2026-09-21", "--to", "2026-09-22", "--tenant", "T9")
    assert res.returncode == 2 and "unknown tenant 'T9'; tenants: T1, T2" in res.stderr
    res = cli("export", "--from", "0001-01-01", "--to", "9999-12-31")
    assert res.returncode == 2 and "days; at most" in res.stderr
