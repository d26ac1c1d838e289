"""A meter that stops answering shows in its Trend Logs: its last value with the fault flag, read with ReadRange by a
raw-UDP client (conformance/rawbacnet.py, written from ASHRAE 135), and good records again once it answers."""

from __future__ import annotations

import asyncio

from conformance.rawbacnet import (
    SC_READ_RANGE,
    RawClient,
    app,
    closing,
    ctx,
    decode_tags,
    object_id,
    opening,
    unsigned_bytes,
)
from helpers import FAST, wait_for
from meter_gateway.core.quality import Quality

YAML = f"""
gateway: {{name: trend-faults, timezone: Europe/Paris}}
buses:
  - {{id: rtu, type: modbus_rtu, simulated: true, timeout: 0.2, retries: 0, fail_after: 1, backoff_max: 1}}
meters:
  - {{id: gen, bus: rtu, address: 1, profile: generic, bacnet_instance_base: 1000, modbus_unit: 1,
     poll_intervals: {FAST}}}
upstream:
  bacnet: {{enabled: true, bind: 127.0.0.1, netmask: 8, port: 0, device_instance: 4713,
           trend_logs: {{enabled: true, interval: 1, buffer_size: 100}}}}
  modbus_tcp: {{enabled: false}}
  prometheus: {{enabled: false}}
"""


def records(port: int, instance: int) -> list[tuple[str, int | None]]:
    """(datum tag, status flags as 4 bits or None) of every record of a trend log, by a ReadRange of the whole buffer
    by position; the datum tag: 'real', 'unsigned', 'failure' or 'status'."""
    client = RawClient(("127.0.0.1", port))
    try:
        params = ctx(0, object_id(20, instance)) + ctx(1, unsigned_bytes(131))
        params += opening(3) + app(2, unsigned_bytes(1)) + app(3, unsigned_bytes(60)) + closing(3)
        ans = client.confirmed(SC_READ_RANGE, params)
    finally:
        client.close()
    assert ans.kind == "complex", ans
    names = {0: "status", 2: "real", 4: "unsigned", 8: "failure"}
    out: list[tuple[str, int | None]] = []
    depth = 0
    for t in decode_tags(ans.data):
        if t.kind == "open":
            depth += 1
            if depth == 3 and t.number == 8:  # failure: a constructed error inside log-datum
                out.append(("failure", None))
            continue
        if t.kind == "close":
            depth -= 1
            continue
        if depth == 1 and t.kind == "ctx" and t.number == 2:  # a record's status flags: 4 bits after 1 octet
            out[-1] = (out[-1][0], t.data[1] >> 4)
        elif depth == 2 and t.kind == "ctx":  # inside log-datum [1]: the choice's context tag
            out.append((names.get(t.number, str(t.number)), None))
    return out


async def until(read, pred, timeout: float = 15.0) -> list:
    """Read the records (in a thread: the client blocks, the gateway runs in this loop) until pred holds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        got = await asyncio.to_thread(read)
        if pred(got) or loop.time() > end:
            return got
        await asyncio.sleep(0.3)


async def test_communication_loss_is_recorded_with_the_fault_flag(gateways):
    gw = await gateways(YAML)
    port = gw.servers[0].address()[1]
    sim = gw.simulators["gen"]
    assert await wait_for(lambda: gw.table.is_online("gen"), 10)

    def energy() -> list[tuple[str, int | None]]:
        return records(port, 1001)

    got = await until(energy, lambda r: ("unsigned", 0) in r)
    assert ("unsigned", 0) in got, got  # a good value: no flag
    sim.fault = "no_reply"
    assert await wait_for(lambda: gw.table.get("gen", "Active_Energy_Import").quality is Quality.COMM_FAILURE, 10)
    # the Accumulator's last value, with fault (0b0100: in-alarm, FAULT, overridden, out-of-service)
    got = await until(energy, lambda r: ("unsigned", 0b0100) in r)
    assert ("unsigned", 0b0100) in got, got
    power = await until(lambda: records(port, 1005), lambda r: ("real", 0b0100) in r)
    assert ("real", 0b0100) in power, power
    sim.fault = "none"
    assert await wait_for(lambda: gw.table.get("gen", "Active_Energy_Import").quality is Quality.GOOD, 10)
    got = await until(energy, lambda r: r[-1] == ("unsigned", 0) and ("unsigned", 0b0100) in r)
    assert got[-1] == ("unsigned", 0) and ("unsigned", 0b0100) in got, got  # good again, the fault kept in order
