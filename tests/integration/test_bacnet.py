"""The gateway's BACnet/IP device against a bacpypes3 client running in another process (distinct UDP ports)."""

from __future__ import annotations

import asyncio
import socket
import sys

import pytest

from helpers import FAST, BacnetClient, audit_attempts, more_polls, wait_for
from meter_gateway.aio import cancel_and_wait
from meter_gateway.bacnet_model import object_specs
from meter_gateway.config import parse_config
from meter_gateway.core.quality import Quality
from meter_gateway.profiles import load_profiles

METERS = f"""
  - {{id: gen, bus: rtu, address: 1, profile: generic, mid: false, allow_config_writes: true,
     bacnet_instance_base: 1000, modbus_unit: 1, poll_intervals: {FAST}}}
  - {{id: sdm, bus: rtu, address: 2, profile: eastron_sdm630, mid: true, allow_config_writes: true,
     bacnet_instance_base: 2000, modbus_unit: 2, poll_intervals: {FAST}}}
  - {{id: midgen, bus: rtu, address: 3, profile: generic, mid: true, allow_config_writes: true,
     bacnet_instance_base: 3000, modbus_unit: 3, poll_intervals: {FAST}}}
"""


def yaml_for(
    meters: str = METERS, writes: str = "{enabled: true, allow_bacnet: [127.0.0.0/8]}", extra_bacnet: str = ""
) -> str:
    return f"""
gateway: {{name: bacnet-test, location: Plant room}}
buses:
  - {{id: rtu, type: modbus_rtu, simulated: true, timeout: 0.2, retries: 0, fail_after: 1, backoff_max: 1}}
meters:
{meters}
upstream:
  bacnet: {{enabled: true, bind: 127.0.0.1, netmask: 8, port: 0, device_instance: 599{extra_bacnet}}}
  modbus_tcp: {{enabled: false}}
  prometheus: {{enabled: false}}
writes: {writes}
"""


@pytest.fixture
async def bacnet(gateways):
    """Start a gateway with a BACnet device and a client process; both stop at the end."""
    clients: list[BacnetClient] = []

    async def make(text: str | None = None):
        gw = await gateways(text or yaml_for())
        port = gw.servers[0].address()[1]
        client = await BacnetClient.start(port)
        clients.append(client)
        assert await wait_for(lambda: all(gw.table.is_online(m) for m in gw.table.meter_ids), 10)
        return gw, client

    yield make
    for c in clients:
        await c.close()


async def test_who_is_and_device_properties(bacnet):
    gw, c = await bacnet()
    assert (await c("whois"))["devices"] == [599]
    assert (await c("whois", range=[600, 700]))["devices"] == []
    dev = await c("rpm", obj="device,599", props=["object-name", "location", "vendor-identifier", "object-list"])
    vals = dev["values"]
    assert vals["objectName"] == "bacnet-test" and vals["location"] == "Plant room"
    specs = object_specs(gw.config, gw.catalogue, {m: gw.meter_points(m) for m in gw.table.meter_ids})
    assert len(vals["objectList"]) == len(specs) + 2  # + device + network port


async def test_read_every_object_type(bacnet):
    gw, c = await bacnet()
    assert await wait_for(lambda: gw.table.get("gen", "Demand_Interval").quality is Quality.GOOD, 10)
    sim = gw.simulators["gen"].model
    sim.frozen = True
    assert await more_polls(gw)  # the table holds frozen values
    # accumulator: 0.01 kWh units with scale 10^-2
    acc = (
        await c(
            "rpm",
            obj="accumulator,1001",
            props=["present-value", "scale", "units", "object-name", "status-flags", "reliability"],
        )
    )["values"]
    assert acc["objectName"] == "gen.Active_Energy_Import"
    assert abs(acc["presentValue"] / 100 - gw.table.get("gen", "Active_Energy_Import").value) < 0.006
    assert acc["units"] == "kilowattHours" and acc["reliability"] == "noFaultDetected"
    ai = (await c("rpm", obj="analog-input,1011", props=["all"]))["values"]
    assert abs(ai["presentValue"] - sim.values["Voltage_L1_N"]) < 0.01 and ai["units"] == "volts"
    assert ai["objectName"] == "gen.Voltage_L1_N" and "covIncrement" in ai
    bi = (await c("rpm", obj="binary-input,1039", props=["present-value", "active-text", "inactive-text"]))["values"]
    assert bi == {"presentValue": "active", "activeText": "valid", "inactiveText": "invalid"}
    msv = await c("rpm", obj="multi-state-value,1037", props=["present-value", "state-text", "number-of-states"])
    assert msv["values"] == {"presentValue": 1, "stateText": ["import", "export"], "numberOfStates": 2}
    av = (await c("rp", obj="analog-value,1047", prop="present-value"))["value"]
    assert av == 15.0
    bo = (await c("rp", obj="binary-output,1030", prop="present-value"))["value"]
    assert bo == "inactive"
    comm = (await c("rp", obj="binary-input,1032", prop="present-value"))["value"]
    assert comm == "active"
    req = (await c("rpm", obj="analog-input,1005", props=["required"]))["values"]
    assert {"presentValue", "statusFlags", "units", "objectName"} <= set(req)
    # points the single-phase-less SDM630 profile lacks are not created; its THD exists
    assert "error" in await c("rp", obj="analog-value,2045", prop="present-value")  # no CT ratio on SDM630
    assert "error" not in await c("rp", obj="analog-input,2028", prop="present-value")


async def test_writes_follow_the_policy(bacnet, tmp_path):
    gw, c = await bacnet()
    assert await wait_for(lambda: gw.table.get("gen", "Demand_Interval").quality is Quality.GOOD, 10)
    assert (await c("wp", obj="analog-value,1047", value=30.0)) == {"ok": True}  # other config, non-MID
    assert gw.table.get("gen", "Demand_Interval").value == 30
    assert gw.simulators["gen"].model.values["Demand_Interval"] == 30
    assert "value-out-of-range" in (await c("wp", obj="analog-value,1047", value=99.0))["error"]
    assert "write-access-denied" in (await c("wp", obj="analog-value,1049", value=9.0))["error"]  # comm config
    assert "unknown-object" in (await c("wp", obj="analog-value,2045", value=200.0))["error"]  # SDM630 has no CT
    assert "write-access-denied" in (await c("wp", obj="analog-value,3045", value=200.0))["error"]  # MID metrology
    assert (await c("wp", obj="analog-value,3047", value=20.0)) == {"ok": True}  # MID: other config allowed
    assert "write-access-denied" in (await c("wp", obj="analog-input,1011", value=1.0))["error"]  # measurement
    assert "write-access-denied" in (await c("wp", obj="accumulator,2001", value=0))["error"]  # MID energy
    assert (await c("wp", obj="binary-output,1030", value="active")) == {"ok": True}  # reset peak demand
    assert gw.simulators["gen"].writes[-1].function == 5
    # commandable: present-value follows the priority array (the meter's pulse is done, the command stays)
    assert (await c("rp", obj="binary-output,1030", prop="present-value"))["value"] == "active"
    # other properties are read-only (tests/conformance covers every property of every object)
    records = audit_attempts(gw.write_service.audit.path)
    expected = ["accepted", "out-of-range", "denied", "denied", "denied", "accepted", "denied", "denied", "accepted"]
    assert [r["decision"] for r in records] == expected
    assert all(r["protocol"] == "bacnet" and r["source"] == "127.0.0.1" for r in records)


async def test_writes_disabled_are_denied(bacnet):
    gw, c = await bacnet(yaml_for(writes="{enabled: false}"))
    assert "write-access-denied" in (await c("wp", obj="analog-value,1047", value=30.0))["error"]
    assert gw.simulators["gen"].writes == []


async def test_cov_value_and_reliability_notifications(bacnet):
    gw, c = await bacnet()
    assert await wait_for(lambda: gw.table.get("gen", "Active_Power_Total").quality is Quality.GOOD, 10)
    assert (await c("subscribe", obj="analog-input,1005"))["ok"]
    assert (await c("subscribe", obj="multi-state-value,1037"))["ok"]
    first = (await c("notifications", wait=1.0))["notifications"]
    assert any(n["obj"] == "analog-input,1005" and n["prop"] == "presentValue" for n in first)
    # a value change beyond the COV increment is notified
    gw.simulators["gen"].model.values["Energy_Direction"] = 1
    got = (await c("notifications", wait=3.0))["notifications"]
    assert any(n["obj"] == "multi-state-value,1037" and n["prop"] == "presentValue" and n["value"] == 2 for n in got)
    # unplugged: reliability and status flags change, with a notification; then back
    gw.simulators["gen"].online = False
    assert await wait_for(lambda: not gw.table.is_online("gen"), 10)
    got = (await c("notifications", wait=2.0))["notifications"]
    flags = [n["value"] for n in got if n["obj"] == "analog-input,1005" and n["prop"] == "statusFlags"]
    assert flags and flags[-1][1] == 1, got  # status flags: in-alarm, FAULT, overridden, out-of-service
    rel = await c("rp", obj="analog-input,1005", prop="reliability")
    assert rel["value"] == "communicationFailure"
    gw.simulators["gen"].online = True
    assert await wait_for(lambda: gw.table.get("gen", "Active_Power_Total").quality is Quality.GOOD, 10)
    got = (await c("notifications", wait=2.0))["notifications"]
    flags = [n["value"] for n in got if n["obj"] == "analog-input,1005" and n["prop"] == "statusFlags"]
    assert flags and flags[-1][1] == 0, got
    assert (await c("rp", obj="analog-input,1005", prop="reliability"))["value"] == "noFaultDetected"


async def test_write_property_multiple_and_dcc_are_not_offered(bacnet):
    _gw, c = await bacnet()
    services = (await c("rp", obj="device,599", prop="protocol-services-supported"))["value"]
    # bit positions of BACnetServicesSupported
    read_property, write_property, write_property_multiple, dcc, subscribe_cov = 12, 15, 16, 17, 5
    assert services[read_property] == services[write_property] == services[subscribe_cov] == 1
    assert services[write_property_multiple] == 0 and services[dcc] == 0


def test_instances_are_stable_across_restarts_and_added_meters():
    profiles = load_profiles()
    cfg1 = parse_config(yaml_for(), profiles=profiles)
    more = METERS + "  - {id: extra, bus: rtu, address: 4, profile: eastron_sdm120, bacnet_instance_base: 1500}\n"
    cfg2 = parse_config(yaml_for(meters=more), profiles=profiles)

    def table(cfg):
        from meter_gateway.app import Gateway

        gw = Gateway(cfg, profiles)
        specs = object_specs(cfg, gw.catalogue, {m: gw.meter_points(m) for m in gw.table.meter_ids})
        return {s.name: (s.object_type, s.instance) for s in specs}

    a, again, b = table(cfg1), table(cfg1), table(cfg2)
    assert a == again
    assert {k: v for k, v in b.items() if not k.startswith("extra.")} == a
    assert b["extra.Active_Energy_Import"] == ("accumulator", 1501)
    assert a["gen.Voltage_Unbalance_Threshold"] == ("analog-value", 1053)


async def test_instances_served_are_the_same_after_a_restart(gateways):
    got = []
    for _ in range(2):
        gw = await gateways(yaml_for())
        srv = gw.servers[0]
        got.append(sorted((str(o.objectIdentifier), str(o.objectName)) for o in srv.objects.values()))
        await gw.stop()
    assert got[0] == got[1] and len(got[0]) > 50


async def test_port_in_use_is_a_clear_start_error(gateways):
    from meter_gateway.servers.base import ServerStartError

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        text = yaml_for().replace("port: 0, device_instance", f"port: {port}, device_instance")
        with pytest.raises(ServerStartError, match="cannot bind"):
            await gateways(text)


async def test_ede_export_matches_what_the_device_serves(bacnet, tmp_path):
    import csv
    import subprocess

    from bacpypes3.basetypes import EngineeringUnits

    from meter_gateway.commands.ede import OBJECT_TYPE_NUMBER, UNIT_NUMBER

    for name, number in UNIT_NUMBER.items():
        assert int(EngineeringUnits(name)) == number, name
    _gw, c = await bacnet()
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(yaml_for())
    res = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "meter_gateway.cli", "ede", "-c", str(cfg), "-o", str(tmp_path / "ede")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    rows = [
        r
        for r in csv.reader((tmp_path / "ede" / "bacnet-test_EDE.csv").open(), delimiter=";")
        if r and not r[0].startswith("#") and len(r) > 5
    ]
    exported = {(int(r[3]), int(r[4])): r[2] for r in rows}
    served = (await c("rp", obj="device,599", prop="object-list"))["value"]
    type_number = {
        "analogInput": 0,
        "analogValue": 2,
        "binaryInput": 3,
        "binaryOutput": 4,
        "multiStateValue": 19,
        "accumulator": 23,
        "datetimeValue": 44,
    }
    served_points = {(type_number[t], i) for t, i in served if t in type_number}
    assert set(exported) == served_points
    assert set(type_number.values()) == set(OBJECT_TYPE_NUMBER.values())
    # names agree with the device too (a sample of every type)
    for (tnum, inst), name in list(exported.items())[::7]:
        tname = next(k for k, v in type_number.items() if v == tnum)
        assert (await c("rp", obj=f"{tname},{inst}", prop="object-name"))["value"] == name
    texts = (tmp_path / "ede" / "bacnet-test_StateTexts.csv").read_text()
    assert "import;export" in texts


async def test_stale_values_show_the_configured_reliability(bacnet):
    gw, c = await bacnet(yaml_for(extra_bacnet=", stale_reliability: no-sensor"))
    assert await wait_for(lambda: gw.table.get("gen", "Voltage_L1_N").quality is Quality.GOOD, 10)
    # polling stops, the meter is not in communication failure: values age (cancel_and_wait: a single cancel can be
    # swallowed by wait_for in Python 3.11 when it lands as a transaction completes, and polling then goes on)
    assert await cancel_and_wait(gw.buses["rtu"]._task)
    assert await wait_for(lambda: gw.table.get("gen", "Voltage_L1_N").quality is Quality.STALE, 10)
    await asyncio.sleep(1.2)  # the staleness refresh pushes the change
    vals = (await c("rpm", obj="analog-input,1011", props=["reliability", "status-flags"]))["values"]
    assert vals["reliability"] == "noSensor" and vals["statusFlags"][1] == 1


async def test_multi_state_value_outside_its_states_is_a_fault(bacnet):
    gw, c = await bacnet()
    assert await wait_for(lambda: gw.table.get("gen", "Modbus_Baudrate").quality is Quality.GOOD, 10)
    before = (await c("rp", obj="multi-state-value,1050", prop="present-value"))["value"]
    gw.simulators["gen"].model.values["Modbus_Baudrate"] = 4800  # not one of 9600, 19200, 38400
    gw.request_config_poll("gen")
    # the table refuses it as bad data and keeps the last good value
    assert await wait_for(lambda: gw.table.get("gen", "Modbus_Baudrate").quality is Quality.BAD_DATA, 10)
    await asyncio.sleep(0.2)
    vals = (await c("rpm", obj="multi-state-value,1050", props=["present-value", "reliability", "status-flags"]))[
        "values"
    ]
    assert vals["reliability"] == "multiStateFault" and vals["statusFlags"][1] == 1
    assert vals["presentValue"] == before  # never shown as another, valid state
    gw.simulators["gen"].model.values["Modbus_Baudrate"] = 19200
    gw.request_config_poll("gen")
    assert await wait_for(lambda: gw.table.get("gen", "Modbus_Baudrate").value == 19200, 10)
    await asyncio.sleep(0.2)
    vals = (await c("rpm", obj="multi-state-value,1050", props=["present-value", "reliability"]))["values"]
    assert vals == {"presentValue": 2, "reliability": "noFaultDetected"}


async def test_demand_peak_datetime_value_is_exact(bacnet):
    from datetime import UTC, datetime

    gw, c = await bacnet()
    assert await wait_for(lambda: gw.table.get("gen", "Demand_Peak_Timestamp").quality is Quality.GOOD, 10)
    values = gw.simulators["gen"].model.values
    values["Demand_Peak_Current"] = 1e6  # no new peak can overwrite the timestamp below
    values["Demand_Peak_Timestamp"] = 1796132472  # 128 s from a float32 neighbour
    assert await wait_for(lambda: gw.table.get("gen", "Demand_Peak_Timestamp").value == 1796132472, 10)
    await asyncio.sleep(0.2)
    ai = (await c("rp", obj="analog-input,1027", prop="present-value"))["value"]
    assert ai != 1796132472  # a REAL cannot hold it
    dt = (await c("rp", obj="datetime-value,1027", prop="present-value"))["value"]
    # the gateway's zone is UTC in this configuration
    assert dt == "2026-12-1 tue 13:41:12.00"  # bacpypes3's rendering of the DateTime
    assert datetime.fromtimestamp(1796132472, UTC) == datetime(2026, 12, 1, 13, 41, 12, tzinfo=UTC)


async def test_database_revision_is_persisted_and_raised_when_objects_change(gateways, tmp_path):
    async def revision(text: str) -> int:
        gw = await gateways(text)
        srv = gw.servers[0]
        rev = int(srv.device.databaseRevision)
        await gw.stop()
        return rev

    state = tmp_path / "var" / "bacnet-state.json"
    assert await revision(yaml_for()) == 1
    assert state.exists() and oct(state.stat().st_mode & 0o777) == "0o600"
    assert await revision(yaml_for()) == 1  # same objects: same revision
    more = METERS + "  - {id: extra, bus: rtu, address: 4, profile: eastron_sdm120, bacnet_instance_base: 1500}\n"
    assert await revision(yaml_for(meters=more)) == 2
    assert await revision(yaml_for(meters=more)) == 2
    assert await revision(yaml_for()) == 3  # removed again: another change


async def test_pics_table_is_read_from_the_running_device(bacnet):
    import subprocess

    from helpers import free_udp_port

    gw, _c = await bacnet()
    port = gw.servers[0].address()[1]
    local = f"127.0.0.1/8:{free_udp_port()}"
    res = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "meter_gateway.cli", "bacnet-read", f"127.0.0.1:{port}", "--pics", "--local", local],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    rows = {line.split(" | ")[0].strip("| "): line for line in res.stdout.splitlines() if line.startswith("| ")}
    assert rows["Who-Is"] == "| Who-Is | 34 |" and rows["I-Am"] == "| I-Am | 26 |"
    assert "ReadRange" not in rows and "AcknowledgeAlarm" not in rows and "ReinitializeDevice" not in rows
    assert rows["binary-output"].endswith("| yes |") and "priority-array" in rows["binary-output"]
    n_dtv = sum(s.object_type == "datetime-value" for s in gw.servers[0].specs)
    assert rows["datetime-value"].startswith(f"| datetime-value | {n_dtv} |") and n_dtv == 2
    assert "property-list" not in rows["device"] and "object-name" not in rows["device"]
