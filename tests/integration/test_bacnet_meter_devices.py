"""Per-meter BACnet devices in a running gateway, read through its router by bacnet-stack's bacrp (an independent
implementation, run as a process beside the gateway's event loop): a meter that stops answering shows it at device
level; a reload that adds or removes a meter adds or removes its device and renumbers nothing."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from bacnet_raw import bacnet_stack_tool, free_port
from helpers import FAST, wait_for
from meter_gateway.config import parse_config
from meter_gateway.profiles import load_profiles

VNET = 3001
GEN = f"""  - {{id: gen, name: Bakery, bus: rtu, address: 1, profile: generic, bacnet_instance_base: 1000,
     poll_intervals: {FAST}}}"""
MID = """  - {id: mid, bus: rtu, address: 2, profile: eastron_sdm630, mid: true, bacnet_device_instance: 50002}"""
NEW = """  - {id: new, name: Kiosk, bus: rtu, address: 3, profile: generic, bacnet_device_instance: 50003}"""


def config(*meters: str) -> str:
    """A per-meter gateway with these meters."""
    body = "\n".join(meters)
    return f"""
gateway: {{name: router-it, location: Plant room}}
buses:
  - {{id: rtu, type: modbus_rtu, simulated: true, timeout: 0.2, retries: 0, fail_after: 1, backoff_max: 1}}
meters:
{body}
upstream:
  bacnet: {{enabled: true, bind: 127.0.0.1, netmask: 8, port: 0, device_instance: 599, devices: per-meter,
           virtual_network: {VNET}, network_number: 7}}
  modbus_tcp: {{enabled: false}}
  prometheus: {{enabled: false}}
"""


@pytest.fixture
def bacrp():
    """bacrp of bacnet-stack (skip with the reason when it is absent)."""
    tool = bacnet_stack_tool("bacrp")
    if tool is None:
        pytest.skip("bacnet-stack tools not found at ../shared/tools/bacnet-stack/bin (or $BACNET_STACK_BIN)")
    return tool


async def read(bacrp, port: int, device: int, obj: str, prop: str, timeout_ms: int = 1000) -> str:
    """One property of a meter device, read through the router; the tool's output (or its error)."""
    env = {
        **os.environ,
        "BACNET_IFACE": "lo",
        "BACNET_IP_PORT": str(free_port(socket.SOCK_DGRAM)),
        "BACNET_APDU_TIMEOUT": str(timeout_ms),
        "BACNET_APDU_RETRIES": "0",
    }
    mac = ["--mac", f"127.0.0.1:{port}", "--dnet", str(VNET), "--dadr", device.to_bytes(3, "big").hex(":")]
    proc = await asyncio.create_subprocess_exec(
        str(bacrp),
        *mac,
        str(device),
        *obj.split(),
        prop,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    return out.decode(errors="replace").strip()


async def test_communication_failure_and_reload_of_meter_devices(gateways, bacrp):
    gw = await gateways(config(GEN, MID))
    port = gw.servers[0].address()[1]
    assert await wait_for(lambda: all(gw.table.is_online(m) for m in gw.table.meter_ids), 10)
    assert await read(bacrp, port, 1000, "device 1000", "system-status") == "operational"
    assert await read(bacrp, port, 1000, "analog-input 5", "reliability") == "no-fault-detected"

    # the meter stops answering: its device says so, and so do its objects; then it comes back
    gw.simulators["gen"].online = False
    assert await wait_for(lambda: not gw.table.is_online("gen"), 10)
    assert await read(bacrp, port, 1000, "device 1000", "system-status") == "non-operational"
    assert await read(bacrp, port, 1000, "analog-input 5", "reliability") == "communication-failure"
    assert await read(bacrp, port, 50002, "device 50002", "system-status") == "operational"  # the other meter
    gw.simulators["gen"].online = True
    assert await wait_for(lambda: gw.table.is_online("gen"), 10)
    assert await read(bacrp, port, 1000, "device 1000", "system-status") == "operational"

    # reload: a meter added gets a device; the others keep theirs (same instances, same objects)
    profiles = load_profiles()
    before = gw.servers[0].router.apps["mid"]
    await gw.apply(parse_config(config(GEN, MID, NEW), profiles=profiles), profiles)
    assert await wait_for(lambda: gw.table.is_online("new"), 10)
    assert await read(bacrp, port, 50003, "device 50003", "object-name") == '"Kiosk"'
    assert await read(bacrp, port, 50003, "accumulator 1", "object-name") == '"Active_Energy_Import"'
    assert await read(bacrp, port, 1000, "device 1000", "object-name") == '"Bakery"'
    assert gw.servers[0].router.apps["mid"] is before  # untouched by the reload
    # a meter removed: its device is gone from the virtual network, the others answer; a new tenant on a meter keeps
    # its device (and its COV subscribers) with the new description
    gen_app = gw.servers[0].router.apps["gen"]
    await gw.apply(
        parse_config(config(GEN.replace("name: Bakery,", "name: Bakery, tenant: T2,"), NEW), profiles=profiles),
        profiles,
    )
    assert gw.servers[0].router.apps["gen"] is gen_app
    assert await read(bacrp, port, 1000, "device 1000", "description") == '"Submeter gen (generic), tenant T2"'
    gone = await read(bacrp, port, 50002, "device 50002", "object-name", timeout_ms=300)
    assert "Timeout" in gone or "timeout" in gone, gone
    assert await read(bacrp, port, 50003, "device 50003", "object-name") == '"Kiosk"'
    assert sorted(gw.servers[0].router.apps) == ["gen", "new"]
