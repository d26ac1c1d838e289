"""Trend Log objects read back with bacnet-stack's bacrr (ReadRange by position, by sequence number and by time)
across a restart of a real gateway process; the records come back from the billing journal.

bacrr has no --mac option: it finds the device with Who-Is. On one host the gateway is a BBMD and bacrr registers
with it as a foreign device (BACNET_BBMD_ADDRESS / BACNET_BBMD_PORT), so its Who-Is reaches the device and the
I-Am comes back. bacrr reads a by-time reference date as year/month/day (its --help example reads otherwise).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest
from gwproc import free_udp_port, run_tool
from rawbacnet import SC_READ_RANGE, RawClient, app, closing, ctx, decode_tags, object_id, opening, unsigned_bytes

from helpers import GatewayRun
from meter_gateway.core import trend_range as tr

#: the meter `lost` sits on a Modbus TCP bus where nothing listens: its communication fails from the start
CONFIG = """
gateway: {name: trend-test, timezone: Europe/Paris}
buses:
  - {id: rtu, type: modbus_rtu, simulated: true, timeout: 1.0, retries: 1}  # a slow first reply at start is no loss
  - {id: dead, type: modbus_tcp, host: 127.0.0.1, port: DEAD, timeout: 0.2, retries: 0, fail_after: 1, backoff_max: 1}
meters:
  - {id: gen, bus: rtu, address: 1, profile: generic, bacnet_instance_base: 1000, modbus_unit: 1,
     poll_intervals: {power: 0.5, voltage: 0.5, energy: 0.5, alarm: 0.5, status: 0.5, config: 5}}
  - {id: lost, bus: dead, address: 1, profile: generic, bacnet_instance_base: 2000, modbus_unit: 2}
upstream:
  bacnet: {enabled: true, bind: 127.0.0.1, netmask: 8, port: 0, device_instance: 4712, bbmd: true,
           trend_logs: {enabled: true, interval: 1, buffer_size: 500}}
  modbus_tcp: {enabled: false}
  prometheus: {enabled: false}
journal: {enabled: true}
"""
DEVICE = "4712"
ENERGY_LOG = "1001"  # trend-log instance = the logged Accumulator's instance (base 1000 + fixed index 1)
POWER_LOG = "1005"
LOST_LOG = "2001"
STARTED = re.compile(r"BACnet/IP device \d+ \(.*?\) on 127\.0\.0\.1:(\d+)")
#: one record as bacrr prints it: {{2026-12-01-18:39:54.00}, uint32_t:2857889} or {{...}, status:{false,false,true}}
RECORD = re.compile(r"\{\{(\d{4}-\d\d-\d\d-\d\d:\d\d:\d\d\.\d\d)\}, (status:\{[^}]*\}|[^{}]*?)\}")


class Device:
    """A gateway process and bacrr/bacrp against its device."""

    def __init__(self, tmp: Path, tools: Path) -> None:
        self.tmp, self.tools = tmp, tools
        self.run: GatewayRun | None = None
        self.port = 0

    def start(self, n: int) -> None:
        self.run = GatewayRun(self.tmp / "gateway.yaml", self.tmp / f"gateway-{n}.log", cwd=self.tmp)
        assert self.run.wait_for("meter gen: communication established", 30), self.run.log.read_text()
        self.port = int(STARTED.search(self.run.log.read_text()).group(1))

    def stop(self) -> None:
        if self.run is not None:
            assert self.run.stop() == 0
            self.run = None

    def tool(self, name: str, *args: str) -> str:
        env = {"BACNET_BBMD_ADDRESS": "127.0.0.1", "BACNET_BBMD_PORT": str(self.port), "BACNET_APDU_TIMEOUT": "2000"}
        out = run_tool(self.tools, name, *args, env=env)
        assert out.returncode == 0, f"{name} {args}: {out.stdout}{out.stderr}"
        return out.stdout

    def rr(self, log: str, *range_args: str) -> list[tuple[str, str]]:
        """(timestamp, datum) of the records a ReadRange returns."""
        return RECORD.findall(self.tool("bacrr", DEVICE, "trend-log", log, "log-buffer", *range_args))

    def count(self, log: str, prop: str = "total-record-count") -> int:
        args = ["--mac", f"127.0.0.1:{self.port}", "--dnet", "0", DEVICE, "trend-log", log, prop]
        out = run_tool(self.tools, "bacrp", *args)
        assert out.returncode == 0, out.stdout + out.stderr
        return int(out.stdout.strip())

    def wait_records(self, log: str, n: int) -> None:
        end = time.monotonic() + 30
        while time.monotonic() < end and self.count(log) < n:
            time.sleep(0.5)
        assert self.count(log) >= n


def when(stamp: str) -> str:
    """bacrr's by-time reference (year/month/day hour:minute:second) of a timestamp bacrr printed."""
    d = datetime.strptime(stamp[:19], "%Y-%m-%d-%H:%M:%S")
    return d.strftime("%Y/%m/%d %H:%M:%S")


@pytest.fixture(scope="module")
def device(tmp_path_factory, bacnet_stack):
    tmp = tmp_path_factory.mktemp("trend")
    with socket.socket() as s:  # a TCP port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    (tmp / "gateway.yaml").write_text(CONFIG.replace("DEAD", str(dead)))
    d = Device(tmp, bacnet_stack)
    yield d
    d.stop()


def test_trend_log_read_back_by_position_sequence_and_time_across_a_restart(device):
    device.start(1)
    device.wait_records(ENERGY_LOG, 4)
    first = device.rr(ENERGY_LOG, "1", "1", "4")  # by position: the four oldest records
    # an Accumulator logs Unsigned values; a boundary before the meter's first poll has no value yet
    assert len(first) == 4 and first[-1][1].startswith("uint32_t:"), first
    assert all(d.startswith("uint32_t:") or d == "failure:property,value-not-initialized" for _, d in first), first
    power = device.rr(POWER_LOG, "1", "1", "4")  # an Analog Input logs Real values

    def real(d: str) -> bool:
        return d.startswith("real:") or re.fullmatch(r"-?[\d.]+", d) is not None

    assert len(power) == 4 and real(power[-1][1]), power
    assert all(real(d) or d == "failure:property,value-not-initialized" for _, d in power), power
    # a meter that never answered: failure records (no value to show), communication timeout once it is declared lost
    lost = device.rr(LOST_LOG, "1", "1", "3")
    assert lost and {d for _, d in lost} <= {"failure:communication,timeout", "failure:property,value-not-initialized"}
    assert lost[-1][1] == "failure:communication,timeout", lost
    before = device.count(ENERGY_LOG)
    device.stop()

    device.start(2)  # the records come back from the journal, with their sequence numbers
    device.wait_records(ENERGY_LOG, before + 3)
    assert device.rr(ENERGY_LOG, "1", "1", "4") == first
    assert device.count(ENERGY_LOG, "record-count") == device.count(ENERGY_LOG)  # buffer not full yet
    # the restart is in the log: one log-status record with log-interrupted among the records around it
    around = device.rr(ENERGY_LOG, "2", str(before), "8")  # by sequence number
    assert around[0] == device.rr(ENERGY_LOG, "1", str(before), "1")[0]  # sequence number = position (not full)
    kinds = [d.split(":")[0] for _, d in around]
    assert kinds.count("status") == 1 and around[kinds.index("status")][1] == "status:{false,false,true}", around
    # a boundary right after the restart, before the meter's first poll (a loaded machine), has no value yet
    assert {d for _, d in around if d.startswith("failure")} <= {"failure:property,value-not-initialized"}, around
    assert set(kinds) - {"failure", "..."} == {"status", "uint32_t"}, around
    assert [t for t, _ in around] == sorted(t for t, _ in around)
    # by sequence number, backwards: the records before the reference, oldest first
    assert device.rr(ENERGY_LOG, "2", "3", "-2") == first[1:3]
    # by time: count > 0 starts after the reference time, count < 0 ends before it
    assert device.rr(ENERGY_LOG, "3", *when(first[1][0]).split(), "2") == first[2:4]
    assert device.rr(ENERGY_LOG, "3", *when(first[2][0]).split(), "-2") == first[0:2]
    # a reference older than the whole log reads from its start; one at the last record reads nothing
    assert device.rr(ENERGY_LOG, "3", "2020/01/01", "00:00:00", "1") == first[:1]
    # ReadProperty of the buffer itself is refused (ReadRange only), the other properties read
    out = run_tool(
        device.tools,
        "bacrp",
        DEVICE,
        "trend-log",
        ENERGY_LOG,
        "log-buffer",
        env={"BACNET_BBMD_ADDRESS": "127.0.0.1", "BACNET_BBMD_PORT": str(device.port)},
    )
    assert "read-access-denied" in (out.stdout + out.stderr).lower(), out
    assert device.tool("bacrp", DEVICE, "trend-log", ENERGY_LOG, "logging-type").strip() == "polled"
    assert device.tool("bacrp", DEVICE, "trend-log", ENERGY_LOG, "stop-when-full").strip() == "FALSE"
    assert device.tool("bacrp", DEVICE, "trend-log", ENERGY_LOG, "buffer-size").strip() == "500"
    assert device.tool("bacrp", DEVICE, "trend-log", ENERGY_LOG, "log-interval").strip() == "100"
    # a client that takes 128-octet APDUs gets what fits, oldest first, with first-item and more-items
    client = RawClient(("127.0.0.1", device.port))
    try:
        params = ctx(0, object_id(20, int(ENERGY_LOG))) + ctx(1, unsigned_bytes(131))
        params += opening(3) + app(2, unsigned_bytes(1)) + app(3, unsigned_bytes(100)) + closing(3)
        ans = client.confirmed(SC_READ_RANGE, params, max_apdu_code=1)
    finally:
        client.close()
    assert ans.kind == "complex" and len(ans.data) + 3 <= 128, ans
    tags = decode_tags(ans.data)
    flags, count = tags[2], tags[3]
    assert (flags.number, flags.data) == (3, bytes([5, 0b10100000])), flags  # first-item, more-items
    assert count.number == 4 and 0 < int.from_bytes(count.data, "big") < device.count(ENERGY_LOG)
    log = device.run.log.read_text()
    assert "records reloaded from the journal" in log and "Traceback" not in log


def test_selection_rules_agree_with_the_bacnet_stack_reference_server(bacnet_stack):
    """The ReadRange rules of core/trend_range.py, applied to a model of bacserv's Trend Log 0, pick the records that
    bacnet-stack's own server returns to bacrr, for ranges inside, across and outside its buffer."""
    port = free_udp_port()
    env = {**os.environ, "BACNET_IFACE": "lo", "BACNET_IP_PORT": str(port)}
    server = subprocess.Popen(
        [str(bacnet_stack / "bacserv"), "1234"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:

        def tool(name: str, *args: str) -> str:
            extra = {"BACNET_IP_BROADCAST_PORT": str(port)}  # bacrr's Who-Is reaches bacserv's port
            out = run_tool(bacnet_stack, name, *args, env=extra)
            assert out.returncode == 0, f"{name} {args}: {out.stdout}{out.stderr}"
            return out.stdout

        def rr(*range_args: str) -> list[str]:
            out = tool("bacrr", "1234", "trend-log", "0", "log-buffer", *range_args)
            return [t for t, _ in RECORD.findall(out)]

        def rp(prop: str) -> int:
            return int(tool("bacrp", "--mac", f"127.0.0.1:{port}", "--dnet", "0", "1234", "trend-log", "0", prop))

        end = time.monotonic() + 10
        while True:
            args = ["--mac", f"127.0.0.1:{port}", "--dnet", "0", "1234", "device", "1234", "object-name"]
            out = run_tool(bacnet_stack, "bacrp", *args)
            if out.returncode == 0 or time.monotonic() > end:
                break
            time.sleep(0.2)
        count, total = rp("record-count"), rp("total-record-count")
        assert 10 < count <= total
        # the model: consecutive sequence numbers ending at total, one record every `step` seconds
        stamps = {i: rr("1", str(i), "1")[0] for i in (1, 2, count)}
        t0 = datetime.strptime(stamps[1][:19], "%Y-%m-%d-%H:%M:%S")
        step = (datetime.strptime(stamps[2][:19], "%Y-%m-%d-%H:%M:%S") - t0).total_seconds()
        times = [t0.timestamp() + step * i for i in range(count)]
        assert datetime.fromtimestamp(times[-1]).strftime("%Y-%m-%d-%H:%M:%S") == stamps[count][:19]
        seqs = [total - count + 1 + i for i in range(count)]

        def stamp(i: int) -> str:
            return datetime.fromtimestamp(times[i]).strftime("%Y-%m-%d-%H:%M:%S.00")

        first = seqs[0]
        for ref, n in ((first, 3), (first + 4, -3), (first - 1, 2), (first - 2, -5), (total, 3), (total + 2, -4)):
            expected = tr.by_sequence_number(seqs, ref, n)
            assert rr("2", str(ref), str(n)) == [stamp(i) for i in range(expected.start, expected.stop)], (ref, n)
        for i, delta, n in ((2, 0, 2), (2, 0, -2), (4, 60, 3), (4, 60, -3), (0, -60, 2), (count - 1, 0, 2)):
            ref = times[i] + delta
            expected = tr.by_time(times, ref, n)
            when = datetime.fromtimestamp(ref).strftime("%Y/%m/%d %H:%M:%S").split()
            assert rr("3", *when, str(n)) == [stamp(i) for i in range(expected.start, expected.stop)], (i, delta, n)
        for index, n in ((count - 1, 5), (count + 1, 1), (3, -5)):
            expected = tr.by_position(count, index, n)
            assert rr("1", str(index), str(n)) == [stamp(i) for i in range(expected.start, expected.stop)]
    finally:
        server.kill()
        server.wait(timeout=10)
