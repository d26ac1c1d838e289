"""Meter library through real pymodbus masters and the simulated meters: "not available" patterns, plausible
limits, power-factor convention, identification (issue 17)."""

from __future__ import annotations

import logging

import pytest
from pymodbus.client import AsyncModbusTcpClient

from helpers import FAST, BacnetClient, wait_for
from meter_gateway.config import parse_config
from meter_gateway.core.catalogue import load_catalogue
from meter_gateway.core.codec import DataType, WordOrder, encode
from meter_gateway.core.quality import Quality
from meter_gateway.drivers.modbus import ModbusDriver
from meter_gateway.profiles import load_profiles
from meter_gateway.sim.modbus import RtuSimBus, TcpSimServer, make_meter

INT64_NA = [0x8000, 0, 0, 0]
FLOAT32_NAN = [0xFFC0, 0x0000]


def _gateway_yaml(port: int, profile: str) -> str:
    return f"""
gateway: {{name: t}}
buses:
  - {{id: tcp, type: modbus_tcp, host: 127.0.0.1, port: {port}, timeout: 0.3, retries: 0, fail_after: 1,
     backoff_max: 1}}
meters:
  - {{id: m, bus: tcp, address: 1, profile: {profile}, bacnet_instance_base: 1000, modbus_unit: 1,
     poll_intervals: {FAST}}}
upstream: {{bacnet: {{enabled: false}}, modbus_tcp: {{enabled: false}}, prometheus: {{enabled: false}}}}
"""


async def _rtu(profiles, sim):
    server = RtuSimBus([sim])
    port = await server.start()
    cfg = parse_config(
        f"""
buses: [{{id: b, type: modbus_rtu, port: {port}, timeout: 0.3, retries: 0}}]
meters: [{{id: m, bus: b, address: {sim.unit}, profile: {sim.profile.name}, bacnet_instance_base: 1000,
           modbus_unit: 1}}]
""",
        profiles=profiles,
    )
    driver = ModbusDriver(cfg.buses[0], profiles, port=port)
    await driver.open()
    return server, driver, cfg.meters[0]


async def test_int64_not_available_is_no_reading(profiles):
    """iEM3150/3250 have no export counter and answer the int64 NA pattern (was -9.2e15 kWh, quality good)."""
    sim = make_meter(5, profiles.get("schneider_iem3000"), seed=2)
    sim.raw_words["Active_Energy_Export"] = INT64_NA
    sim.raw_words["Voltage_L1_L2"] = FLOAT32_NAN
    server, driver, meter = await _rtu(profiles, sim)
    try:
        got = {
            r.point: r
            for r in await driver.read(meter, ["Active_Energy_Import", "Active_Energy_Export", "Voltage_L1_L2"])
        }
    finally:
        await driver.close()
        await server.close()
    assert got["Active_Energy_Export"].value is None
    assert got["Active_Energy_Export"].error == "meter reports the value as not available"
    assert got["Voltage_L1_L2"].value is None and got["Voltage_L1_L2"].error
    assert got["Active_Energy_Import"].error is None and got["Active_Energy_Import"].value > 0


async def test_not_available_and_implausible_values_are_never_published(profiles):
    """Through the running gateway: NA energy and an out-of-limits voltage are bad data with no number."""
    from meter_gateway.app import Gateway

    sim = make_meter(1, profiles.get("schneider_iem3000"), seed=4)
    sim.raw_words["Active_Energy_Export"] = INT64_NA
    sim.raw_words["Voltage_L1_N"] = encode(3000.0, DataType.FLOAT32, WordOrder.BIG)  # 3 kV on a LV meter
    server = TcpSimServer([sim])
    port = await server.start()
    gw = Gateway(parse_config(_gateway_yaml(port, "schneider_iem3000"), profiles=profiles), profiles)
    await gw.start()
    try:
        assert await wait_for(lambda: gw.table.get("m", "Active_Energy_Import").quality is Quality.GOOD)
        assert await wait_for(lambda: gw.table.get("m", "Voltage_L1_N").quality is Quality.BAD_DATA)
        for point in ("Active_Energy_Export", "Voltage_L1_N"):
            v = gw.table.get("m", point)
            assert v.quality is Quality.BAD_DATA and v.value is None, (point, v)
        assert "plausible" in gw.table.get("m", "Voltage_L1_N").reason
        # the meter's value comes back into range: published again
        del sim.raw_words["Voltage_L1_N"]
        assert await wait_for(lambda: gw.table.get("m", "Voltage_L1_N").quality is Quality.GOOD)
        assert 150 < gw.table.get("m", "Voltage_L1_N").value < 300
    finally:
        await gw.stop()
        await server.close()


@pytest.mark.parametrize("exporting", [False, True])
async def test_power_factor_takes_the_sign_of_active_power(profiles, exporting):
    """SDM630 documents two PF sign conventions: the driver publishes |PF| with the sign of the active power."""
    sim = make_meter(3, profiles.get("eastron_sdm630"), seed=1)
    sim.model.frozen = True
    p = sim.model.values["Active_Power_L1"]
    sim.model.values["Active_Power_L1"] = -abs(p) if exporting else abs(p)
    sim.raw_words["Power_Factor_L1"] = encode(-0.875, DataType.FLOAT32, WordOrder.BIG)  # capacitive, per doc V2
    server, driver, meter = await _rtu(profiles, sim)
    try:
        got = {r.point: r for r in await driver.read(meter, ["Power_Factor_L1"])}
    finally:
        await driver.close()
        await server.close()
    assert got["Power_Factor_L1"].value == (-0.875 if exporting else 0.875)
    assert "Active_Power_L1" in got  # read in the same poll to know the sign


# -- identification -------------------------------------------------------------------------------------------
async def test_scan_tells_sdm630_from_sdm120(profiles):
    """Both answer plausible voltages at 0x0000: only the meter code at 0xFC02 tells them apart."""
    from meter_gateway.drivers.modbus import scan_modbus

    sims = [
        make_meter(4, profiles.get("eastron_sdm630"), seed=1),
        make_meter(9, profiles.get("eastron_sdm120"), seed=2),
    ]
    server = RtuSimBus(sims)
    port = await server.start()
    cfg = parse_config(
        f"buses: [{{id: b, type: modbus_rtu, port: {port}, timeout: 0.2, retries: 0}}]\n"
        "meters: [{id: x, bus: b, address: 4, profile: generic, bacnet_instance_base: 1000}]\n",
        profiles=profiles,
    )
    driver = ModbusDriver(cfg.buses[0], profiles, port=port)
    await driver.open()
    try:
        found = await scan_modbus(driver, [4, 5, 9])
    finally:
        await driver.close()
        await server.close()
    assert [(f["unit"], f["profile"], f["identified"]) for f in found] == [
        (4, "eastron_sdm630", True),
        (9, "eastron_sdm120", True),
    ]
    assert "0xFC02" in found[0]["evidence"]


async def test_auto_profile_and_mismatch_flag_at_start(profiles, caplog):
    """`profile: auto` takes the identified model; a configured profile the meter contradicts is a loud warning
    and a meter-level flag (the meter is still polled with the configured profile)."""
    from meter_gateway.app import Gateway

    sims = [
        make_meter(1, profiles.get("eastron_sdm630"), seed=1),
        make_meter(2, profiles.get("eastron_sdm630"), seed=2),
    ]
    server = TcpSimServer(sims)
    port = await server.start()
    text = f"""
gateway: {{name: t}}
buses:
  - {{id: tcp, type: modbus_tcp, host: 127.0.0.1, port: {port}, timeout: 0.3, retries: 0, fail_after: 1}}
meters:
  - {{id: a, bus: tcp, address: 1, profile: auto, bacnet_instance_base: 1000, modbus_unit: 1,
     poll_intervals: {FAST}}}
  - {{id: wrong, bus: tcp, address: 2, profile: eastron_sdm120, bacnet_instance_base: 2000, modbus_unit: 2,
     poll_intervals: {FAST}}}
upstream:
  bacnet: {{enabled: true, bind: 127.0.0.1, netmask: 8, port: 0, device_instance: 735}}
  modbus_tcp: {{enabled: true, bind: 127.0.0.1, port: 0}}
  prometheus: {{enabled: false}}
"""
    gw = Gateway(parse_config(text, profiles=profiles), profiles)
    await gw.start()
    try:
        assert gw.config.meter("a").profile == "eastron_sdm630"
        assert await wait_for(lambda: gw.table.get("a", "Voltage_L3_N").quality is Quality.GOOD)
        # configured meters are checked in the background, between polls
        assert await wait_for(lambda: gw.table.meter("wrong").profile_warning != "")
        flag = gw.table.meter("wrong").profile_warning
        assert "eastron_sdm120" in flag and "identifies as 'eastron_sdm630'" in flag
        assert gw.table.meter("a").profile_warning == ""
        assert any("PROFILE MISMATCH" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
        # the flag reaches the operator: /health degraded with the reason, and a Prometheus gauge per meter
        from meter_gateway.servers.prometheus import GatewayCollector, health

        code, doc = health(gw.ports)
        assert code == 200 and doc["status"] == "degraded" and doc["profile_mismatch"] == {"wrong": flag}
        fam = next(f for f in GatewayCollector(gw.ports).collect() if f.name == "meter_gateway_meter_profile_mismatch")
        assert {s.labels["meter"]: s.value for s in fam.samples} == {"a": 0.0, "wrong": 1.0}
        # ... and the upstreams: Modbus TCP diagnostics register 30126 of each unit, read by a pymodbus client
        srv = {s.name: s for s in gw.servers}
        host, mport = srv["modbus_tcp"].address()
        client = AsyncModbusTcpClient(host, port=mport, timeout=5, retries=0)
        assert await client.connect()
        try:
            regs = [await client.read_input_registers(125, count=1, device_id=u) for u in (1, 2)]
        finally:
            client.close()
        assert [r.registers for r in regs] == [[0], [1]]
        # ... and BACnet: the meter's Communication_Status reads configuration-error with the fault flag (the flag
        # was raised after the objects were made, so this is the alarm path, not object creation)
        comm = load_catalogue().get("Communication_Status").index
        bac = await BacnetClient.start(srv["bacnet"].address()[1])
        try:
            props = ["present-value", "reliability", "status-flags"]
            ok = (await bac("rpm", obj=f"binary-input,{1000 + comm}", props=props))["values"]
            bad = (await bac("rpm", obj=f"binary-input,{2000 + comm}", props=props))["values"]
        finally:
            await bac.close()
        assert (ok["reliability"], ok["statusFlags"]) == ("noFaultDetected", [0, 0, 0, 0])
        assert (bad["reliability"], bad["statusFlags"]) == ("configurationError", [0, 1, 0, 0])
        assert bad["presentValue"] == ok["presentValue"] == "active"  # the meter answers: communication is ok
    finally:
        await gw.stop()
        await server.close()


IDENTIFIABLE = [n for n in load_profiles().names() if getattr(load_profiles().get(n), "identify", None)]


@pytest.mark.parametrize("profile", IDENTIFIABLE)
async def test_every_simulated_make_identifies_as_itself(profiles, profile):
    from meter_gateway.drivers.identify import identify_unit

    prof = profiles.get(profile)
    variant = prof.variants[-1].name if prof.variants else None
    sim = make_meter(6, prof, seed=5)
    sim.variant = variant
    sim.__post_init__()  # rebuild the register image with the variant's identification registers
    server, driver, _ = await _rtu(profiles, sim)
    try:
        ident = await identify_unit(driver, 6, profiles)
    finally:
        await driver.close()
        await server.close()
    assert (ident.profile, ident.variant) == (profile, variant)


async def test_variant_without_export_register_leaves_export_unsupported(profiles):
    """EM340 PFA ('easy connection') adds export to import: the gateway offers no export value for it."""
    from meter_gateway.app import Gateway
    from meter_gateway.config import ConfigError

    text = _gateway_yaml(1, "carlo_gavazzi_em340").replace("modbus_unit: 1,", "modbus_unit: 1, variant: pfa,")
    gw = Gateway(parse_config(text, profiles=profiles), profiles)
    assert gw.table.get("m", "Active_Energy_Export").quality is Quality.UNSUPPORTED
    assert gw.table.supports("m", "Active_Energy_Import")
    with pytest.raises(ConfigError, match="no variant 'pfz'"):
        parse_config(text.replace("variant: pfa", "variant: pfz"), profiles=profiles)


async def test_scan_command_proposes_the_identified_profile(profiles, tmp_path):
    """`meter-gateway scan` as a user runs it, against simulated meters behind a loopback Modbus TCP port."""
    import asyncio
    import sys

    sims = [
        make_meter(1, profiles.get("eastron_sdm630"), seed=1),
        make_meter(2, profiles.get("eastron_sdm230"), seed=2),
    ]
    server = TcpSimServer(sims)
    port = await server.start()
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(
        f"buses: [{{id: tcp, type: modbus_tcp, host: 127.0.0.1, port: {port}, timeout: 0.3, retries: 0}}]\n"
        "meters: [{id: x, bus: tcp, address: 9, profile: generic, bacnet_instance_base: 1000}]\n"
    )
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "meter_gateway.cli",
            "scan",
            "-c",
            str(cfg),
            "tcp",
            "--first",
            "1",
            "--last",
            "3",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await server.close()
    text = out.decode()
    assert proc.returncode == 0, err.decode()
    lines = [ln for ln in text.splitlines() if "address:" in ln]
    assert len(lines) == 2, text
    assert "profile: eastron_sdm630, variant: direct" in lines[0] and "# identified" in lines[0]
    assert "profile: eastron_sdm230" in lines[1] and "GUESS" in lines[1]


@pytest.mark.parametrize(
    ("meter_code", "flagged"),
    [(None, False), (0x0084, True), (0x0070, False)],  # refused (early firmware), SDM72 V1 code, SDM630 code
)
async def test_mismatch_needs_a_contradicting_answer(profiles, meter_code, flagged):
    """A meter that refuses the identification register proves nothing; one that answers another code is flagged."""
    from meter_gateway.core.catalogue import load_catalogue
    from meter_gateway.core.table import PointTable
    from meter_gateway.drivers.identify import check_bus

    sim = make_meter(4, profiles.get("eastron_sdm630"), seed=3)
    sim.set_identification(3, 0xFC02, meter_code)
    server, driver, meter = await _rtu(profiles, sim)
    table = PointTable(load_catalogue(), clock=lambda: 0.0)
    table.add_meter(meter.id, ["Voltage_L1_N"], {})
    try:
        kept = await check_bus(driver, [meter], profiles, table)
    finally:
        await driver.close()
        await server.close()
    assert [m.id for m in kept] == [meter.id]  # a configured meter is always polled
    assert bool(table.meter(meter.id).profile_warning) is flagged
    if flagged:
        assert "0xFC02" in table.meter(meter.id).profile_warning and "132" in table.meter(meter.id).profile_warning


async def test_auto_profile_survives_an_unrelated_reload_and_a_changed_meter_is_identified_again(
    profiles, tmp_path, caplog, monkeypatch
):
    """Reload (the function SIGHUP runs) with `profile: auto` meters: an unrelated change keeps the identified
    profile, the bus and the values; a changed meter address restarts the bus and identifies both meters again."""
    from meter_gateway.app import Gateway
    from meter_gateway.commands._common import load_checked
    from meter_gateway.commands.run import reload

    caplog.set_level(logging.INFO)
    monkeypatch.setattr("meter_gateway.commands.run.setup_logging", lambda *a: None)  # keep pytest's log capture
    sims = [make_meter(u, profiles.get(p), seed=u) for u, p in ((1, "eastron_sdm630"), (2, "eastron_sdm120"))]
    sims.append(make_meter(3, profiles.get("abb_b23"), seed=3))
    server = TcpSimServer(sims)
    port = await server.start()
    text = f"""
gateway: {{name: before}}
buses:
  - {{id: tcp, type: modbus_tcp, host: 127.0.0.1, port: {port}, timeout: 0.3, retries: 0, fail_after: 1}}
meters:
  - {{id: a, bus: tcp, address: 1, profile: auto, bacnet_instance_base: 1000, modbus_unit: 1,
     poll_intervals: {FAST}}}
  - {{id: b, bus: tcp, address: 2, profile: auto, bacnet_instance_base: 2000, modbus_unit: 2,
     poll_intervals: {FAST}}}
upstream: {{bacnet: {{enabled: false}}, modbus_tcp: {{enabled: false}}, prometheus: {{enabled: false}}}}
"""
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    gw = Gateway(*load_checked(path, preflight=False), config_path=path)
    await gw.start()

    def identified(meter: str) -> int:
        return sum(f"meter {meter}: profile auto identified" in r.getMessage() for r in caplog.records)

    try:
        assert [gw.config.meter(m).profile for m in "ab"] == ["eastron_sdm630", "eastron_sdm120"]
        assert await wait_for(lambda: gw.table.get("a", "Voltage_L3_N").quality is Quality.GOOD)
        runner, before = gw.buses["tcp"], gw.table.get("a", "Active_Energy_Import")
        # an unrelated change: nothing of the bus or the meters is replaced, nothing is identified again
        path.write_text(text.replace("name: before", "name: after"))
        assert await reload(gw, path)
        assert gw.config.gateway.name == "after" and gw.buses["tcp"] is runner
        assert [gw.config.meter(m).profile for m in "ab"] == ["eastron_sdm630", "eastron_sdm120"]
        assert gw.table.get("a", "Active_Energy_Import").read_time >= before.read_time  # values kept, not reset
        replaced = [r.getMessage() for r in caplog.records if "configuration reloaded (replaced" in r.getMessage()]
        assert len(replaced) == 1 and "buses" not in replaced[0] and "meters" not in replaced[0], replaced
        assert (identified("a"), identified("b")) == (1, 1)
        # meter a now points at another unit: the bus restarts, and both auto meters are identified again
        path.write_text(text.replace("address: 1, profile: auto", "address: 3, profile: auto"))
        assert await reload(gw, path)
        assert gw.buses["tcp"] is not runner
        assert [gw.config.meter(m).profile for m in "ab"] == ["abb_b23", "eastron_sdm120"]
        assert (identified("a"), identified("b")) == (2, 2)
        assert any("replaced buses: tcp; meters: a, b" in r.getMessage() for r in caplog.records)
        assert await wait_for(lambda: gw.table.get("a", "Voltage_L3_N").quality is Quality.GOOD)
        assert gw.table.meter("a").points == gw.meter_points("a")  # the table follows the new profile
    finally:
        await gw.stop()
        await server.close()
