"""Fuzzing what meters send: mutated Modbus RTU replies through the real pymodbus master, and mutated M-Bus
telegrams (the libmbus frames plus mutations) through the validator and the record decoder."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import FUZZ_EXAMPLES
from meter_gateway.config import parse_config
from meter_gateway.drivers.base import DriverError
from meter_gateway.drivers.mbus import decode_telegram
from meter_gateway.drivers.modbus import ModbusDriver, crc16
from meter_gateway.mbus_frame import MbusFrameError
from meter_gateway.profiles import load_profiles
from meter_gateway.sim.modbus import RtuSimBus, make_meter

SETTINGS = settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
DATA = Path(__file__).resolve().parents[1] / "data" / "mbus-frames"
FRAMES = [
    bytes(int(t, 16) for t in p.read_text().split())
    for d in ("test-frames", "error-frames")
    for p in sorted((DATA / d).glob("*.hex"))
]
PROFILES = load_profiles()


def mutate(frame: bytes, ops: list[tuple[int, int, int]]) -> bytes:
    out = bytearray(frame)
    for kind, pos, val in ops:
        if not out:
            break
        i = pos % len(out)
        if kind == 0:
            out[i] ^= 1 << (val % 8)
        elif kind == 1:
            del out[i:]
        elif kind == 2:
            out.insert(i, val)
        else:
            del out[i]
    return bytes(out)


operations = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1000), st.integers(0, 255)), max_size=4)


@SETTINGS
@given(index=st.integers(0, len(FRAMES) - 1), ops=operations)
def test_mbus_mutations_are_refused_or_decoded_never_crash(index, ops):
    frame = mutate(FRAMES[index], ops)
    try:
        payload, records = decode_telegram(frame)
    except MbusFrameError:
        return
    # accepted: then it is a whole, checksum-valid long frame with a data header we understand
    assert frame[0] == 0x68 and frame[-1] == 0x16 and (sum(frame[4:-2]) & 0xFF) == frame[-2]
    assert len(records) == len(payload.records)


@SETTINGS
@given(ops=operations, wrong_unit=st.booleans())
def test_mutated_rtu_replies_are_never_published(ops, wrong_unit):
    asyncio.run(_rtu_case(ops, wrong_unit))


async def _rtu_case(ops, wrong_unit) -> None:
    sim = make_meter(1, PROFILES.get("generic"), seed=1)
    sim.model.frozen = True
    line = RtuSimBus([sim])
    original = line.write
    corrupted: list[bool] = []

    def tamper(data: bytes) -> None:
        bad = mutate(data, ops)
        if wrong_unit and bad:
            bad = bytes([bad[0] ^ 0x02]) + bad[1:]
        corrupted.append(bad != data)
        original(bad)

    line.write = tamper
    port = await line.start()
    cfg = parse_config(
        f"buses: [{{id: b, type: modbus_rtu, port: {port}, timeout: 0.05, retries: 0}}]\n"
        "meters: [{id: m, bus: b, address: 1, profile: generic, bacnet_instance_base: 1000}]",
        profiles=PROFILES,
    )
    driver = ModbusDriver(cfg.buses[0], PROFILES, port=port)
    await driver.open()
    try:
        readings = await driver.read(cfg.meters[0], ["Voltage_L1_N", "Active_Energy_Import"])
    except DriverError:
        return
    finally:
        await driver.close()
        await line.close()
    # whatever was accepted decodes to the meter's true values: corruption is never published as a value
    got = {r.point: r.value for r in readings if r.error is None}
    if "Voltage_L1_N" in got:
        assert abs(got["Voltage_L1_N"] - sim.model.values["Voltage_L1_N"]) < 0.01
    if "Active_Energy_Import" in got:
        assert abs(got["Active_Energy_Import"] - sim.model.values["Active_Energy_Import"]) <= 0.011


def test_crc_helper_matches_pymodbus():
    from pymodbus.framer import FramerRTU

    for frame in (b"\x01\x03\x00\x00\x00\x02", b"\x11\x04\x02\x00\x0a"):
        assert crc16(frame) == int.from_bytes(FramerRTU.compute_CRC(frame).to_bytes(2, "big"), "little")
