"""The journal in a real gateway: SIGKILL during journal writes loses at most the reading in flight; the export
API over HTTP."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from helpers import wait_for

YAML = """
gateway: {name: journal-test, timezone: Europe/Paris}
buses: [{id: rtu, type: modbus_rtu, simulated: true, timeout: 0.3}]
meters:
  - {id: a, tenant: T1, bus: rtu, address: 1, profile: generic, bacnet_instance_base: 1000}
  - {id: b, tenant: T2, bus: rtu, address: 2, profile: eastron_sdm630, mid: true, bacnet_instance_base: 1100}
upstream: {bacnet: {enabled: false}, modbus_tcp: {enabled: false}, prometheus: {enabled: PROM, bind: 127.0.0.1,
           port: 0}}
journal: {enabled: true, interval: INTERVAL, path: journal.sqlite}
"""


def boundaries(db: Path) -> list[tuple[int, str]]:
    """(boundary, status) of meter a's import register, read without disturbing the writer."""
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute(
            "SELECT boundary, status FROM readings WHERE meter='a' AND point='Active_Energy_Import' "
            "AND kind='interval' ORDER BY boundary"
        ).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


def start(cfg: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "meter_gateway.cli", "run", "-c", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_rows(db: Path, n: int, timeout: float = 40, after: float = 0.0) -> None:
    """Wait until the journal has `n` rows of meter a's import register (only 'ok' rows after `after` if given)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        rows = boundaries(db)
        if after:
            rows = [(b, status) for b, status in rows if b > after and status == "ok"]
        if len(rows) >= n:
            return
        time.sleep(0.2)
    raise AssertionError(f"fewer than {n} journal rows after {timeout} s: {boundaries(db)}")


def test_sigkill_loses_at_most_the_reading_in_flight(tmp_path: Path):
    interval = 4
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(YAML.replace("PROM", "false").replace("INTERVAL", str(interval)))
    db = tmp_path / "var" / "journal.sqlite"  # relative paths: in the state directory, var/ beside the config
    p = start(cfg)
    try:
        wait_rows(db, 2)
        time.sleep(1.7)  # kill somewhere inside an interval, while the gateway writes
        killed_at = time.time()
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=10)
        kept = boundaries(db)
        p = start(cfg)
        wait_rows(db, len(kept) + 1)  # the new process has caught up: the boundaries it missed are written
        back_at = time.time()
        wait_rows(db, 1, after=back_at)  # and records again
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=20)
    rows = boundaries(db)
    assert rows[: len(kept)] == kept, rows  # nothing written before the kill is lost or changed
    steps = {b2 - b1 for (b1, _), (b2, _) in itertools.pairwise(rows)}
    assert steps == {interval}, rows  # every boundary is there, recorded or marked missing
    # missing: only the reading in flight at the kill and the boundaries that passed while no gateway ran (one on
    # a quiet machine; more when the restart itself takes longer than an interval, as on a loaded one)
    missing = [b for b, status in rows if status == "missing"]
    assert all(killed_at - interval < b <= back_at for b in missing), (killed_at, back_at, rows)
    res = subprocess.run(
        [sys.executable, "-m", "meter_gateway.cli", "journal", "verify", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0 and "chains intact" in res.stdout, res.stdout + res.stderr


async def test_export_over_http(gateways, tmp_path):
    gw = await gateways(
        YAML.replace("PROM", "true")
        .replace("INTERVAL", "1")
        .replace("path: journal.sqlite", f"path: {tmp_path / 'j.sqlite'}")
    )
    assert await wait_for(
        lambda: gw.journal.store is not None and len(gw.journal.store.rows(meter="a", kind="interval")) >= 3 * 4, 15
    )
    rows = [
        r
        for r in gw.journal.store.rows(meter="a", kind="interval")
        if r["point"] == "Active_Energy_Import" and r["status"] == "ok"
    ]
    start_b, end_b = rows[0]["boundary"], rows[-1]["boundary"]
    from datetime import datetime
    from zoneinfo import ZoneInfo

    tz = ZoneInfo("Europe/Paris")
    iso = lambda t: datetime.fromtimestamp(t, tz).replace(tzinfo=None).isoformat()  # noqa: E731
    host, port = gw.servers[0].address()
    token = gw.servers[0].auth.control_token  # the local CLI's admin token

    def get(path: str) -> tuple[int, str]:
        req = urllib.request.Request(f"http://{host}:{port}{path}", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()

    code, body = await asyncio.to_thread(get, f"/export?from={iso(start_b)}&to={iso(end_b)}&tenant=T1")
    data = json.loads(body)
    assert code == 200 and [d["meter"] for d in data] == ["a"]
    assert data[0]["opening_index"] == rows[0]["value"] and data[0]["closing_index"] == rows[-1]["value"]
    code, body = await asyncio.to_thread(get, f"/export?from={iso(start_b)}&to={iso(end_b)}&format=csv")
    assert body.splitlines()[0].startswith("meter,") and len(body.splitlines()) == 3
    _, metrics = await asyncio.to_thread(get, "/metrics")
    assert "meter_gateway_journal_ok 1.0" in metrics
