"""The journal alarm on every upstream: Modbus TCP diagnostics register 30125 (every unit) and the BACnet Binary
Input gateway.Journal_Alarm, read over loopback by pymodbus and a bacpypes3 client in another process."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from pymodbus.client import AsyncModbusTcpClient

from helpers import FAST, BacnetClient, audit_attempts, wait_for
from meter_gateway.bacnet_model import JOURNAL_ALARM_NAME

ALARM = "binary-input,4194000"
JOURNAL_REG = 124  # input register 30125

YAML = f"""
gateway: {{name: journal-alarm, timezone: Europe/Paris, state_dir: .}}
buses: [{{id: rtu, type: modbus_rtu, simulated: true, timeout: 0.3}}]
meters:
  - {{id: a, bus: rtu, address: 1, profile: generic, bacnet_instance_base: 1000, modbus_unit: 1,
     poll_intervals: {FAST}}}
  - {{id: b, bus: rtu, address: 2, profile: generic, bacnet_instance_base: 2000, modbus_unit: 2,
     poll_intervals: {FAST}}}
upstream:
  bacnet: {{enabled: true, bind: 127.0.0.1, netmask: 8, port: 0, device_instance: 734}}
  modbus_tcp: {{enabled: true, bind: 127.0.0.1, port: 0}}
  prometheus: {{enabled: false}}
journal: {{enabled: JOURNAL_ON, interval: 900, path: JOURNAL}}
writes: {{audit_log: AUDIT}}
"""


def config(tmp_path: Path, journal: bool = True) -> str:
    return (
        YAML.replace("JOURNAL_ON", "true" if journal else "false")
        .replace("JOURNAL", str(tmp_path / "journal.sqlite"))
        .replace("AUDIT", str(tmp_path / "audit.jsonl"))
    )


def server(gw, name: str):
    return next(s for s in gw.servers if s.name == name)


async def journal_registers(gw) -> list[int]:
    """Register 30125 of every unit."""
    host, port = server(gw, "modbus_tcp").address()
    c = AsyncModbusTcpClient(host, port=port, timeout=5, retries=0)
    assert await c.connect()
    try:
        out = []
        for unit in (1, 2):
            r = await c.read_input_registers(JOURNAL_REG, count=1, device_id=unit)
            assert not r.isError(), r
            out.append(r.registers[0])
        return out
    finally:
        c.close()


async def alarm_value(bac: BacnetClient) -> str:
    return (await bac("rp", obj=ALARM, prop="present-value"))["value"]


async def wait_alarm(bac: BacnetClient, expect: str, timeout: float = 5.0) -> bool:
    """Poll the BI until it shows `expect` (the server looks at the journal every second)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if await alarm_value(bac) == expect:
            return True
        await asyncio.sleep(0.2)
    return False


async def test_corrupt_journal_raises_the_alarm_on_modbus_and_bacnet(gateways, tmp_path):
    (tmp_path / "journal.sqlite").write_bytes(os.urandom(3000) + b"SQLite format 3\0" + os.urandom(5000))
    gw = await gateways(config(tmp_path))
    assert await wait_for(lambda: gw.journal.store is not None, 10)
    assert gw.journal.state == "degraded" and not gw.journal.disk_full
    assert await journal_registers(gw) == [2, 2]
    bac = await BacnetClient.start(server(gw, "bacnet").address()[1])
    try:
        assert await wait_alarm(bac, "active")
        vals = (
            await bac(
                "rpm",
                obj=ALARM,
                props=["object-name", "reliability", "status-flags", "active-text", "inactive-text", "description"],
            )
        )["values"]
        assert vals["objectName"] == JOURNAL_ALARM_NAME and vals["reliability"] == "noFaultDetected"
        assert vals["statusFlags"] == [0, 0, 0, 0] and (vals["activeText"], vals["inactiveText"]) == ("alarm", "normal")
        assert "journal" in vals["description"]
        objects = (await bac("rp", obj="device,734", prop="object-list"))["value"]
        assert ["binaryInput", 4194000] in objects and len(objects) == 2 * (53 + 1) + 2 + 1
        # read-only from the network, and the refusal is audited
        assert "write-access-denied" in (await bac("wp", obj=ALARM, value="inactive"))["error"]
        assert await alarm_value(bac) == "active"
    finally:
        await bac.close()
    await gw.stop()  # refusals are written when their window closes: at the latest when the gateway stops
    refused = [r for r in audit_attempts(tmp_path / "audit.jsonl") if "4194000" in r["point"]]
    assert refused and refused[0]["decision"] == "denied" and refused[0]["protocol"] == "bacnet"


async def test_healthy_journal_then_a_full_disk_notifies_cov(gateways, tmp_path):
    gw = await gateways(config(tmp_path))
    assert await wait_for(lambda: gw.journal.state == "ok", 10)
    assert await journal_registers(gw) == [1, 1]
    bac = await BacnetClient.start(server(gw, "bacnet").address()[1])
    try:
        assert await wait_alarm(bac, "inactive")
        assert (await bac("subscribe", obj=ALARM)) == {"ok": True}
        await bac("notifications", wait=0.3)  # the initial notification
        # a write failing for lack of space, as the recorder records it (a real full disk: test_journal_disk_full.py)
        gw.journal.error, gw.journal.disk_full = "database or disk is full", True
        assert await journal_registers(gw) == [2 | 256, 2 | 256]
        notes = (await bac("notifications", wait=2.0))["notifications"]
        assert {"obj": ALARM, "prop": "presentValue", "value": "active"} in notes, notes
        gw.journal.error, gw.journal.disk_full = "", False  # space came back, the next write succeeded
        assert await journal_registers(gw) == [1, 1]
        notes = (await bac("notifications", wait=2.0))["notifications"]
        assert {"obj": ALARM, "prop": "presentValue", "value": "inactive"} in notes, notes
    finally:
        await bac.close()


async def test_journal_disabled_reads_0_and_has_no_alarm_object(gateways, tmp_path):
    gw = await gateways(config(tmp_path, journal=False))
    assert gw.journal is None
    assert await journal_registers(gw) == [0, 0]
    bac = await BacnetClient.start(server(gw, "bacnet").address()[1])
    try:
        assert "unknown-object" in (await bac("rp", obj=ALARM, prop="present-value"))["error"]
    finally:
        await bac.close()
