"""A full disk, for real: the state directory on a small tmpfs (root only; skipped with the reason otherwise).
Boundaries passed while full are recorded as missing once space returns; a write accepted by the policy is refused
and never reaches the meter while its audit record cannot be made durable, and is audited as refused afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import subprocess
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient

from helpers import FAST, wait_for
from meter_gateway.core.catalogue import load_catalogue
from meter_gateway.core.quality import Quality

CAT = load_catalogue()


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs mounted for the test, unmounted after it."""
    if os.geteuid() != 0:
        pytest.skip("a full disk needs a tmpfs mount: run as root (skipped, not faked)")
    mnt = tmp_path / "state"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0750", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(mnt: Path) -> Path:
    """Pad the append-only files to a block boundary (their next record needs a new block), then fill the disk."""
    for name in ("audit.jsonl", "journal.checkpoints"):
        p = mnt / name
        size = p.stat().st_size
        pad = (-size - 1) % 4096
        with open(p, "ab") as fh:  # a line readers skip: not JSON of a record
            fh.write(b"#" * pad + b"\n")
    filler = mnt / "filler"
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    with contextlib.suppress(OSError), open(mnt / "filler2", "wb") as fh:
        while True:
            fh.write(b"\0" * 512)
            fh.flush()
    return filler


YAML = f"""
gateway: {{name: full}}
buses: [{{id: rtu, type: modbus_rtu, simulated: true, timeout: 0.3}}]
meters:
  - {{id: free, bus: rtu, address: 2, profile: generic, allow_config_writes: true, bacnet_instance_base: 1000,
     modbus_unit: 2, poll_intervals: {FAST}}}
upstream:
  bacnet: {{enabled: false}}
  prometheus: {{enabled: false}}
  modbus_tcp: {{enabled: true, bind: 127.0.0.1, port: 0}}
writes: {{enabled: true, allow_modbus: [127.0.0.0/8], audit_log: STATE/audit.jsonl}}
journal: {{enabled: true, interval: 1, path: STATE/journal.sqlite}}
"""


async def write_demand_interval(gw, minutes: int) -> str:
    host, port = gw.servers[0].address()
    c = AsyncModbusTcpClient(host, port=port, timeout=10, retries=0)
    assert await c.connect()
    try:
        p = CAT.get("Demand_Interval")
        if p.modbus.type == "uint32":
            regs = c.convert_to_registers(int(minutes), c.DATATYPE.UINT32)
        else:
            regs = c.convert_to_registers(float(minutes), c.DATATYPE.FLOAT32)
        r = await c.write_registers(p.modbus.address, regs, device_id=2)
    finally:
        c.close()
    return f"0x{r.exception_code:02x}" if r.isError() else "accepted"


async def journal_register(gw) -> int:
    """Input register 30125 (diag.journal_state) of the meter's unit."""
    host, port = gw.servers[0].address()
    c = AsyncModbusTcpClient(host, port=port, timeout=10, retries=0)
    assert await c.connect()
    try:
        r = await c.read_input_registers(124, count=1, device_id=2)
        assert not r.isError(), r
        return r.registers[0]
    finally:
        c.close()


async def test_full_disk_missing_boundaries_and_no_unaudited_write(gateways, small_disk):
    mnt = small_disk
    gw = await gateways(YAML.replace("STATE", str(mnt)))
    rec = gw.journal
    assert await wait_for(lambda: rec.store is not None and len(rec.store.rows(kind="interval")) >= 3 * 4, 15)
    assert await wait_for(lambda: gw.table.get("free", "Demand_Interval").quality is Quality.GOOD, 15)
    assert await write_demand_interval(gw, 30) == "accepted"  # the audit file exists and takes records
    sim = gw.simulators["free"]
    writes_before = len(sim.writes)

    filler = fill(mnt)
    assert await wait_for(lambda: rec.disk_full, 15), rec.error
    assert rec.state == "degraded"
    assert await journal_register(gw) == 2 + 256  # degraded, disk full: the alarm SCADA sees
    assert await write_demand_interval(gw, 20) == "0x02"  # refused: its audit record cannot be durable
    await asyncio.sleep(0.1)
    assert len(sim.writes) == writes_before  # nothing reached the meter
    await asyncio.sleep(2.5)  # boundaries pass while the disk is full

    filler.unlink()
    (mnt / "filler2").unlink(missing_ok=True)
    assert await wait_for(lambda: rec.error == "", 15)
    assert await journal_register(gw) == 1
    assert await write_demand_interval(gw, 25) == "accepted"
    rows = [r for r in rec.store.rows(meter="free", kind="interval") if r["point"] == "Active_Energy_Import"]
    bs = [r["boundary"] for r in rows]
    assert bs == list(range(bs[0], bs[-1] + 1))  # every boundary, none absent
    assert sum(r["status"] == "missing" for r in rows) >= 2  # those that passed while full
    [ev] = [e for e in rec.store.rows(kind="event") if e["point"] == "write_error"]
    assert "recorded missing" in ev["value"]
    records = [json.loads(line) for line in (mnt / "audit.jsonl").read_text().splitlines() if line.startswith("{")]
    decisions = [(r.get("decision"), r.get("value")) for r in records if r.get("point") == "Demand_Interval"]
    assert decisions == [
        ("intent", 30),
        ("accepted", 30),
        ("denied", 20),  # audited once space returned
        ("intent", 25),
        ("accepted", 25),
    ], decisions
    refused = next(r for r in records if r.get("value") == 20)
    assert "audit record cannot be written" in refused["reason"]
