"""The journal may fail alone: a corrupt journal at start leaves a running, degraded gateway serving BACnet, Modbus
TCP and Prometheus; the damaged file is kept aside byte for byte. Exports run in a worker thread: three concurrent
full-range exports of a 3-year 15-minute journal while a Modbus client reads every 100 ms."""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from pymodbus.client import AsyncModbusTcpClient

from helpers import FAST, BacnetClient, wait_for
from meter_gateway.journal.store import Reading, open_journal

YAML = f"""
gateway: {{name: degraded, timezone: Europe/Paris, state_dir: .}}
buses: [{{id: rtu, type: modbus_rtu, simulated: true, timeout: 0.3}}]
meters:
  - {{id: a, tenant: T1, bus: rtu, address: 1, profile: generic, bacnet_instance_base: 1000, modbus_unit: 1,
     poll_intervals: {FAST}}}
  - {{id: b, tenant: T2, bus: rtu, address: 2, profile: generic, bacnet_instance_base: 2000, modbus_unit: 2,
     poll_intervals: {FAST}}}
upstream:
  bacnet: {{enabled: BACNET, bind: 127.0.0.1, netmask: 8, port: 0, device_instance: 733}}
  modbus_tcp: {{enabled: true, bind: 127.0.0.1, port: 0}}
  prometheus: {{enabled: true, bind: 127.0.0.1, port: 0}}
journal: {{enabled: true, interval: INTERVAL, path: JOURNAL}}
writes: {{audit_log: AUDIT}}
"""


def config(tmp_path: Path, interval: int = 1, bacnet: bool = True) -> str:
    return (
        YAML.replace("BACNET", "true" if bacnet else "false")
        .replace("INTERVAL", str(interval))
        .replace("JOURNAL", str(tmp_path / "journal.sqlite"))
        .replace("AUDIT", str(tmp_path / "audit.jsonl"))
    )


def server(gw, name: str):
    return next(s for s in gw.servers if s.name == name)


def http_get(srv, path: str, timeout: float = 120) -> tuple[int, bytes]:
    """GET from the gateway's HTTP server with its control token (admin, as the local CLI)."""
    addr = srv.address()
    req = urllib.request.Request(f"http://{addr[0]}:{addr[1]}{path}")
    req.add_header("Authorization", f"Bearer {srv.auth.control_token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def test_corrupt_journal_at_start_leaves_a_degraded_gateway_serving_everything(gateways, tmp_path):
    damaged = os.urandom(3000) + b"SQLite format 3\0" + os.urandom(5000)
    (tmp_path / "journal.sqlite").write_bytes(damaged)
    gw = await gateways(config(tmp_path))
    assert gw.started
    assert await wait_for(lambda: gw.journal.store is not None, 10)
    assert await wait_for(lambda: all(gw.table.is_online(m) for m in gw.table.meter_ids), 10)
    prom = server(gw, "prometheus")

    code, body = await asyncio.to_thread(http_get, prom, "/health")
    doc = json.loads(body)
    assert code == 200 and doc["status"] == "degraded", doc
    assert doc["journal"]["state"] == "degraded" and "kept aside" in doc["journal"]["problem"]
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("journal.sqlite.damaged-")]
    assert len(aside) == 1 and aside[0].read_bytes() == damaged  # kept, never overwritten
    assert (tmp_path / "journal.key").stat().st_mode & 0o777 == 0o600
    for name in ("journal.checkpoints", "journal.sqlite", "audit.jsonl"):
        assert (tmp_path / name).stat().st_mode & 0o027 == 0, name  # 0640 at most
    _, metrics = await asyncio.to_thread(http_get, prom, "/metrics")
    assert b"meter_gateway_journal_ok 0.0" in metrics and b"meter_gateway_meter_up{" in metrics

    host, port = server(gw, "modbus_tcp").address()
    c = AsyncModbusTcpClient(host, port=port, timeout=5, retries=0)
    assert await c.connect()
    try:
        r = await c.read_holding_registers(0, count=2, device_id=1)
        assert not r.isError()
    finally:
        c.close()
    bac = await BacnetClient.start(server(gw, "bacnet").address()[1])
    try:
        assert (await bac("whois"))["devices"] == [733]
    finally:
        await bac.close()
    # the new journal records, chained on, and says why it restarted
    assert await wait_for(lambda: len(gw.journal.store.rows(kind="interval")) >= 4, 10)
    events = [e["point"] for e in gw.journal.store.rows(kind="event")]
    assert events[0] == "journal_restarted"
    _, body = await asyncio.to_thread(http_get, prom, "/health")
    cp = json.loads(body)["journal"]["checkpoint"]
    assert cp["seq"] >= 5 and len(cp["head"]) == 64 and len(cp["mac"]) == 64


async def test_an_unwritable_journal_folder_leaves_the_gateway_running(gateways, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the journal's folder should be\n")
    text = config(tmp_path, bacnet=False).replace(str(tmp_path / "journal.sqlite"), str(blocker / "journal.sqlite"))
    gw = await gateways(text)
    assert await wait_for(lambda: bool(gw.journal.problem), 10)
    assert gw.journal.state == "unavailable" and "cannot open" in gw.journal.problem
    prom = server(gw, "prometheus")
    code, body = await asyncio.to_thread(http_get, prom, "/health")
    assert code == 200 and json.loads(body)["journal"]["state"] == "unavailable"
    assert await wait_for(lambda: all(gw.table.is_online(m) for m in gw.table.meter_ids), 10)


def three_years(path: Path, meters: tuple[str, ...]) -> tuple[int, int]:
    """A 3-year 15-minute journal written by the gateway's own store (batches through executemany)."""
    end = int(time.time()) // 900 * 900 - 900
    start = end - 3 * 365 * 86400
    store, events, _ = open_journal(path)
    store.append(events)
    batch: list[Reading] = []
    for i, b in enumerate(range(start, end + 1, 900)):
        for k, m in enumerate(meters):
            batch.append(
                Reading(m, "T1" if k == 0 else "T2", "", "Acme", False, "Active_Energy_Import", "interval", b, "ok",
                        "", f"{i * (k + 1) * 0.25:.2f}", "kWh", "generic", 1, b - 2.0, "synchronized", "good")
            )  # fmt: skip
        if len(batch) >= 20000:
            store.append(batch)
            batch.clear()
    store.append(batch)
    store.checkpoint()
    store.close()
    return start, end


async def test_three_full_range_exports_do_not_hold_modbus_reads(gateways, tmp_path):
    t0 = time.monotonic()
    start, end = await asyncio.to_thread(three_years, tmp_path / "journal.sqlite", ("a", "b"))
    built = time.monotonic() - t0
    gw = await gateways(config(tmp_path, interval=900, bacnet=False))
    assert await wait_for(lambda: gw.journal.store is not None, 30)
    prom = server(gw, "prometheus")
    host, port = server(gw, "modbus_tcp").address()
    c = AsyncModbusTcpClient(host, port=port, timeout=10, retries=0)
    assert await c.connect()
    waits: list[float] = []
    stop = asyncio.Event()

    async def reader() -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            t = loop.time()
            r = await c.read_holding_registers(0, count=2, device_id=1)
            waits.append(loop.time() - t)
            assert not r.isError()
            await asyncio.sleep(0.1)

    from datetime import datetime
    from zoneinfo import ZoneInfo

    day = lambda t: datetime.fromtimestamp(t, ZoneInfo("Europe/Paris")).strftime("%Y-%m-%dT%H:%M")  # noqa: E731
    q = f"/export?from={day(start)}&to={day(end)}&format=csv"
    task = asyncio.create_task(reader())
    try:
        await asyncio.sleep(0.5)
        t1 = time.monotonic()
        answers = await asyncio.gather(*(asyncio.to_thread(http_get, prom, q) for _ in range(3)))
        took = time.monotonic() - t1
        await asyncio.sleep(0.3)
    finally:
        stop.set()
        await task
        c.close()
    for code, body in answers:
        lines = body.decode().splitlines()
        assert code == 200 and len(lines) == 3, body[:300]
        row = dict(zip(lines[0].split(","), lines[1].split(","), strict=False))
        assert row["missing_boundaries"] == "0" and row["opening_index"] == "0.00"
    worst = max(waits)
    print(
        f"3-year journal built in {built:.1f} s; 3 concurrent full-range exports in {took:.1f} s; "
        f"{len(waits)} Modbus reads, longest {worst * 1000:.0f} ms"
    )
    assert worst < 1.0  # generous: the issue measured 46 s; the target is 100 ms (see the printed figure)
    # limits: a fourth export while three run is 429, a range past the retention 413
    prometheus = server(gw, "prometheus")
    prometheus._exports = 3  # as while three exports run
    code, body = await asyncio.to_thread(http_get, prom, q)
    prometheus._exports = 0
    assert code == 429 and b"exports are running" in body
    code, body = await asyncio.to_thread(http_get, prom, "/export?from=0001-01-01&to=9999-12-31")
    assert code == 413 and b"at most" in body
    code, body = await asyncio.to_thread(http_get, prom, f"/export?from={day(end)}&to={day(start)}")
    assert code == 400 and b"backwards" in body
    code, body = await asyncio.to_thread(http_get, prom, f"/export?from={day(start)}&to={day(end)}&tenant=X")
    assert code == 400 and b"tenants: T1, T2" in body
