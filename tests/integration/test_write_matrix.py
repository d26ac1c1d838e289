"""The full write matrix over Modbus TCP: every writable and read-only target x MID / non-MID x writes on/off x
allowed / denied source. Expectations are written from DESIGN.md section 6, independently of the policy code."""

from __future__ import annotations

import asyncio
import itertools
import json

import pytest
from pymodbus.client import AsyncModbusTcpClient

from helpers import FAST, audit_attempts, wait_for
from meter_gateway.core.catalogue import PointKind, load_catalogue
from meter_gateway.core.quality import Quality

CAT = load_catalogue()
DT = AsyncModbusTcpClient.DATATYPE

# meters: a MID meter that may write "other" configuration, a non-MID meter that may write configuration,
# and a non-MID meter that may not
METERS = {
    "mid": {"unit": 1, "mid": True, "cfg": True},
    "free": {"unit": 2, "mid": False, "cfg": True},
    "locked": {"unit": 3, "mid": False, "cfg": False},
}
IN_RANGE = {
    "CT_Primary_Rating": 200,
    "CT_Secondary_Rating": 1,
    "Demand_Interval": 30,
    "Pulse_Constant": 500,
    "Modbus_Address": 9,
    "Modbus_Baudrate": 19200,
    "Display_Backlight_Timeout": 120,
    "Overload_Threshold": 110,
    "Voltage_Unbalance_Threshold": 5,
}
OUT_OF_RANGE = {
    "CT_Primary_Rating": 9000,
    "CT_Secondary_Rating": 7,
    "Demand_Interval": 90,
    "Pulse_Constant": 0,
    "Modbus_Address": 250,
    "Modbus_Baudrate": 4800,
    "Display_Backlight_Timeout": 999,
    "Overload_Threshold": 50,
    "Voltage_Unbalance_Threshold": 20,
}
METROLOGY = {"CT_Primary_Rating", "CT_Secondary_Rating", "Pulse_Constant"}
COMM = {"Modbus_Address", "Modbus_Baudrate"}


def expected(meter: str, point: str, enabled: bool, allowed: bool, in_range: bool) -> str:
    """The answer DESIGN.md section 6 demands, as 'accepted' or the Modbus exception code."""
    m = METERS[meter]
    p = CAT.get(point)
    if not enabled or not allowed:
        return "0x02"
    if p.kind is PointKind.COMMAND:
        return "accepted"  # the generic profile declares both commands
    if p.kind is not PointKind.CONFIG:
        return "0x02"
    if point in COMM:
        return "0x02"
    if point in METROLOGY and m["mid"]:
        return "0x02"
    if not m["cfg"]:
        return "0x02"
    return "accepted" if in_range else "0x03"


def config_yaml(enabled: bool, allowed: bool, audit: str) -> str:
    meters = "\n".join(
        f"  - {{id: {mid}, bus: rtu, address: {m['unit']}, profile: generic, mid: {str(m['mid']).lower()},"
        f" allow_config_writes: {str(m['cfg']).lower()}, bacnet_instance_base: {1000 + 100 * m['unit']},"
        f" modbus_unit: {m['unit']}, poll_intervals: {FAST}}}"
        for mid, m in METERS.items()
    )
    allow = "[127.0.0.0/8]" if allowed else "[192.0.2.0/24]"
    return f"""
gateway: {{name: matrix}}
buses:
  - {{id: rtu, type: modbus_rtu, simulated: true, timeout: 0.3}}
meters:
{meters}
upstream:
  bacnet: {{enabled: false}}
  prometheus: {{enabled: false}}
  modbus_tcp: {{enabled: true, bind: 127.0.0.1, port: 0}}
writes: {{enabled: {str(enabled).lower()}, allow_modbus: {allow}, audit_log: {audit}}}
"""


def targets() -> list[tuple[str, object]]:
    """(point, value) pairs: both commands, every config point in and out of range, every holding measurement."""
    out: list[tuple[str, object]] = [("Reset_Demand_Peak", 1), ("Sync_Clock", 1)]
    for name in IN_RANGE:
        out += [(name, IN_RANGE[name]), (name, OUT_OF_RANGE[name])]
    out += [(p.name, 1.0) for p in CAT if p.kind is PointKind.MEASUREMENT and p.modbus.table == "holding"]
    return out


async def _write(c, unit: int, point: str, value) -> str:
    p = CAT.get(point)
    if p.modbus.table == "coil":
        r = await c.write_coil(p.modbus.address, bool(value), device_id=unit)
    else:
        if p.modbus.type == "uint32":
            regs = c.convert_to_registers(int(value), DT.UINT32)
        else:
            regs = c.convert_to_registers(float(value), DT.FLOAT32)
        r = await c.write_registers(p.modbus.address, regs, device_id=unit)
    return f"0x{r.exception_code:02x}" if r.isError() else "accepted"


@pytest.mark.parametrize("enabled,allowed", list(itertools.product([True, False], [True, False])))
async def test_write_matrix(gateways, tmp_path, enabled, allowed):
    audit = tmp_path / "audit.jsonl"
    gw = await gateways(config_yaml(enabled, allowed, str(audit)))
    assert await wait_for(lambda: all(gw.table.get(m, "Demand_Interval").quality is Quality.GOOD for m in METERS), 15)
    host, port = gw.servers[0].address()
    c = AsyncModbusTcpClient(host, port=port, timeout=5, retries=0)
    assert await c.connect()
    cases = []
    try:
        for meter, (point, value) in itertools.product(METERS, targets()):
            sim = gw.simulators[meter]
            before = len(sim.writes)
            got = await _write(c, METERS[meter]["unit"], point, value)
            want = expected(meter, point, enabled, allowed, value == IN_RANGE.get(point, value))
            assert got == want, (meter, point, value, enabled, allowed, got, want)
            reached = len(sim.writes) - before
            assert reached == (1 if want == "accepted" else 0), (meter, point, "writes reaching the meter", reached)
            cases.append((meter, point, value, want))
    finally:
        c.close()
    # every attempt is in the audit log with its decision, in order
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    records = [r for r in lines if r["decision"] != "intent"]
    assert len(records) == len(cases)
    # an accepted write's intent is durable before the meter is touched: it directly precedes its outcome
    for i, r in enumerate(lines):
        if r["decision"] == "accepted":
            assert lines[i - 1]["decision"] == "intent" and lines[i - 1]["point"] == r["point"]
    for rec, (meter, point, _value, want) in zip(records, cases, strict=True):
        assert (rec["meter"], rec["point"], rec["protocol"], rec["source"]) == (meter, point, "modbus", "127.0.0.1")
        decision = {"accepted": "accepted", "0x02": "denied", "0x03": "out-of-range"}[want]
        assert rec["decision"] == decision and rec["reason"], rec
        if decision == "accepted":
            assert rec["meter_reply"].startswith("ok")
    # accepted configuration writes were read back into the table
    if enabled and allowed:
        assert gw.table.get("free", "CT_Primary_Rating").value == 200
        assert gw.table.get("mid", "Demand_Interval").value == 30
        assert gw.table.get("mid", "CT_Primary_Rating").value == 100  # MID metrology untouched


async def _free_meter_ready(gateways, tmp_path):
    """A gateway with writes on and the non-MID meter's configuration read."""
    gw = await gateways(config_yaml(True, True, str(tmp_path / "audit.jsonl")))
    assert await wait_for(lambda: gw.table.get("free", "Demand_Interval").quality is Quality.GOOD, 15)
    return gw


async def test_meter_that_fails_an_accepted_write_answers_0x04(gateways, tmp_path):
    gw = await _free_meter_ready(gateways, tmp_path)
    gw.simulators["free"].fault = "exception"
    host, port = gw.servers[0].address()
    c = AsyncModbusTcpClient(host, port=port, timeout=10, retries=0)
    assert await c.connect()
    try:
        assert await _write(c, 2, "Demand_Interval", 20) == "0x04"
    finally:
        c.close()
    rec = json.loads((tmp_path / "audit.jsonl").read_text().splitlines()[-1])
    assert rec["decision"] == "failed" and "exception" in rec["meter_reply"]


async def test_write_to_silent_meter_times_out_with_0x04(gateways, tmp_path):
    gw = await _free_meter_ready(gateways, tmp_path)
    gw.simulators["free"].online = False
    host, port = gw.servers[0].address()
    c = AsyncModbusTcpClient(host, port=port, timeout=10, retries=0)
    assert await c.connect()
    try:
        assert await _write(c, 2, "Demand_Interval", 20) == "0x04"
    finally:
        c.close()
    await asyncio.sleep(0)
    assert gw.simulators["free"].writes == []


def _frame(unit: int, pdu: bytes, tid: int) -> bytes:
    return tid.to_bytes(2, "big") + b"\x00\x00" + (len(pdu) + 1).to_bytes(2, "big") + bytes([unit]) + pdu


def every_write_request() -> list[tuple[int, bytes, str, str]]:
    """(unit, PDU, audited meter, audited point) for write requests to every kind of target: FC 6 to each register
    of both holding blocks and around them, FC 16 of two registers at each address of the configuration block
    (aligned or not), FC 5 and 15 to each coil and beyond, FC 22 and 23, an unknown unit, malformed writes."""
    out: list[tuple[int, bytes, str, str]] = []
    at = {(p.modbus.table, p.modbus.address): p.name for p in CAT}
    for a in [*range(0, 86), *range(998, 1020)]:
        out.append((2, bytes([6]) + a.to_bytes(2, "big") + b"\x00\x01", "free", f"holding {a}"))
    for a in range(998, 1020):
        pdu = bytes([16]) + a.to_bytes(2, "big") + b"\x00\x02\x04" + bytes.fromhex("41f00000")  # 30.0
        out.append((2, pdu, "free", at.get(("holding", a), f"holding {a}-{a + 1}")))
    for a in range(0, 5):
        out.append((2, bytes([5]) + a.to_bytes(2, "big") + b"\xff\x00", "free", at.get(("coil", a), f"coil {a}")))
        pdu = bytes([15]) + a.to_bytes(2, "big") + b"\x00\x01\x01\x00"
        out.append((2, pdu, "free", at.get(("coil", a), f"coil {a}")))
    out += [
        (2, bytes.fromhex("0f000000030100"), "free", "coil 0-2"),  # three coils: covers a hole
        (2, bytes.fromhex("1603ecffff0000"), "free", "FC 22 (mask write register)"),
        (2, bytes.fromhex("1703ec000203ec00020441f00000"), "free", "FC 23 (read/write multiple registers)"),
        (9, bytes.fromhex("050000ff00"), "unit 9", "coil 0"),
        (9, bytes.fromhex("0603ec0001"), "unit 9", "holding 1004"),
        (9, bytes.fromhex("0f0000000101ff"), "unit 9", "coil 0"),
        (9, bytes.fromhex("1003ec00020441f00000"), "unit 9", "holding 1004-1005"),
        (2, bytes.fromhex("1003ec00020341f000"), "free", "FC 16 (write multiple registers)"),  # byte count wrong
        (2, bytes.fromhex("0500001234"), "free", "FC 5 (write single coil)"),  # neither 0 nor 0xFF00
        (2, bytes.fromhex("1003ec00027fc00000"), "free", "FC 16 (write multiple registers)"),  # no byte count
    ]
    return out


@pytest.mark.parametrize("enabled", [True, False])
async def test_every_write_attempt_whatever_its_target_is_audited(gateways, tmp_path, enabled):
    """Every write request, mapped or not, well-formed or not, is found in the audit log in order, with its answer."""
    audit = tmp_path / "audit.jsonl"
    gw = await gateways(config_yaml(enabled, True, str(audit)))
    assert await wait_for(lambda: gw.table.get("free", "Demand_Interval").quality is Quality.GOOD, 15)
    host, port = gw.servers[0].address()
    reader, writer = await asyncio.open_connection(host, port)
    requests = every_write_request()
    answers = []
    try:
        for tid, (unit, pdu, _meter, _point) in enumerate(requests, start=1):
            writer.write(_frame(unit, pdu, tid))
            await writer.drain()
            head = await asyncio.wait_for(reader.readexactly(7), 10)
            body = await asyncio.wait_for(reader.readexactly(int.from_bytes(head[4:6], "big") - 1), 10)
            assert int.from_bytes(head[:2], "big") == tid
            answers.append("accepted" if body[0] < 0x80 else f"0x{body[1]:02x}")
    finally:
        writer.close()
    await gw.write_service.close()  # writes the records of any coalescing window still open
    records = audit_attempts(audit)
    assert len(records) == len(requests), [(r["meter"], r["point"]) for r in records]
    assert sum(r.get("count", 1) for r in records) == len(requests)
    decision = {"accepted": "accepted", "0x02": "denied", "0x0a": "denied", "0x01": "denied", "0x03": "out-of-range"}
    for rec, (_unit, pdu, meter, point), answer in zip(records, requests, answers, strict=True):
        assert (rec["meter"], rec["point"]) == (meter, point), (pdu.hex(), rec)
        assert (rec["protocol"], rec["source"]) == ("modbus", "127.0.0.1")
        assert rec["decision"] == decision[answer], (pdu.hex(), answer, rec)
        assert rec["reason"]
    accepted = [r for r in records if r["decision"] == "accepted"]
    if enabled:  # the aligned configuration writes and both commands, nothing else
        assert {r["point"] for r in accepted} >= {"Demand_Interval", "Reset_Demand_Peak", "Sync_Clock"}
    else:
        assert accepted == [] and gw.simulators["free"].writes == []
