"""The billing journal under virtual time: boundary readings against the simulator's own energy counters,
tariff splits, missing boundaries, tamper detection, disk full."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from meter_gateway.app import Gateway
from meter_gateway.config import parse_config
from meter_gateway.journal.export import export, is_off_peak
from meter_gateway.journal.recorder import Recorder
from meter_gateway.journal.store import open_journal
from meter_gateway.journal.verify import verify
from meter_gateway.profiles import load_profiles
from meter_gateway.sim.physics import LoadModel

TZ = "Europe/Paris"
YAML = f"""
gateway: {{name: j, timezone: {TZ}}}
buses: [{{id: b, type: modbus_rtu, simulated: true}}]
meters:
  - {{id: a, tenant: T1, serial_number: S-1, bus: b, address: 1, profile: generic, mid: true,
     bacnet_instance_base: 1000}}
  - {{id: c, tenant: T2, bus: b, address: 2, profile: generic, bacnet_instance_base: 1100}}
journal:
  enabled: true
  interval: 900
  tariffs: {{off_peak: ["22:00-06:00"]}}
  alerts: [{{tenant: T1, period: day, kwh: 50}}]
"""
START = int(datetime(2026, 10, 30, 20, 0, tzinfo=ZoneInfo(TZ)).timestamp())  # crosses a month end


class VirtualClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def run_virtual(tmp_path: Path, hours: float, outage: tuple[float, float] | None = None, store_path=None):
    """Poll two simulated loads every 60 virtual seconds for `hours`; returns (gateway, recorder, history)."""
    profiles = load_profiles()
    clock = VirtualClock(float(START))
    gw = Gateway(parse_config(YAML, profiles=profiles), profiles, clock=clock)
    sims = {mid: LoadModel(seed=i, base_kw=20.0 + 10 * i, clock=clock) for i, mid in enumerate(("a", "c"))}
    store, _events, _problem = open_journal(store_path or tmp_path / "journal.sqlite", clock)
    rec = Recorder(gw.facts, gw.table, store, clock=clock, clock_sync=lambda: "synchronized", monotonic=clock)
    history: dict[str, list[tuple[float, Decimal]]] = {"a": [], "c": []}
    rec.tick(clock.t)
    end = START + hours * 3600
    while clock.t < end:
        clock.t += 60
        for mid, sim in sims.items():
            values = sim.advance()
            down = outage is not None and mid == "a" and outage[0] <= clock.t - START < outage[1]
            if down:
                gw.table.set_comm(mid, False, "no reply")
                continue
            gw.table.set_comm(mid, True)
            # the register resolution: 0.01 kWh, truncated as a meter's register is
            raw = int(Decimal(str(values["Active_Energy_Import"])) * 100)
            gw.table.update(mid, "Active_Energy_Import", raw / 100, raw=(raw >> 16, raw & 0xFFFF), read_time=clock.t)
            history[mid].append((clock.t, Decimal(raw) / 100))
        rec.tick(clock.t)
    return gw, rec, history


def index_at(history, boundary: float) -> Decimal:
    """The simulator's counter at the last poll at or before a boundary."""
    return [v for t, v in history if t <= boundary][-1]


def test_boundary_readings_match_the_simulator(tmp_path):
    _gw, rec, history = run_virtual(tmp_path, 30)
    rows = [r for r in rec.store.rows(meter="a", kind="interval") if r["point"] == "Active_Energy_Import"]
    assert len(rows) == 30 * 4  # one per 15 minutes, none missing
    for r in rows:
        assert r["status"] == "ok" and r["point"] == "Active_Energy_Import"
        assert Decimal(r["value"]) == index_at(history["a"], r["boundary"])
        assert r["boundary"] % 900 == 0 and r["read_time"] <= r["boundary"]
        assert (r["serial"], r["mid"], r["tenant"], r["unit"]) == ("S-1", 1, "T1", "kWh")
        assert r["profile"] == "generic" and r["clock_sync"] == "synchronized" and r["raw"].startswith("[")
    daily = [r for r in rec.store.rows(meter="a", kind="daily") if r["point"] == "Active_Energy_Import"]
    monthly = [r for r in rec.store.rows(meter="a", kind="monthly") if r["point"] == "Active_Energy_Import"]
    midnights = [datetime.fromtimestamp(r["boundary"], ZoneInfo(TZ)) for r in daily]
    assert [(d.hour, d.minute) for d in midnights] == [(0, 0), (0, 0)]  # Oct 31 and Nov 1
    assert [datetime.fromtimestamp(r["boundary"], ZoneInfo(TZ)).day for r in monthly] == [1]
    assert verify(rec.store.path).findings == []


def test_export_and_tariff_split_against_the_simulator(tmp_path):
    gw, rec, history = run_virtual(tmp_path, 30)
    start = int(datetime(2026, 10, 31, 0, 0, tzinfo=ZoneInfo(TZ)).timestamp())
    end = int(datetime(2026, 11, 1, 0, 0, tzinfo=ZoneInfo(TZ)).timestamp())
    out = {r["meter"]: r for r in export(rec.store, gw.config, start, end)}
    a = out["a"]
    assert Decimal(a["opening_index"]) == index_at(history["a"], start)
    assert Decimal(a["closing_index"]) == index_at(history["a"], end)
    assert Decimal(a["consumption"]) == index_at(history["a"], end) - index_at(history["a"], start)
    # the split, computed here from the simulator's history, interval by interval
    tz = ZoneInfo(TZ)
    peak = off = Decimal(0)
    for b in range(start, end, 900):
        delta = index_at(history["a"], b + 900) - index_at(history["a"], b)
        hour = datetime.fromtimestamp(b, tz).hour
        if hour >= 22 or hour < 6:
            off += delta
        else:
            peak += delta
    assert Decimal(a["off_peak_kwh"]) == off and Decimal(a["peak_kwh"]) == peak
    assert Decimal(a["unallocated_kwh"]) == 0 and a["missing_boundaries"] == 0
    best = max(index_at(history["a"], b + 900) - index_at(history["a"], b) for b in range(start, end, 900))
    assert Decimal(a["peak_demand_kw"]) == (best * 4).quantize(Decimal("0.001"))
    assert [r["meter"] for r in export(rec.store, gw.config, start, end, tenant="T2")] == ["c"]


def test_missing_boundaries_are_recorded_never_invented(tmp_path):
    gw, rec, _history = run_virtual(tmp_path, 6, outage=(3600, 3 * 3600))
    rows = [r for r in rec.store.rows(meter="a", kind="interval") if r["point"] == "Active_Energy_Import"]
    missing = [r for r in rows if r["status"] == "missing"]
    assert missing and all(r["value"] == "" and r["quality"] == "missing" for r in missing)
    start, end = rows[0]["boundary"], rows[-1]["boundary"]
    e = export(rec.store, gw.config, start, end)[0]
    total = Decimal(e["closing_index"]) - Decimal(e["opening_index"])
    assert Decimal(e["peak_kwh"]) + Decimal(e["off_peak_kwh"]) + Decimal(e["unallocated_kwh"]) == total
    assert Decimal(e["unallocated_kwh"]) > 0 and e["missing_boundaries"] == len(missing)


def test_consumption_alert(tmp_path):
    _gw, rec, _ = run_virtual(tmp_path, 30)
    oct31 = datetime(2026, 10, 31, 12, 0, tzinfo=ZoneInfo(TZ)).timestamp()
    alerts = rec.active_alerts(oct31)
    assert [(s, n, p) for s, n, p, _ in alerts] == [("tenant", "T1", "day")]
    assert all(kwh > 50 for *_, kwh in alerts)


def test_tampering_and_loss_are_detected(tmp_path):
    path = tmp_path / "journal.sqlite"
    _gw, rec, _ = run_virtual(tmp_path, 4, store_path=path)
    rec.store.close()
    db = sqlite3.connect(path)
    db.execute("UPDATE readings SET value = '1.00' WHERE seq = 7")
    db.commit()
    assert any("seq 7" in str(f) and "altered" in str(f) for f in verify(path).findings)
    db.execute("DELETE FROM readings WHERE seq = 12")
    db.commit()
    db.close()
    assert any("1 row(s) deleted: seq 12" in str(f) for f in verify(path).findings)


def test_retention_prunes_and_keeps_the_chain_verifiable(tmp_path):
    _gw, rec, _ = run_virtual(tmp_path, 6)
    before = len(rec.store.rows())
    deleted = rec.store.prune(START + 3 * 3600)
    assert 0 < deleted < before and verify(rec.store.path).findings == []


def test_disk_full_is_an_alarm_not_a_crash(tmp_path):
    gw, rec, _ = run_virtual(tmp_path, 1)
    pages = rec.store.db.execute("PRAGMA page_count").fetchone()[0]
    rec.store.db.execute(f"PRAGMA max_page_count = {pages}")  # the real SQLITE_FULL once the free space is used
    boundary = START + 3600 + 900
    index = gw.table.get("a", "Active_Energy_Import").value

    def record(b: int) -> None:
        nonlocal index
        index += 1.0
        for mid in ("a", "c"):
            gw.table.update(mid, "Active_Energy_Import", index, read_time=b)  # a good reading at the boundary
        rec.record(b, b)

    for _ in range(500):
        record(boundary)
        boundary += 900
        if rec.error:
            break
    assert "full" in rec.error and rec.disk_full and rec.state == "degraded"
    failed = boundary - 900  # its readings were taken but could not be written
    rec.store.db.execute("PRAGMA max_page_count = 1073741823")
    record(boundary)
    assert rec.error == "" and not rec.disk_full
    rows = [r for r in rec.store.rows(meter="a", kind="interval") if r["point"] == "Active_Energy_Import"]
    at = {r["boundary"]: r["status"] for r in rows}
    assert at[failed] == "missing" and at[boundary] == "ok"  # recorded as missing once space returned
    rep = verify(rec.store.path)  # the failed transaction left nothing half-written
    assert rep.exit_code == 0 and [f.level for f in rep.findings] == ["INFO"]
    assert "write_error" in rep.findings[0].text and "recorded missing" in rep.findings[0].text


def test_off_peak_ranges_wrap_midnight():
    tz = ZoneInfo(TZ)
    ranges = [(datetime(2026, 1, 1, 22).time(), datetime(2026, 1, 1, 6).time())]
    at = lambda h: int(datetime(2026, 11, 2, h, 0, tzinfo=tz).timestamp())  # noqa: E731
    assert is_off_peak(at(23), tz, ranges) and is_off_peak(at(3), tz, ranges) and not is_off_peak(at(12), tz, ranges)


def test_cli_verify_and_export(tmp_path):
    path = tmp_path / "var" / "journal.sqlite"
    path.parent.mkdir()
    _gw, rec, _ = run_virtual(tmp_path, 30, store_path=path)
    rec.store.close()
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(YAML.replace("  interval: 900", "  interval: 900\n  path: var/journal.sqlite"))
    res = subprocess.run(
        [sys.executable, "-m", "meter_gateway.cli", "journal", "verify", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0 and "chains intact" in res.stdout, res.stdout + res.stderr
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "meter_gateway.cli",
            "export",
            "-c",
            str(cfg),
            "--from",
            "2026-10-31",
            "--to",
            "2026-11-01",
            "--format",
            "csv",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0 and res.stdout.splitlines()[0].startswith("meter,tenant,serial")
    assert len(res.stdout.splitlines()) == 3


@pytest.mark.parametrize("bad", ["yesterday", "2026-13-01"])
def test_cli_export_bad_date_is_a_clear_error(tmp_path, bad):
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(YAML)
    res = subprocess.run(
        [sys.executable, "-m", "meter_gateway.cli", "export", "-c", str(cfg), "--from", bad, "--to", "2026-11-01"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2 and "is not a date" in res.stderr
