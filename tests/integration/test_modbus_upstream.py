"""The gateway's Modbus TCP slave read and written by real clients over loopback."""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import subprocess

import pytest
from pymodbus.client import AsyncModbusTcpClient

from helpers import FAST, more_polls, wait_for
from meter_gateway.core.catalogue import PointKind, load_catalogue
from meter_gateway.core.quality import Quality
from meter_gateway.core.upstream_map import DIAGNOSTICS

CAT = load_catalogue()
DT = AsyncModbusTcpClient.DATATYPE

READ_YAML = f"""
gateway: {{name: up}}
buses:
  - {{id: rtu, type: modbus_rtu, simulated: true, timeout: 0.2, retries: 0, fail_after: 1, backoff_max: 1}}
meters:
  - {{id: gen, bus: rtu, address: 1, profile: generic, bacnet_instance_base: 1000, modbus_unit: 1,
     poll_intervals: {FAST}}}
  - {{id: sdm, bus: rtu, address: 2, profile: eastron_sdm630, mid: true, bacnet_instance_base: 1100, modbus_unit: 2,
     poll_intervals: {FAST}}}
  - {{id: one, bus: rtu, address: 3, profile: eastron_sdm120, bacnet_instance_base: 1200, modbus_unit: 3,
     poll_intervals: {FAST}}}
upstream:
  bacnet: {{enabled: false}}
  prometheus: {{enabled: false}}
  modbus_tcp: {{enabled: true, bind: 127.0.0.1, port: 0}}
"""


async def _client(gw) -> AsyncModbusTcpClient:
    host, port = gw.servers[0].address()
    c = AsyncModbusTcpClient(host, port=port, timeout=5, retries=0)
    assert await c.connect()
    return c


async def _settled(gw) -> None:
    """Wait for every supported point of every meter to be good, then freeze the simulated loads."""

    def good() -> bool:
        for mid in gw.table.meter_ids:
            vals = gw.table.meter_values(mid)
            if any(v.quality not in (Quality.GOOD, Quality.UNSUPPORTED) for v in vals.values()):
                return False
        return True

    assert await wait_for(good, 15)
    for sim in gw.simulators.values():
        sim.model.frozen = True
    assert await more_polls(gw)  # a poll of every class with frozen values (one may have been in flight)


def _read_point(regs_by_table, p):
    m = p.modbus
    if m.type == "bit":
        return regs_by_table[m.table][m.address]
    words = regs_by_table[m.table][m.address : m.address + 2]
    if m.type == "uint32":
        raw = AsyncModbusTcpClient.convert_from_registers(words, DT.UINT32)
        return None if raw == 0xFFFFFFFF else (raw * p.resolution if p.resolution else raw)
    v = AsyncModbusTcpClient.convert_from_registers(words, DT.FLOAT32)
    return None if math.isnan(v) else v


async def _read_all(c, unit):
    out = {}
    r = await c.read_input_registers(0, count=8, device_id=unit)
    out["input"] = r.registers
    hr = (await c.read_holding_registers(0, count=84, device_id=unit)).registers
    cfg = (await c.read_holding_registers(1000, count=18, device_id=unit)).registers
    out["holding"] = {**dict(enumerate(hr)), **{1000 + i: v for i, v in enumerate(cfg)}}
    out["discrete_input"] = (await c.read_discrete_inputs(0, count=23, device_id=unit)).bits
    out["coil"] = (await c.read_coils(0, count=3, device_id=unit)).bits
    return out


def _expected(sim, p):
    return sim.model.values.get(p.name)


async def test_every_point_matches_the_simulator(gateways):
    gw = await gateways(READ_YAML)
    await _settled(gw)
    c = await _client(gw)
    try:
        for mid, unit in (("gen", 1), ("sdm", 2), ("one", 3)):
            regs = await _read_all(c, unit)
            regs["holding"] = [regs["holding"].get(i, 0) for i in range(1018)]
            supported = gw.meter_points(mid)
            sim = gw.simulators[mid]
            prof = gw.profiles.get(gw.config.meter(mid).profile)
            checked = 0
            for p in CAT:
                if p.kind is PointKind.COMMAND:
                    continue
                got = _read_point(regs, p)
                if p.name == "Communication_Status":
                    assert got is True
                    continue
                if p.name not in supported:
                    assert got in (None, False), (mid, p.name, got)  # unsupported: NaN / 0xFFFFFFFF / 0
                    continue
                want = _expected(sim, p)
                if isinstance(want, bool) or p.modbus.type == "bit":
                    assert bool(got) == bool(want), (mid, p.name)
                else:
                    tol = max(abs(prof.scale_of(p.name)), p.resolution or 0) * 1.01
                    assert math.isclose(float(got), float(want), rel_tol=1e-6, abs_tol=tol), (mid, p.name, got, want)
                checked += 1
            assert checked == len([n for n in supported if CAT.get(n).kind is not PointKind.COMMAND]) - 1
    finally:
        c.close()


async def test_exceptions_for_unknown_unit_unmapped_and_partial_requests(gateways):
    gw = await gateways(READ_YAML)
    await _settled(gw)
    c = await _client(gw)
    try:
        r = await c.read_holding_registers(0, count=2, device_id=9)
        assert r.isError() and r.exception_code == 0x0A
        r = await c.read_holding_registers(84, count=2, device_id=1)  # past the measurement block
        assert r.isError() and r.exception_code == 0x02
        r = await c.read_holding_registers(80, count=10, device_id=1)  # spans mapped and unmapped: one answer
        assert r.isError() and r.exception_code == 0x02
        r = await c.read_holding_registers(10, count=12, device_id=1)  # a hole inside the block reads as 0
        assert not r.isError() and r.registers[2:10] == [0] * 8
        r = await c.read_input_registers(100, count=len(DIAGNOSTICS) + 6, device_id=1)
        assert not r.isError() and r.registers[0] == 1  # communication ok
    finally:
        c.close()


async def test_unplugged_meter_reads_0x0b_then_recovers(gateways):
    gw = await gateways(READ_YAML)
    await _settled(gw)
    c = await _client(gw)
    try:
        gw.simulators["gen"].online = False
        loop = asyncio.get_running_loop()
        t0 = loop.time()

        async def failing():
            r = await c.read_holding_registers(0, count=2, device_id=1)
            return r.isError() and r.exception_code == 0x0B

        while not await failing():
            assert loop.time() - t0 < 10, "no 0x0B after 10 s"
            await asyncio.sleep(0.1)
        # communication status and the diagnostics stay readable; the other meters are unaffected
        r = await c.read_discrete_inputs(0, count=1, device_id=1)
        assert not r.isError() and r.bits[0] is False
        diag = await c.read_input_registers(100, count=1, device_id=1)
        assert diag.registers == [0]
        assert not (await c.read_holding_registers(0, count=2, device_id=2)).isError()
        gw.simulators["gen"].online = True
        t0 = loop.time()
        while await failing():
            assert loop.time() - t0 < 10, "still 0x0B 10 s after the meter came back"
            await asyncio.sleep(0.1)
    finally:
        c.close()


async def test_independent_client_pymodbustcp(gateways):
    from pyModbusTCP.client import ModbusClient

    gw = await gateways(READ_YAML)
    await _settled(gw)
    host, port = gw.servers[0].address()

    def read():
        cl = ModbusClient(host=host, port=port, unit_id=2, timeout=5, auto_open=True)
        try:
            return cl.read_holding_registers(20, 2), cl.read_input_registers(0, 2), cl.read_discrete_inputs(0, 1)
        finally:
            cl.close()

    volts, energy, comm = await asyncio.to_thread(read)
    v = AsyncModbusTcpClient.convert_from_registers(volts, DT.FLOAT32)
    assert math.isclose(v, gw.simulators["sdm"].model.values["Voltage_L1_N"], abs_tol=0.01)
    e = AsyncModbusTcpClient.convert_from_registers(energy, DT.UINT32) / 100
    assert math.isclose(e, gw.table.get("sdm", "Active_Energy_Import").value, abs_tol=0.01)
    assert comm == [True]


def _mbpoll() -> str | None:
    if shutil.which("mbpoll"):
        return shutil.which("mbpoll")
    if shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", "mbpoll"], capture_output=True, timeout=300)
        if not shutil.which("mbpoll"):
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=300)
            subprocess.run(["apt-get", "install", "-y", "-q", "mbpoll"], capture_output=True, timeout=300)
    return shutil.which("mbpoll")


async def test_independent_client_mbpoll(gateways):
    mbpoll = await asyncio.to_thread(_mbpoll)
    if mbpoll is None:
        pytest.skip("mbpoll is not installed and could not be installed with apt-get")
    gw = await gateways(READ_YAML)
    await _settled(gw)
    host, port = gw.servers[0].address()
    # Modicon 40021 = Voltage_L1_N of unit 2, float32 high word first (-B big-endian words)
    res = await asyncio.to_thread(
        subprocess.run,
        [mbpoll, "-m", "tcp", "-a", "2", "-r", "21", "-c", "1", "-t", "4:float", "-B", "-1", "-p", str(port), host],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("[21]"))
    assert math.isclose(float(line.split()[1]), gw.simulators["sdm"].model.values["Voltage_L1_N"], abs_tol=0.01)
    res = await asyncio.to_thread(
        subprocess.run,
        [mbpoll, "-m", "tcp", "-a", "9", "-r", "1", "-c", "1", "-1", "-p", str(port), host],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "Gateway path" in res.stdout + res.stderr or res.returncode != 0


def _audit(gw):
    path = gw.write_service.audit.path
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("limit", ["max_connections", "max_connections_per_address"])
async def test_beyond_the_connection_limit_the_longest_idle_client_makes_room(gateways, limit):
    """A new client is always served: beyond the limit, the connection idle the longest is closed (not the new one)."""
    gw = await gateways(READ_YAML.replace("port: 0}", f"port: 0, {limit}: 4}}"))
    assert await wait_for(lambda: gw.table.is_online("gen"), 10)
    host, port = gw.servers[0].address()
    request = bytes.fromhex("000700000006010300140002")  # unit 1, read holding 20-21

    async def ask(reader, writer) -> bytes:
        writer.write(request)
        await writer.drain()
        try:
            async with asyncio.timeout(5):
                return await reader.read(64)
        except ConnectionError:
            return b""

    async def connect():
        return await asyncio.open_connection(host, port)

    kept = [await connect() for _ in range(4)]
    for r, w in kept:
        assert (await ask(r, w))[:2] == b"\x00\x07"
    for _ in range(3):  # each new client is served; the one idle the longest is closed to make room
        new = await connect()
        assert (await ask(*new))[7] == 3
        r, w = kept.pop(0)
        async with asyncio.timeout(5):
            assert await r.read(64) == b"", "the longest idle connection was closed"
        w.close()
        kept.append(new)
    for r, w in kept:  # the others are not disturbed
        assert (await ask(r, w))[7] == 3
    for _r, w in kept:
        w.close()


async def test_repeated_reads_follow_every_table_change(gateways):
    """Replies to a repeated read are remembered between table changes: each change must show in the next read."""
    gw = await gateways(READ_YAML)
    await _settled(gw)
    c = await _client(gw)
    sim = gw.simulators["gen"]
    volts = CAT.get("Voltage_L1_N").modbus.address
    try:
        first = await c.read_holding_registers(0, count=50, device_id=1)
        again = await c.read_holding_registers(0, count=50, device_id=1)
        assert not first.isError() and first.registers == again.registers
        for marker in (231.5, 229.25, 231.5):
            sim.model.values["Voltage_L1_N"] = marker
            assert await wait_for(lambda m=marker: gw.table.get("gen", "Voltage_L1_N").value == m, 10)
            r = await c.read_holding_registers(0, count=50, device_id=1)
            got = AsyncModbusTcpClient.convert_from_registers(r.registers[volts : volts + 2], DT.FLOAT32)
            assert got == marker
            assert r.registers[:volts] == first.registers[:volts]  # the rest of the block is unchanged
    finally:
        c.close()


async def test_a_pipelined_burst_larger_than_one_read_is_answered_in_order(gateways):
    """A burst of 400 pipelined requests (4,800 bytes) gets 400 answers, in order: pymodbus drops its receive buffer
    beyond 516 bytes, so client connections are read 256 bytes at a time (reads end mid-request)."""
    from meter_gateway.servers.modbus_tcp import RECV_SIZE

    gw = await gateways(READ_YAML)
    assert await wait_for(lambda: gw.table.is_online("gen"), 10)
    host, port = gw.servers[0].address()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        n = 400
        burst = b"".join(bytes.fromhex(f"{tid:04x}00000006010300140002") for tid in range(n))
        assert len(burst) > RECV_SIZE and RECV_SIZE % 12
        writer.write(burst)
        await writer.drain()
        async with asyncio.timeout(20):
            answers = [await reader.readexactly(13) for _ in range(n)]  # MBAP 7 + fc, byte count, 2 registers
        assert [int.from_bytes(a[:2], "big") for a in answers] == list(range(n))
        assert all(a[7:9] == b"\x03\x04" for a in answers)
        assert len({a[9:] for a in answers}) == 1  # one value, read from the table each time
        handlers = gw.servers[0]._server.handlers()
        assert handlers and all(h.transport.max_size == RECV_SIZE for h in handlers)
    finally:
        writer.close()
