"""Alarms and trend logs in per-meter device mode (issue 16): each meter device behind the router has its own
intrinsic reporting and Trend Logs. A simulated meter raises phase loss; the recipient (a loopback UDP port, NPDU
decoded by hand from ASHRAE 135 clause 6.2) receives the event notification routed from that meter device
(SNET = the virtual network, SADR = the device's MAC); the independent bacnet-stack tools acknowledge it
(bacackalarm --dnet/--dadr), list it (bacge, address cache with SNET/SADR) and read a meter's Trend Log (bacrr).
One in-process gateway; skips with the reason when the tools are absent (BACNET_STACK_BIN supported)."""

from __future__ import annotations

import asyncio
import re
import sqlite3

import pytest

from bacnet_raw import bacnet_stack_tool
from conformance.rawbacnet import a_enumerated, a_unsigned, app, object_id
from helpers import FAST, free_udp_port, wait_for
from integration.test_bacnet_events import Recipient, tool

VNET = 2001
ROUTER = 4730
RECIPIENT = 4802  # a device recipient: the gateway's device binds it (its I-Am), the meter devices send through it
DEVICES = {"gen": 1000, "gen2": 77002}  # gen's device instance comes from bacnet_instance_base
CHANGE_OF_STATE, CHANGE_OF_RELIABILITY = 1, 19
NORMAL, FAULT, OFFNORMAL, ACK_NOTIFICATION = 0, 1, 2, 2


class RoutedRecipient(Recipient):
    """A recipient that also records the NPDU's source network and address (SNET/SADR) of each notification."""

    def datagram_received(self, data: bytes, addr) -> None:
        body = data[4:]
        source = None
        i = 2 + 3 + body[4] if body[1] & 0x20 else 2  # a DNET first (clause 6.2.2): skip it
        if body[1] & 0x08:
            source = (int.from_bytes(body[i : i + 2], "big"), body[i + 3 : i + 3 + body[i + 2]])
        before = len(self.events)
        super().datagram_received(data, addr)
        for ev in self.events[before:]:
            ev["source"] = source


def config(port: int, journal: str) -> str:
    return f"""
gateway: {{name: permeter-events}}
buses:
  - {{id: rtu, type: modbus_rtu, simulated: true, timeout: 1.0, retries: 0, fail_after: 1, backoff_max: 1}}
meters:
  - {{id: gen, bus: rtu, address: 1, profile: generic, bacnet_instance_base: {DEVICES["gen"]}, poll_intervals: {FAST}}}
  - {{id: gen2, bus: rtu, address: 2, profile: generic, bacnet_device_instance: {DEVICES["gen2"]},
     poll_intervals: {FAST}}}
upstream:
  bacnet:
    enabled: true
    bind: 127.0.0.1
    netmask: 8
    port: 0
    device_instance: {ROUTER}
    devices: per-meter
    virtual_network: {VNET}
    trend_logs: {{enabled: true, interval: 1, buffer_size: 50}}
    events:
      enabled: true
      notification_classes:
        - number: 1
          priority: {{offnormal: 20, fault: 30, normal: 120}}
          recipients:
            - {{address: "127.0.0.1:{port}", process_id: 7}}
            - {{device: {RECIPIENT}, process_id: 11, transitions: [offnormal]}}
  modbus_tcp: {{enabled: false}}
  prometheus: {{enabled: false}}
journal: {journal}
"""


def sadr(instance: int) -> str:
    return ":".join(f"{b:02X}" for b in instance.to_bytes(3, "big"))


async def test_meter_device_alarms_and_trend_logs_through_the_router(gateways, tmp_path):
    if any(bacnet_stack_tool(t) is None for t in ("bacackalarm", "bacge", "bacrp", "bacrr")):
        pytest.skip("bacnet-stack tools not found at ../shared/tools/bacnet-stack/bin (independent BACnet peer)")
    loop = asyncio.get_running_loop()
    transport, rec = await loop.create_datagram_endpoint(RoutedRecipient, local_addr=("127.0.0.1", 0))
    try:
        journal = tmp_path / "journal.sqlite"
        text = config(transport.get_extra_info("sockname")[1], f"{{enabled: true, path: {journal}}}")
        gw = await gateways(text)
        port = gw.servers[0].address()[1]
        phase = gw.catalogue.get("Phase_Loss_L1").index  # the same instance in every meter device
        energy = gw.catalogue.get("Active_Energy_Import").index
        assert await wait_for(lambda: gw.table.is_online("gen") and gw.table.is_online("gen2"), 10)
        await asyncio.sleep(0.6)
        assert not rec.find(to=OFFNORMAL)
        # the recipient announces itself to the gateway's device (I-Am, unicast on the IP network)
        iam = app(12, object_id(8, RECIPIENT)) + a_unsigned(1476) + a_enumerated(3) + a_unsigned(999)
        transport.sendto(bytes([0x81, 0x0A, 0, 8 + len(iam), 0x01, 0x00, 0x10, 0x00]) + iam, ("127.0.0.1", port))
        await asyncio.sleep(0.3)

        def routed(mid: str) -> list[str]:
            return ["--mac", f"127.0.0.1:{port}", "--dnet", str(VNET), "--dadr", sadr(DEVICES[mid])]

        async def rp(mid: str, obj: str, inst: int, prop: str) -> str:
            return (await tool("bacrp", *routed(mid), str(DEVICES[mid]), obj, str(inst), prop)).strip()

        # each meter device has its own Notification Class 1
        for mid in DEVICES:
            assert await rp(mid, "notification-class", 1, "priority") == "{20,30,120}"

        # 1. gen2 raises phase loss: the notification comes from gen2's device, routed (SNET/SADR of gen2)
        gw.simulators["gen2"].model.values["Phase_Loss_L1"] = True
        assert await wait_for(lambda: len(rec.find(object=(3, phase), to=OFFNORMAL)) >= 2, 10), rec.events
        (ev,) = rec.find(object=(3, phase), to=OFFNORMAL, process=7)
        assert ev["source"] == (VNET, DEVICES["gen2"].to_bytes(3, "big")), ev
        (dev_ev,) = rec.find(object=(3, phase), to=OFFNORMAL, process=11)  # the device recipient, routed too
        assert dev_ev["source"] == ev["source"], dev_ev
        assert ev["type"] == CHANGE_OF_STATE and ev["class"] == 1 and "gen2.Phase_Loss_L1" in ev["text"]
        assert await rp("gen2", "binary-input", phase, "event-state") == "offnormal"
        assert await rp("gen", "binary-input", phase, "event-state") == "normal"  # same instance, other device
        counts = gw.servers[0].events.summary()  # the metrics count each meter device's objects
        assert counts["gen2"]["active"] == 1 and counts["gen"]["active"] == 0, counts

        # 2. GetEventInformation answered by gen2's device (bacge binds it from an address cache with SNET/SADR)
        def address_cache() -> None:
            cache = "".join(f"{d} 127.0.0.1:{port} {VNET} {sadr(d)} 1476\n" for d in DEVICES.values())
            (tmp_path / "address_cache").write_text(cache)

        address_cache()
        listing = await tool("bacge", str(DEVICES["gen2"]), cwd=tmp_path)
        rows = [line.split() for line in listing.splitlines() if line.startswith(str(DEVICES["gen2"]))]
        assert [r[1:4] for r in rows] == [["3", str(phase), "ON"]], listing
        listing = await tool("bacge", str(DEVICES["gen"]), cwd=tmp_path)
        assert not [line for line in listing.splitlines() if line.startswith(str(DEVICES["gen"]))], listing

        # 3. AcknowledgeAlarm through the router; the acknowledgement notification comes from gen2's device too
        stamp = (await rp("gen2", "binary-input", phase, "event-time-stamps")).split(",")[0].strip("{")
        args = [str(DEVICES["gen2"]), "1", "binary-input", str(phase), str(OFFNORMAL)]
        out = await tool("bacackalarm", *args, stamp, "pytest", "2026/12/01-12:00:00", *routed("gen2"))
        assert "AcknowledgeAlarm Acknowledged" in out, out
        assert await rp("gen2", "binary-input", phase, "acked-transitions") == "{true,true,true}"
        assert await wait_for(lambda: rec.find(object=(3, phase), notify=ACK_NOTIFICATION), 5)
        assert rec.find(object=(3, phase), notify=ACK_NOTIFICATION)[0]["source"] == ev["source"]

        # 4. each meter device's Trend Log of Active_Energy_Import (same instance), read with bacrr through the router
        async def total(mid: str) -> int:
            return int(await rp(mid, "trend-log", energy, "total-record-count"))

        async def records(mid: str, n: int) -> list[str]:
            end = loop.time() + 15
            while loop.time() < end and await total(mid) < n:
                await asyncio.sleep(0.5)
            out = await tool(
                "bacrr", str(DEVICES[mid]), "trend-log", str(energy), "log-buffer", "1", "1", str(n), cwd=tmp_path
            )
            return re.findall(r"\{\{\d{4}-\d\d-\d\d-[\d:.]+\}, [^}]*\}", out)

        first = {mid: await records(mid, 2) for mid in DEVICES}
        assert all(len(r) == 2 for r in first.values()), first
        # a restart: the meter devices' Trend Logs come back from the journal (same records, same positions)
        await asyncio.sleep(0.3)  # the interval's records are written right after they are taken
        await gw.stop()
        gw = await gateways(text)
        port = gw.servers[0].address()[1]
        address_cache()
        assert await records("gen2", 2) == first["gen2"]
        # the journal keeps the two logs apart (key = meter id / point)
        await asyncio.sleep(1.2)
        with sqlite3.connect(journal) as db:
            logs = {r[0] for r in db.execute("SELECT DISTINCT log FROM trend_records")}
        assert {"gen/Active_Energy_Import", "gen2/Active_Energy_Import"} <= logs, logs

        # 5. gen2 stops answering: its objects go to fault, reported from its device (CHANGE_OF_RELIABILITY)
        gw.simulators["gen2"].online = False
        assert await wait_for(lambda: rec.find(object=(3, phase), to=FAULT, process=7), 10), rec.events
        (fault,) = rec.find(object=(3, phase), to=FAULT, process=7)
        assert fault["source"] == ev["source"] and fault["type"] == CHANGE_OF_RELIABILITY, fault
    finally:
        transport.close()


async def test_reload_touches_only_the_changed_meter_device(gateways, tmp_path):
    from bacpypes3.primitivedata import ObjectIdentifier

    from meter_gateway.config import parse_config
    from meter_gateway.profiles import load_profiles

    limits = "bacnet_limits: {Voltage_L1_N: {high: 245, low: 215}}, "
    text = config(free_udp_port(), "{enabled: false}").replace(
        "profile: generic, bacnet_instance_base", limits + "profile: generic, bacnet_instance_base"
    )
    gw = await gateways(text)
    server = gw.servers[0]
    router = server.router
    gen, gen2 = router.apps["gen"], router.apps["gen2"]
    volt = server.objects[("gen", "Voltage_L1_N", "analog-input")]
    assert float(volt.highLimit) == 245.0 and router.reporting["gen"].objects[volt.objectIdentifier] is volt
    assert gen.get_object_id(ObjectIdentifier("notification-class,1")) is not None
    assert (
        gen2.get_object_id(ObjectIdentifier(f"trend-log,{gw.catalogue.get('Active_Energy_Import').index}")) is not None
    )
    assert set(server.events.members) == {"gen", "gen2"} and server.app.gw_trends is False
    # ReadRange (bit 35) is a service of the meter devices (their Trend Logs), not of the router's own device;
    # AcknowledgeAlarm (bit 0) of both (the router keeps the gateway's own alarm objects)
    assert (gen.get_services_supported()[35], server.app.get_services_supported()[35]) == (1, 0)
    assert gen.get_services_supported()[0] == server.app.get_services_supported()[0] == 1

    # new limits for gen: gen's device is rebuilt with them, gen2's device is untouched
    new = text.replace("high: 245", "high: 260")
    await gw.apply(parse_config(new, str(tmp_path / "new.yaml")), load_profiles())
    assert router.apps["gen2"] is gen2 and router.apps["gen"] is not gen
    volt = server.objects[("gen", "Voltage_L1_N", "analog-input")]
    assert float(volt.highLimit) == 260.0 and router.reporting["gen"].objects[volt.objectIdentifier] is volt

    # gen2 removed: its device, reporting and trend logger go; a meter added gets its classes and trend logs
    added = new.replace("id: gen2, bus: rtu, address: 2", "id: gen3, bus: rtu, address: 3")
    await gw.apply(parse_config(added, str(tmp_path / "added.yaml")), load_profiles())
    assert set(router.apps) == set(server.events.members) == set(router.trend_loggers) == {"gen", "gen3"}
    gen3 = router.apps["gen3"]
    assert gen3.get_object_id(ObjectIdentifier("notification-class,1")) is not None and gen3.gw_trends is True
    assert gen2.gw_events.app is None and not gen2.gw_events.objects
