"""Operator commands as a user runs them: `bacnet-read` exit codes, `points` width, `read` at the points' resolution."""

from __future__ import annotations

import asyncio
import json
import re
import sys

import pytest

from helpers import free_port, free_udp_port
from meter_gateway.commands._common import show_value
from meter_gateway.core.catalogue import load_catalogue

CLI = [sys.executable, "-m", "meter_gateway.cli"]

GATEWAY = """
gateway: {name: cli-ops}
buses: [{id: rtu, type: modbus_rtu, simulated: true, timeout: 0.3}]
meters: [{id: gen, bus: rtu, address: 1, profile: generic, bacnet_instance_base: 1000}]
upstream:
  bacnet: {enabled: true, bind: 127.0.0.1, netmask: 8, port: 0, device_instance: 599}
  modbus_tcp: {enabled: false}
  prometheus: {enabled: false}
"""


async def cli(*args: str) -> tuple[int, str, str]:
    """Run the command without blocking the event loop the gateway under test runs in."""
    proc = await asyncio.create_subprocess_exec(
        *CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


async def test_bacnet_read_exit_codes(gateways):
    gw = await gateways(GATEWAY)
    host, port = gw.server("bacnet").address()
    device = f"{host}:{port}"
    local = ["--local", f"127.0.0.1/8:{free_udp_port()}"]

    rc, out, err = await cli("bacnet-read", device, "analog-input,1005", "present-value", "object-name", *local)
    assert rc == 0, err
    assert "analog-input,1005 object-name: gen.Active_Power_Total" in out

    rc, out, err = await cli("bacnet-read", device, "analog-input,9999", "present-value", *local)
    assert rc == 3, (out, err)
    assert "unknown-object" in err

    rc, out, err = await cli("bacnet-read", device, "analog-input,1005", "presnt-value", *local)
    assert rc == 2
    assert "unknown property 'presnt-value'; did you mean present-value?" in err
    assert "presnt-value:" not in out  # never printed as if it were a value

    rc, out, err = await cli("bacnet-read", device, "analog-inptu,1005", *local)
    assert rc == 2 and "unknown object type 'analog-inptu'; did you mean analog-input?" in err

    rc, out, err = await cli("bacnet-read", f"127.0.0.1:{free_udp_port()}", *local)
    assert rc == 1 and "no I-Am" in err


async def test_points_table_fits_120_columns():
    rc, out, _err = await cli("points")
    assert rc == 0
    lines = out.splitlines()
    assert len(lines) == 54 and max(len(line) for line in lines) <= 120
    for p in load_catalogue():
        assert any(line.split()[1] == p.name for line in lines[1:]), p.name


@pytest.mark.parametrize(
    ("point", "raw", "shown"),
    [
        ("Active_Power_Total", 6.230300000000001, "6.230"),  # kW to the watt
        ("Active_Energy_Import", 1234.5600000000002, "1234.56"),  # the catalogue's 0.01 kWh
        ("Voltage_L1_N", 230.12000000001, "230.1"),
        ("Frequency", 49.99999999, "50.00"),
        ("Demand_Interval", 15.0, "15"),
        ("Communication_Status", True, "ok"),
    ],
)
def test_values_are_shown_at_the_points_resolution(point, raw, shown):
    assert show_value(load_catalogue().get(point), raw) == shown


async def test_read_prints_no_float_noise(tmp_path):
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(GATEWAY.replace("enabled: true, bind", "enabled: false, bind"))
    rc, out, err = await cli("read", "-c", str(cfg), "gen")
    assert rc == 0, err
    numbers = re.findall(r"\s(-?\d+\.\d+)\s", out)
    assert numbers and all(len(n.split(".")[1]) <= 3 for n in numbers), out


async def test_read_shows_the_running_gateways_values_with_quality_and_age(gateways, tmp_path):
    from helpers import FAST, wait_for

    http = free_port()
    text = f"""
gateway: {{name: live}}
buses: [{{id: rtu, type: modbus_rtu, simulated: true, timeout: 0.2, retries: 0, fail_after: 1, backoff_max: 1}}]
meters: [{{id: gen, bus: rtu, address: 1, profile: generic, poll_intervals: {FAST}}}]
upstream:
  bacnet: {{enabled: false}}
  modbus_tcp: {{enabled: false}}
  prometheus: {{enabled: true, bind: 127.0.0.1, port: {http}}}
"""
    gw = await gateways(text)  # bacnet_instance_base left out: BACnet is off
    cfg = tmp_path / "read.yaml"
    cfg.write_text(text)
    assert await wait_for(lambda: gw.table.is_online("gen"), 15)

    rc, out, err = await cli("read", "-c", str(cfg), "gen")
    assert rc == 0, err
    assert "live from the running gateway 'live'" in out.splitlines()[0]
    row = next(line for line in out.splitlines() if line.startswith("Voltage_L1_N "))
    assert re.search(r" V +good +\d+\.\d s$", row), row

    gw.simulators["gen"].online = False  # the meter stops answering: the live view says so, values included
    assert await wait_for(lambda: not gw.table.is_online("gen"), 15)
    rc, out, err = await cli("read", "-c", str(cfg), "gen", "--format", "json")
    assert rc == 1, err

    doc = json.loads(out)
    assert doc["online"] is False and doc["source"] == f"http://127.0.0.1:{http}"
    volt = next(p for p in doc["points"] if p["point"] == "Voltage_L1_N")
    assert volt["quality"] != "good" and volt["age_s"] is not None and volt["age_s"] >= 0


async def test_read_live_without_a_running_gateway_says_so(tmp_path):
    cfg = tmp_path / "gateway.yaml"
    port = free_port()
    cfg.write_text(GATEWAY.replace("prometheus: {enabled: false}", f"prometheus: {{port: {port}}}"))
    rc, _out, err = await cli("read", "-c", str(cfg), "gen", "--live")
    assert rc == 2 and f"no running gateway answers at http://127.0.0.1:{port}" in err, err


async def test_trace_streams_the_frames_of_a_bus_with_their_meaning(gateways, tmp_path):
    from helpers import wait_for

    http = free_port()
    text = f"""
gateway: {{name: trace}}
buses:
  - {{id: rtu, type: modbus_rtu, simulated: true, timeout: 0.3}}
  - {{id: mb, type: mbus, simulated: true, timeout: 0.3}}
meters:
  - {{id: gen, bus: rtu, address: 1, profile: generic, poll_intervals: {{power: 0.5}}}}
  - {{id: ale3, bus: mb, address: 5, profile: mbus_saia_burgess_ale3, poll_intervals: {{power: 0.5}}}}
upstream:
  bacnet: {{enabled: false}}
  modbus_tcp: {{enabled: false}}
  prometheus: {{enabled: true, bind: 127.0.0.1, port: {http}}}
"""
    gw = await gateways(text)
    cfg = tmp_path / "trace.yaml"
    cfg.write_text(text)
    assert await wait_for(lambda: gw.table.is_online("gen") and gw.table.is_online("ale3"), 15)

    rc, out, err = await cli("trace", "-c", str(cfg), "rtu", "--count", "6")
    assert rc == 0, err
    lines = out.splitlines()[1:]
    assert len(lines) == 6, out
    assert any(" TX 01 03 " in ln and "unit 1: read holding registers at" in ln for ln in lines), out
    assert any(" RX 01 03 " in ln and "bytes" in ln for ln in lines), out
    assert any(re.search(r"\+ *\d+\.\d ms", ln) for ln in lines), out  # timing between frames

    rc, out, err = await cli("trace", "-c", str(cfg), "mb", "--count", "4", "--json")
    assert rc == 0, err
    frames = [json.loads(ln) for ln in out.splitlines()[1:]]
    assert {"REQ_UD2 to address 5"} <= {f["meaning"] for f in frames}, frames
    assert any(f["meaning"].startswith("RSP_UD from address 5") and f["dir"] == "rx" for f in frames), frames

    rc, _out, err = await cli("trace", "-c", str(cfg), "nosuch")
    assert rc == 2 and "no polled bus 'nosuch'" in err, err


async def test_debug_log_shows_the_bus_traffic(gateways, caplog):
    import logging

    from helpers import wait_for

    caplog.set_level(logging.DEBUG, logger="meter_gateway.drivers.base")
    gw = await gateways(GATEWAY.replace("enabled: true, bind", "enabled: false, bind"))
    assert await wait_for(lambda: gw.table.is_online("gen"), 15)
    lines = [r.getMessage() for r in caplog.records if r.name == "meter_gateway.drivers.base"]
    assert any(m.startswith("bus rtu TX 01 03 ") for m in lines), lines[:5]
    assert any(m.startswith("bus rtu RX 01 03 ") for m in lines), lines[:5]
