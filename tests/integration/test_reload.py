"""SIGHUP on a real gateway process with a BACnet COV subscriber and a Modbus TCP client connected.

A Latin-1 file, a UTF-16 file and a broken file are refused (the process keeps serving); a good file that adds a
meter on a new bus is applied as a diff: the running bus keeps its counters, the COV subscription keeps
notifying, the Modbus connection stays open, and the new meter is served on both protocols.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import urllib.request
from pathlib import Path

from pymodbus.client import AsyncModbusTcpClient

from helpers import FAST, BacnetClient, free_port, free_udp_port, wait_for

METER = (
    "  - {{id: {id}, bus: {bus}, address: {a}, profile: generic, bacnet_instance_base: {b}, modbus_unit: {a},"
    " poll_intervals: " + FAST.replace("{", "{{").replace("}", "}}") + "}}"
)


def config(bacnet: int, modbus: int, http: int, extra: bool = False, third: bool = False) -> str:
    """Bus rtu with meter m1; with `extra`, bus rtu2 with meter m2 too; with `third`, meter m3 on bus rtu."""
    buses = ["  - {id: rtu, type: modbus_rtu, simulated: true, timeout: 0.3}"]
    meters = [METER.format(id="m1", bus="rtu", a=1, b=1000)]
    if extra:
        buses.append("  - {id: rtu2, type: modbus_rtu, simulated: true, timeout: 0.3}")
        meters.append(METER.format(id="m2", bus="rtu2", a=2, b=2000))
    if third:
        meters.append(METER.format(id="m3", bus="rtu", a=3, b=3000))
    return f"""
gateway: {{name: reload, log_level: info, description: "Café"}}
buses:
{chr(10).join(buses)}
meters:
{chr(10).join(meters)}
upstream:
  bacnet: {{enabled: true, bind: 127.0.0.1, netmask: 8, port: {bacnet}}}
  modbus_tcp: {{enabled: true, bind: 127.0.0.1, port: {modbus}}}
  prometheus: {{enabled: true, bind: 127.0.0.1, port: {http}}}
"""


def transactions(http: int, bus: str) -> float:
    """bus_transactions_total of one bus from /metrics."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=5).read().decode()
    m = re.search(rf'^meter_gateway_bus_transactions_total{{bus="{bus}"}} (\S+)$', body, re.M)
    assert m, body
    return float(m.group(1))


async def power(c: AsyncModbusTcpClient, unit: int) -> float:
    """Active_Power_Total (holding 0, float32) of one unit."""
    r = await c.read_holding_registers(0, count=2, device_id=unit)
    assert not r.isError(), r
    return c.convert_from_registers(r.registers, c.DATATYPE.FLOAT32)


async def test_sighup_refuses_bad_files_and_applies_a_good_one_as_a_diff(tmp_path: Path):
    bacnet, modbus, http = free_udp_port(), free_port(), free_port()
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(config(bacnet, modbus, http))
    log = tmp_path / "log.txt"
    with open(log, "wb") as fh:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "meter_gateway.cli", "run", "-c", str(cfg), stdout=fh, stderr=fh
        )
    text = log.read_text
    client = bac = None
    try:
        assert await wait_for(lambda: "meter m1: communication established" in text(), 30), text()
        bac = await BacnetClient.start(bacnet)
        assert (await bac("subscribe", obj="analog-input,1005"))["ok"]
        client = AsyncModbusTcpClient("127.0.0.1", port=modbus, timeout=5, retries=0)
        assert await client.connect()
        await power(client, 1)
        assert (await bac("notifications", wait=2.0))["notifications"], "no COV before reload"
        before = transactions(http, "rtu")

        bad_files = [
            ("Latin-1", config(bacnet, modbus, http, extra=True).encode("latin-1"), "is not UTF-8"),
            ("UTF-16", config(bacnet, modbus, http, extra=True).encode("utf-16"), "UTF-16"),
            (
                "broken",
                config(bacnet, modbus, http, extra=True).replace("profile: generic", "profile: x").encode(),
                "unknown profile 'x'",
            ),
        ]
        for n, (what, data, message) in enumerate(bad_files, start=1):
            cfg.write_bytes(data)
            proc.send_signal(signal.SIGHUP)
            assert await wait_for(lambda n=n: text().count("reload refused") == n, 15), (what, text())
            assert message in text().splitlines()[-1], (what, text())
            assert proc.returncode is None, what
            await power(client, 1)  # same connection, still answered

        cfg.write_text(config(bacnet, modbus, http, extra=True))
        proc.send_signal(signal.SIGHUP)
        assert await wait_for(lambda: "configuration reloaded" in text(), 20), text()
        assert "replaced buses: rtu2; meters: m2" in text(), text()
        assert await wait_for(lambda: "meter m2: communication established" in text(), 20), text()

        # the running bus kept its counters, the connection and the COV subscription live on
        assert transactions(http, "rtu") >= before
        assert await power(client, 1) >= 0
        assert await power(client, 2) >= 0  # the new meter on the same connection
        await bac("notifications", wait=0.1)  # drain
        assert (await bac("notifications", wait=3.0))["notifications"], "COV subscription lost by the reload"
        got = await bac("rp", obj="analog-input,2005", prop="object-name")
        assert got.get("value") == "m2.Active_Power_Total", got

        # a meter added to a running bus restarts that bus only; the line's counters go on from where they were
        before = transactions(http, "rtu")
        before2 = transactions(http, "rtu2")
        cfg.write_text(config(bacnet, modbus, http, extra=True, third=True))
        proc.send_signal(signal.SIGHUP)
        assert await wait_for(lambda: text().count("configuration reloaded") == 2, 20), text()
        assert "replaced buses: rtu; meters: m3" in text(), text()
        assert await wait_for(lambda: "meter m3: communication established" in text(), 20), text()
        assert transactions(http, "rtu") >= before and transactions(http, "rtu2") >= before2
        assert await power(client, 3) >= 0 and await power(client, 1) >= 0
        await bac("notifications", wait=0.1)
        assert (await bac("notifications", wait=3.0))["notifications"], "COV subscription lost by the second reload"

        # renaming the subscribed meter changes its objects' description only: same objects, same subscription
        cfg.write_text(config(bacnet, modbus, http, extra=True, third=True).replace("{id: m1,", "{id: m1, name: Shop,"))
        proc.send_signal(signal.SIGHUP)
        assert await wait_for(lambda: text().count("configuration reloaded") == 3, 20), text()
        assert "configuration reloaded (replaced meters: m1)" in text(), text()
        got = await bac("rp", obj="analog-input,1005", prop="description")
        assert got.get("value", "").endswith("(Shop)"), got
        await bac("notifications", wait=0.1)
        assert (await bac("notifications", wait=3.0))["notifications"], "COV subscription lost by a rename"
        assert proc.returncode is None
    finally:
        if client is not None:
            client.close()
        if bac is not None:
            await bac.close()
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            rc = await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            os.kill(proc.pid, signal.SIGKILL)
            rc = await proc.wait()
    assert rc == 0, text()
    assert "Traceback" not in text(), text()
