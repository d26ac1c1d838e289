"""Fault injection on the simulated buses, watched through all three upstreams at once.

For each fault: the expected quality shows on Modbus TCP (exception 0x0B or the last good value, and the
diagnostics block), on BACnet/IP (reliability, status flags; client in another process) and on /metrics (meter_up,
point_quality, the sample left out) by the second poll of the faulty meter; every upstream shows good values again
once the fault clears; and the other meters keep their poll rhythm meanwhile. Delays are counted in poll attempts
of the faulty meter, not in seconds, so a loaded machine cannot make the verdict flip.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import struct
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pymodbus.client import AsyncModbusTcpClient

from helpers import BacnetClient, wait_for
from meter_gateway.bacnet_model import present_value
from meter_gateway.core.catalogue import PollClass, load_catalogue
from meter_gateway.core.quality import PointValue, Quality
from meter_gateway.profiles import load_profiles
from meter_gateway.servers.prometheus import MEASURES
from meter_gateway.sim.modbus import RtuSimBus, make_meter

P = 1.0  # poll interval of every class but configuration
FAIL_AFTER = 2
INTERVALS = "{power: 1, voltage: 1, energy: 1, alarm: 1, status: 1, config: 10}"
DIAG = 100  # input register of the diagnostics block (30101)
CAT = load_catalogue()


def yaml_for(usb_port: str) -> str:
    """Four buses: simulated RTU and M-Bus lines, a simulated Modbus TCP endpoint, a 'USB adapter' at a device path."""
    # one retry, as real installations have: a reply slowed by a loaded machine is not a failed poll (retries: 0 let
    # single slow replies fail polls, and a meter probed with one class after each never had its energy read)
    common = f"timeout: 0.2, retries: 1, fail_after: {FAIL_AFTER}, backoff_max: 2"
    meters = "\n".join(
        f"  - {{id: {mid}, bus: {bus}, address: {addr}, profile: generic, bacnet_instance_base: {base},"
        f" modbus_unit: {unit}, poll_intervals: {INTERVALS}}}"
        for mid, bus, addr, base, unit in (
            ("r1", "rtu", 1, 1000, 1),
            ("r2", "rtu", 2, 2000, 2),
            ("t1", "tcp", 1, 3000, 3),
            ("u1", "usb", 1, 4000, 4),
        )
    )
    meters += (
        f"\n  - {{id: m1, bus: mb, address: 5, profile: mbus_saia_burgess_ale3, bacnet_instance_base: 5000,"
        f" modbus_unit: 5, poll_intervals: {INTERVALS}}}"
    )
    return f"""
gateway: {{name: faults}}
buses:
  - {{id: rtu, type: modbus_rtu, simulated: true, {common}}}
  - {{id: tcp, type: modbus_tcp, simulated: true, port: 0, {common}}}
  - {{id: usb, type: modbus_rtu, port: {usb_port}, {common}}}
  - {{id: mb, type: mbus, simulated: true, {common.replace("0.2", "0.3")}}}
meters:
{meters}
upstream:
  modbus_tcp: {{enabled: true, bind: 127.0.0.1, port: 0}}
  bacnet: {{enabled: true, bind: 127.0.0.1, netmask: 8, port: 0, device_instance: 598}}
  prometheus: {{enabled: true, bind: 127.0.0.1, port: 0}}
"""


class UsbAdapter:
    """A serial adapter that can be unplugged: a pty behind a stable path, as /dev/serial/by-id gives."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.meter = make_meter(1, load_profiles().get("generic"), seed=7)
        self.line: RtuSimBus | None = None

    async def plug(self) -> None:
        """A new pty (the kernel gives a new device), reached through the same path."""
        self.line = RtuSimBus([self.meter])
        os.symlink(await self.line.start(), self.path)

    async def unplug(self) -> None:
        """The device and its path disappear."""
        self.path.unlink(missing_ok=True)
        if self.line is not None:
            await self.line.close()
            self.line = None


@dataclass(frozen=True)
class View:
    """What the three upstreams show of one point of one meter."""

    modbus_exception: int | None
    modbus_value: float | None
    comm_state: int
    bad_data_count: int
    points_not_good: int
    reliability: str
    fault_flag: int
    bacnet_value: float | None
    meter_up: float
    quality: str
    sample: float | None


@dataclass(frozen=True)
class Expect:
    """The flags a fault must raise (or their absence)."""

    modbus_exception: int | None
    comm_state: int
    reliability: str
    fault_flag: int
    meter_up: float
    quality: Quality
    published: bool

    def met_by(self, v: View) -> bool:
        """Whether a view shows these flags on every upstream."""
        return (
            v.modbus_exception == self.modbus_exception
            and v.comm_state == self.comm_state
            and v.reliability == self.reliability
            and v.fault_flag == self.fault_flag
            and v.meter_up == self.meter_up
            and v.quality == self.quality.value
            and (v.sample is not None) == self.published
            and (v.points_not_good == 0) == (self.quality is Quality.GOOD)
        )


GOOD = Expect(None, 1, "noFaultDetected", 0, 1.0, Quality.GOOD, True)
COMM = Expect(0x0B, 0, "communicationFailure", 1, 0.0, Quality.COMM_FAILURE, False)
BAD = Expect(None, 1, "unreliableOther", 1, 1.0, Quality.BAD_DATA, False)


class Upstreams:
    """Reads a point through Modbus TCP, BACnet/IP and /metrics, as SCADA, a BMS and Prometheus would."""

    def __init__(self, gw, bacnet: BacnetClient) -> None:
        self.gw = gw
        self.bacnet = bacnet
        mb = next(s for s in gw.servers if s.name == "modbus_tcp").address()
        self.modbus = AsyncModbusTcpClient(mb[0], port=mb[1], timeout=5, retries=0)
        host, port = next(s for s in gw.servers if s.name == "prometheus").address()
        self.metrics_url = f"http://{host}:{port}/metrics"

    async def view(self, meter_id: str, point: str) -> View:
        """One look at the point through every upstream."""
        m = self.gw.config.meter(meter_id)
        p = CAT.get(point)
        if not self.modbus.connected:
            await self.modbus.connect()
        read = self.modbus.read_input_registers if p.modbus.table == "input" else self.modbus.read_holding_registers
        rsp = await read(p.modbus.address, count=p.modbus.count, device_id=m.modbus_unit)
        value = None
        if not rsp.isError():
            words = struct.pack(">HH", *rsp.registers)
            value = struct.unpack(">I", words)[0] / 100 if p.is_energy else struct.unpack(">f", words)[0]
        diag = await self.modbus.read_input_registers(DIAG, count=24, device_id=m.modbus_unit)
        assert not diag.isError(), diag
        obj = f"{p.bacnet_type},{m.bacnet_instance_base + p.index}"
        reliability = (await self.bacnet("rp", obj=obj, prop="reliability"))["value"]
        flags = (await self.bacnet("rp", obj=obj, prop="status-flags"))["value"]
        pv = (await self.bacnet("rp", obj=obj, prop="present-value"))["value"]
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(self.metrics_url, timeout=10).read().decode())
        up, quality, sample = -1.0, "absent", None
        metric, extra, factor = MEASURES[point]
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.labels.get("meter") != meter_id:
                    continue
                if s.name == "meter_gateway_meter_up":
                    up = s.value
                elif s.name == "meter_gateway_point_quality" and s.labels["point"] == point:
                    quality = s.labels["quality"]
                elif s.name == f"meter_gateway_{metric}" and all(s.labels.get(k) == v for k, v in extra.items()):
                    sample = s.value / factor
        return View(
            modbus_exception=rsp.exception_code if rsp.isError() else None,
            modbus_value=value,
            comm_state=diag.registers[0],
            bad_data_count=(diag.registers[15] << 16) | diag.registers[16],
            points_not_good=diag.registers[23],
            reliability=reliability,
            fault_flag=flags[1],
            bacnet_value=pv,
            meter_up=up,
            quality=quality,
            sample=sample,
        )

    async def watch_until(self, meter_id: str, point: str, expect: Expect, max_attempts: int) -> View:
        """Look until `expect` shows everywhere, within `max_attempts` polls of the meter; returns the view."""
        sched = self.gw.runner_of(meter_id).schedules[meter_id]
        a0 = sched.attempts
        while True:
            v = await self.view(meter_id, point)
            if expect.met_by(v):
                return v
            if sched.attempts - a0 > max_attempts:
                table = self.gw.table.meter_values(meter_id)
                off = {
                    p: q.quality.value for p, q in table.items() if q.quality not in (Quality.GOOD, Quality.UNSUPPORTED)
                }
                raise AssertionError(f"not shown after {max_attempts} polls: {expect} {v}, not good: {off}")
            await asyncio.sleep(0.05)


class TableWatch:
    """The poll attempt of a meter that first gave a point a quality in the table (a table listener).

    The listener runs inside the poll that changes the table, so the count is exact however slowly the upstreams
    are looked at; counting polls until a look through three upstreams ends would add the polls that ran meanwhile.
    """

    def __init__(self, gw, meter_id: str, point: str, quality: Quality) -> None:
        self.table = gw.table
        self.sched = gw.runner_of(meter_id).schedules[meter_id]
        self.a0 = self.sched.attempts
        self.meter_id, self.point, self.quality = meter_id, point, quality
        self.at: int | None = None  # attempts since the watch began, when the quality came
        self.table.add_listener(self._changed)

    def _changed(self, meter_id: str, point: str, old: PointValue, new: PointValue) -> None:
        if self.at is None and meter_id == self.meter_id and point == self.point and new.quality is self.quality:
            self.at = self.sched.attempts - self.a0

    def close(self) -> None:
        """Stop listening."""
        self.table.remove_listener(self._changed)


@dataclass
class Fault:
    """How to break one thing, and how to mend it."""

    name: str
    victims: tuple[str, ...]  # meters the fault reaches (every other meter must keep its rhythm)
    point: str
    expect: Expect
    sim_fault: str = ""  # a fault mode of the first victim's simulator

    async def inject(self, gw, usb: UsbAdapter) -> None:
        """Break it."""
        if self.sim_fault:
            gw.simulators[self.victims[0]].fault = self.sim_fault
        elif self.name == "port_gone":
            await usb.unplug()
        elif self.name == "tcp_reset":
            gw.sim_buses["tcp"].reset_connections = True
        elif self.name == "energy_backwards":
            gw.simulators["r1"].model.values[self.point] -= 10.0  # kWh

    async def clear(self, gw, usb: UsbAdapter) -> None:
        """Mend it."""
        if self.sim_fault:
            gw.simulators[self.victims[0]].fault = "none"
        elif self.name == "port_gone":
            await usb.plug()
        elif self.name == "tcp_reset":
            gw.sim_buses["tcp"].reset_connections = False
        elif self.name == "energy_backwards":
            gw.simulators["r1"].model.values[self.point] += 10.0


FAULTS = [
    Fault("no_reply", ("r1",), "Active_Power_Total", COMM, sim_fault="no_reply"),
    Fault("bad_crc", ("r1",), "Active_Power_Total", COMM, sim_fault="bad_crc"),
    Fault("exception", ("r1",), "Active_Power_Total", BAD, sim_fault="exception"),
    Fault("mbus_no_reply", ("m1",), "Active_Energy_Import", COMM, sim_fault="no_reply"),
    Fault("mbus_bad_checksum", ("m1",), "Active_Energy_Import", COMM, sim_fault="bad_checksum"),
    Fault("port_gone", ("u1",), "Active_Power_Total", COMM),
    Fault("tcp_reset", ("t1",), "Active_Power_Total", COMM),
    Fault("energy_backwards", ("r1",), "Active_Energy_Import", BAD),
]


@pytest.fixture
async def rig(gateways, tmp_path):
    """The gateway on four buses, a BACnet client process, and the unpluggable adapter; all stopped afterwards."""
    usb = UsbAdapter(tmp_path / "ttyUSB-RS485")
    await usb.plug()
    gw = await gateways(yaml_for(str(usb.path)))
    client = await BacnetClient.start(next(s for s in gw.servers if s.name == "bacnet").address()[1])
    ups = Upstreams(gw, client)
    try:
        assert await wait_for(lambda: all(gw.table.is_online(m) for m in gw.table.meter_ids), 15)
        yield gw, usb, ups
    finally:
        ups.modbus.close()
        await client.close()
        with contextlib.suppress(Exception):
            await gw.stop()
        await usb.unplug()


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.name)
async def test_fault_shows_on_every_upstream_then_recovers(rig, fault: Fault):
    gw, usb, ups = rig
    victim = fault.victims[0]
    await ups.watch_until(victim, fault.point, GOOD, max_attempts=10)
    before = await ups.view(victim, fault.point)
    healthy = {mid: gw.runner_of(mid).schedules[mid] for mid in gw.table.meter_ids if mid not in fault.victims}
    polls0 = {mid: s.polls for mid, s in healthy.items()}
    read0 = {mid: s.last_read[PollClass.POWER] for mid, s in healthy.items()}
    # each healthy meter's recent period before the fault: a loaded machine stretches every period, fault or not
    base = {mid: max(P, statistics.fmean(list(s.periods.get(PollClass.POWER, [P]))[-5:])) for mid, s in healthy.items()}
    losses0 = {mid: gw.table.meter(mid).errors for mid in healthy}
    crc0 = gw.runner_of(victim).driver.stats.crc_errors

    flagged = TableWatch(gw, victim, fault.point, fault.expect.quality)
    await fault.inject(gw, usb)
    shown = await ups.watch_until(victim, fault.point, fault.expect, max_attempts=FAIL_AFTER + 2)
    flagged.close()
    polls_to_show = flagged.at
    assert polls_to_show is not None and polls_to_show <= 2, f"{fault.name}: flagged by poll {polls_to_show}"
    if fault.expect is BAD:
        # the implausible reading is not published anywhere: the last good value stays, the alarm is counted
        kept = gw.table.get(victim, fault.point).value
        bacnet = next(srv for srv in gw.servers if srv.name == "bacnet")
        spec = next(o for o in bacnet.specs if o.meter_id == victim and o.point.name == fault.point)
        assert shown.modbus_value == pytest.approx(kept, rel=1e-6, abs=0.011)  # energies: 0.01 kWh registers
        assert shown.bacnet_value == pytest.approx(present_value(spec, kept), rel=1e-6)  # accumulators: 0.01 kWh
        assert shown.bad_data_count > before.bad_data_count
    if fault.name == "energy_backwards":
        assert shown.modbus_value >= before.modbus_value  # never the index that went backwards
    if fault.sim_fault in ("bad_crc", "bad_checksum"):
        assert gw.runner_of(victim).driver.stats.crc_errors > crc0
    await asyncio.sleep(2 * P)  # the fault lasts a while: the victim is backed off, the others go on

    mended = TableWatch(gw, victim, fault.point, Quality.GOOD)
    await fault.clear(gw, usb)
    back = await ups.watch_until(victim, fault.point, GOOD, max_attempts=6)
    mended.close()
    polls_to_recover = mended.at
    if fault.point == "Active_Energy_Import":
        assert back.modbus_value >= before.modbus_value
    print(f"{fault.name}: flags on all upstreams after {polls_to_show} poll(s), good again after {polls_to_recover}")

    for mid, s in healthy.items():
        assert gw.table.meter(mid).errors == losses0[mid], f"{mid} lost communication during {fault.name}"
        n = s.polls - polls0[mid]  # every poll reads the power class: all classes but config share one interval
        assert n >= 3, (mid, n)
        mean = (s.last_read[PollClass.POWER] - read0[mid]) / n
        print(f"  {mid}: {n} polls, mean period {mean:.3f} s, max {max(list(s.periods[PollClass.POWER])[-n:]):.3f} s")
        assert mean <= 1.25 * base[mid], (
            f"{mid} slowed to a {mean:.2f} s period during {fault.name} ({base[mid]:.2f} s before)"
        )
