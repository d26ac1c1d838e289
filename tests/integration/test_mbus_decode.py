"""M-Bus records as real meters send them, end to end over a pty pair: a heat meter is refused at its first read
(wrong device, nothing published), vendor habits are read, unmapped records are logged once per meter, and the
command line shows every record (`read --records`) and proposes profiles (`scan`)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys

import pytest

from helpers import FAST, wait_for
from meter_gateway.config import parse_config
from meter_gateway.core.quality import Quality
from meter_gateway.drivers.base import WrongDevice
from meter_gateway.drivers.mbus import MbusDriver
from meter_gateway.profiles import load_profiles
from meter_gateway.sim.mbus import MbusSimBus, make_mbus_meter

PROFILES = load_profiles()
MEDIUM_HEAT = 0x04


def gateway_yaml(port: str) -> str:
    return f"""
gateway: {{name: mbus-decode}}
buses:
  - {{id: mb, type: mbus, port: {port}, parity: N, timeout: 0.3, retries: 0, fail_after: 1, backoff_max: 1}}
meters:
  - {{id: heat, bus: mb, address: 7, profile: mbus_generic, bacnet_instance_base: 1000, poll_intervals: {FAST}}}
  - {{id: abb, bus: mb, address: 8, profile: mbus_abb_ab, bacnet_instance_base: 2000, poll_intervals: {FAST}}}
  - {{id: iem, bus: mb, address: 9, profile: mbus_generic, bacnet_instance_base: 3000, poll_intervals: {FAST}}}
  - {{id: elt, bus: mb, address: 10, profile: mbus_generic, bacnet_instance_base: 4000, poll_intervals: {FAST}}}
upstream: {{bacnet: {{enabled: false}}, modbus_tcp: {{enabled: false}}, prometheus: {{enabled: false}}}}
"""


@pytest.fixture
async def line():
    heat = make_mbus_meter("heat", 7, PROFILES.get("mbus_generic"), 0)
    heat.medium = MEDIUM_HEAT  # answers like a heat meter: the generic electricity profile must refuse it
    heat.manufacturer = "KAM"
    abb = make_mbus_meter("abb", 8, PROFILES.get("mbus_abb_ab"), 1)  # sends VIFE 0x00 after each VIF
    iem = make_mbus_meter("iem", 9, PROFILES.get("mbus_schneider_iem3000"), 2)  # read with the generic profile
    elt = make_mbus_meter("elt", 10, PROFILES.get("mbus_eltako"), 3)  # energy per tariff only, read as generic
    sim = MbusSimBus([heat, abb, iem, elt])
    port = await sim.start()
    yield sim, port
    await sim.close()


async def test_a_heat_meter_is_refused_at_its_first_read(line):
    _sim, port = line
    cfg = parse_config(gateway_yaml(port), profiles=PROFILES)
    driver = MbusDriver(cfg.buses[0], PROFILES, port=port)
    await driver.open()
    try:
        with pytest.raises(WrongDevice, match=r"wrong device: the meter reports medium heat \(outlet\)"):
            await driver.read(cfg.meter("heat"), ["Active_Energy_Import", "Active_Power_Total"])
    finally:
        await driver.close()


async def test_gateway_publishes_nothing_of_a_wrong_device(line, gateways, caplog):
    _sim, port = line
    caplog.set_level(logging.INFO, logger="meter_gateway")
    gw = await gateways(gateway_yaml(port))
    assert await wait_for(lambda: gw.table.get("heat", "Active_Energy_Import").quality is Quality.WRONG_DEVICE, 10)
    assert await wait_for(lambda: gw.table.get("abb", "Active_Energy_Import").quality is Quality.GOOD, 10)
    assert await wait_for(lambda: gw.table.get("iem", "Active_Power_Total").quality is Quality.GOOD, 10)
    polls = gw.runner_of("heat").schedules["heat"].attempts
    assert await wait_for(lambda: gw.runner_of("heat").schedules["heat"].attempts >= polls + 2, 10)
    for name, v in gw.table.meter_values("heat").items():
        if name == "Communication_Status":
            assert v.value is False
            continue
        assert v.quality in (Quality.WRONG_DEVICE, Quality.UNSUPPORTED) and v.value is None, name
    assert "heat (outlet)" in gw.table.get("heat", "Active_Energy_Import").reason
    refused = [r for r in caplog.records if "meter heat: refused" in r.getMessage()]
    assert len(refused) == 1 and refused[0].levelno == logging.ERROR and not refused[0].exc_info
    # an iEM3000 read with the generic profile: the vendor records stay unmapped, listed once for the meter
    unmapped = [r for r in caplog.records if "M-Bus meter iem" in r.getMessage() and "not mapped" in r.getMessage()]
    assert len(unmapped) == 1
    assert "vendor-specific VIFE FF09" in unmapped[0].getMessage() and "sub-unit 1" in unmapped[0].getMessage()
    assert "Active_Energy_Export" not in {n for n, v in gw.table.meter_values("iem").items() if v.is_good}
    # and the points the generic profile promises that this meter gives through vendor tags: one line (INFO: its
    # energy register is read)
    missing = [r for r in caplog.records if "M-Bus meter iem" in r.getMessage() and "no record gives" in r.getMessage()]
    assert len(missing) == 1 and missing[0].levelno == logging.INFO
    assert "Voltage_L1_N" in missing[0].getMessage() and "SEC version 1" in missing[0].getMessage()
    # an Eltako (energy per tariff only) read with the generic profile: no energy, and a WARNING says so, once
    assert await wait_for(lambda: gw.table.get("elt", "Communication_Status").value is True, 10)
    polls = gw.runner_of("elt").schedules["elt"].attempts
    assert await wait_for(lambda: gw.runner_of("elt").schedules["elt"].attempts >= polls + 2, 10)
    assert gw.table.get("elt", "Active_Energy_Import").quality is Quality.UNKNOWN
    missing = [r for r in caplog.records if "M-Bus meter elt" in r.getMessage() and "no record gives" in r.getMessage()]
    assert len(missing) == 1 and missing[0].levelno == logging.WARNING
    assert "Active_Energy_Import" in missing[0].getMessage() and "ELT version 1" in missing[0].getMessage()


async def _cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "meter_gateway.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    return proc.returncode, out.decode(), err.decode()


async def test_read_records_shows_every_record_beside_its_point(line, tmp_path):
    _sim, port = line
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(gateway_yaml(port))
    code, out, err = await _cli("read", "-c", str(cfg), "iem", "--records", "--format", "json")
    assert code == 0, err
    doc = json.loads(out)
    records = doc["records"]
    assert doc["header"]["manufacturer"] == "SEC" and doc["header"]["medium"] == "electricity (0x02)"
    assert len(records) == len(PROFILES.get("mbus_schneider_iem3000").points)
    for r in records:
        assert (r["point"] is None) != (r["why_not"] is None), r  # a point, or the reason there is none
    by_point = {r["point"]: r for r in records if r["point"]}
    assert by_point["Active_Energy_Import"]["vib"] == "04" and by_point["Active_Energy_Import"]["tariff"] == 0
    assert {r["why_not"] for r in records if r["tag"] == "FF09"} == {"vendor-specific VIFE FF09"}
    code, out, err = await _cli("read", "-c", str(cfg), "heat", "--records")
    assert code == 1 and "wrong-device" in out and "medium heat (outlet) (0x04)" in out, out + err


async def test_scan_proposes_a_profile_per_meter_or_says_none_matches(line, tmp_path):
    _sim, port = line
    cfg = tmp_path / "gateway.yaml"
    text = gateway_yaml(port)
    cfg.write_text(text[: text.index("meters:")] + "meters: []\n" + text[text.index("upstream:") :])  # a new line
    code, out, err = await _cli("scan", "-c", str(cfg), "mb", "--first", "6", "--last", "10", "--no-secondary")
    assert code == 0, err
    lines = {ln.split("address: ")[1].split(",")[0]: ln for ln in out.splitlines() if "address: " in ln}
    assert "profile: CHOOSE" in lines["7"] and "none matches: KAM reports medium heat" in lines["7"]
    assert "profile: mbus_abb_ab" in lines["8"]
    assert "profile: mbus_schneider_iem3000" in lines["9"]
    assert "profile: mbus_eltako" in lines["10"]
